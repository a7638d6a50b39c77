"""lame_runtime.Index: exact cosine top-k checked against brute force, storage, persistence."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lame_runtime import Index
from lame_runtime.errors import IndexFileError, InputError
from lame_runtime.retrieval.index import index_files


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(docs: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference in float64: cosine, ordered by score then insertion position."""
    scores = unit(queries.astype(np.float64)) @ unit(docs.astype(np.float64)).T
    order = np.stack([np.lexsort((np.arange(len(docs)), -row))[:k] for row in scores])
    return np.take_along_axis(scores, order, axis=1), order


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    # Unnormalised on purpose: the index must normalise.
    docs = rng.normal(size=(500, 24)) * rng.uniform(0.1, 10, size=(500, 1))
    queries = rng.normal(size=(40, 24))
    ids = [f"doc{i:04d}" for i in range(len(docs))]
    return docs.astype(np.float32), queries.astype(np.float32), ids


def test_exact_search_matches_brute_force(data):
    docs, queries, ids = data
    index = Index(24, backend="numpy")
    index.add(docs, ids)
    scores, found = index.search(queries, k=7)
    want_scores, want_rows = brute_force(docs, queries, 7)
    assert scores.dtype == np.float32 and scores.shape == (40, 7)
    assert found == [[ids[r] for r in row] for row in want_rows]
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 0)  # best first


def test_search_across_blocks_matches_single_block(data, monkeypatch):
    """The blocked top-k merge must equal one pass over everything."""
    docs, queries, ids = data
    index = Index(24, backend="numpy")
    index.add(docs, ids)
    whole = index.search(queries, k=9)
    monkeypatch.setattr("lame_runtime.retrieval.index.BLOCK_ELEMENTS", 40 * 37)  # 37-row blocks
    blocked = index.search(queries, k=9)
    assert blocked[1] == whole[1]
    np.testing.assert_allclose(blocked[0], whole[0], atol=1e-6)


def test_many_small_adds_equal_one_add(data):
    docs, queries, ids = data
    whole, pieces = Index(24, storage="int8", backend="numpy"), Index(24, storage="int8", backend="numpy")
    whole.add(docs, ids)
    for start in range(0, len(ids), 7):
        pieces.add(docs[start : start + 7], ids[start : start + 7])
        if start == 70:  # a search between adds must see everything added so far
            assert pieces.search(queries[:1], k=500)[0].shape == (1, 77)
    assert pieces.ids == whole.ids
    assert np.array_equal(pieces.vectors(), whole.vectors())
    assert pieces.search(queries, k=5)[1] == whole.search(queries, k=5)[1]


def test_k_larger_than_size_and_empty_index():
    index = Index(3, backend="numpy")
    scores, found = index.search(np.ones((2, 3), np.float32), k=5)
    assert scores.shape == (2, 0) and found == [[], []]
    index.add(np.eye(3, dtype=np.float32), ["x", "y", "z"])
    scores, found = index.search(np.array([[1.0, 0.5, 0.0]], np.float32), k=10)
    assert scores.shape == (1, 3)
    assert found == [["x", "y", "z"]]


def test_ties_are_broken_by_insertion_order():
    index = Index(4, backend="numpy")
    same = np.tile(np.array([[1.0, 2.0, 3.0, 4.0]], np.float32), (6, 1))
    names = ["f", "b", "e", "a", "d", "c"]
    index.add(same * np.arange(1, 7, dtype=np.float32)[:, None], names)  # equal after normalising
    for k in (1, 3, 6):
        scores, found = index.search(same[:1], k=k)
        assert found == [names[:k]]
        assert np.all(scores == scores[0, 0])


@pytest.mark.parametrize("storage,agreement", [("float16", 0.97), ("int8", 0.9)])
def test_compressed_storage_agrees_on_top1(data, storage, agreement):
    docs, queries, ids = data
    rng = np.random.default_rng(1)
    queries = rng.normal(size=(300, 24)).astype(np.float32)
    exact, compressed = Index(24, backend="numpy"), Index(24, storage=storage, backend="numpy")
    exact.add(docs, ids)
    compressed.add(docs, ids)
    exact_scores, exact_ids = exact.search(queries, k=1)
    scores, found = compressed.search(queries, k=1)
    same = np.mean([a == b for a, b in zip(exact_ids, found)])
    assert same >= agreement, f"{storage} top-1 agreement {same:.3f}"
    tolerance = 2e-3 if storage == "float16" else 2e-2
    np.testing.assert_allclose(scores[:, 0], exact_scores[:, 0], atol=tolerance)
    assert np.all(scores <= 1.0 + 1e-6)


def test_int8_self_search_scores_near_one(data):
    docs, _, ids = data
    index = Index(24, storage="int8", backend="numpy")
    index.add(docs, ids)
    scores, found = index.search(docs[:50], k=1)
    assert [f[0] for f in found] == ids[:50]
    assert np.all(scores[:, 0] > 0.999)


@pytest.mark.parametrize("storage", ["float32", "float16", "int8"])
@pytest.mark.parametrize("layout", ["dir", "prefix"])
def test_save_load_round_trip_is_exact(data, tmp_path, storage, layout):
    docs, queries, ids = data
    index = Index(24, storage=storage, backend="numpy")
    payloads = [{"path": f"/images/{i}.png", "n": i} for i in range(len(ids))]
    index.add(docs, ids, payloads)
    index.remove(["doc0003", "doc0100"])
    target = tmp_path / "idx" if layout == "prefix" else tmp_path / "dir" / ""
    target = str(target) + ("/" if layout == "dir" else "")
    npz_path, json_path = index.save(target)
    assert npz_path.is_file() and json_path.is_file()
    with np.load(npz_path, allow_pickle=False) as arrays:
        assert arrays["vectors"].dtype == np.dtype(storage)  # stored compressed on disk too
    assert not [p for p in npz_path.parent.iterdir() if p.name.endswith(".tmp")]
    loaded = Index.load(target, backend="numpy")
    assert (loaded.dim, loaded.storage, len(loaded)) == (24, storage, len(ids) - 2)
    assert loaded.ids == index.ids
    assert loaded.payload("doc0007") == {"path": "/images/7.png", "n": 7}
    before, after = index.search(queries, k=10), loaded.search(queries, k=10)
    assert after[1] == before[1]
    assert np.array_equal(after[0], before[0])


def test_saved_vectors_need_no_pickle(data, tmp_path):
    docs, _, ids = data
    index = Index(24, storage="int8", backend="numpy")
    index.add(docs, ids)
    npz_path, json_path = index.save(tmp_path / "idx")
    with np.load(npz_path, allow_pickle=False) as arrays:
        assert set(arrays.files) == {"vectors", "scales"}
        assert arrays["vectors"].dtype == np.int8
    meta = json.loads(json_path.read_text())
    assert meta["ids"] == ids and meta["storage"] == "int8"


def test_save_overwrites_and_detects_mismatched_halves(data, tmp_path):
    docs, _, ids = data
    first, second = Index(24, backend="numpy"), Index(24, backend="numpy")
    first.add(docs[:10], ids[:10])
    second.add(docs[10:30], ids[10:30])
    first.save(tmp_path / "a")
    b_npz, _ = second.save(tmp_path / "b")
    assert len(Index.load(tmp_path / "a")) == 10
    second.save(tmp_path / "a")  # overwrite in place
    assert len(Index.load(tmp_path / "a")) == 20
    a_npz, _ = first.save(tmp_path / "a")
    # Earlier saves' npz files are gone once the new json points elsewhere.
    assert sorted(p.name for p in tmp_path.glob("a.*.npz")) == [a_npz.name]
    # A json paired with another save's npz must be refused, not silently misread.
    a_npz.write_bytes(b_npz.read_bytes())
    with pytest.raises(IndexFileError, match="sha256"):
        Index.load(tmp_path / "a")


def test_remove(data):
    docs, queries, ids = data
    index = Index(24, backend="numpy")
    index.add(docs, ids)
    _, found = index.search(queries[:1], k=3)
    best = found[0][0]
    index.remove([best, "doc0000"])
    assert len(index) == len(ids) - 2 and best not in index
    _, after = index.search(queries[:1], k=2)
    assert after[0] == found[0][1:3]
    keep = [i for i, name in enumerate(ids) if name not in (best, "doc0000")]
    _, want_rows = brute_force(docs[keep], queries, 5)
    assert index.search(queries, k=5)[1] == [[ids[keep[r]] for r in row] for row in want_rows]
    with pytest.raises(KeyError, match="nope"):
        index.remove(["doc0001", "nope"])
    assert "doc0001" in index  # all-or-nothing
    index.add(docs[:1], [best])  # a removed id may come back
    assert index.payload(best) is None


def test_errors(data, tmp_path):
    docs, _, ids = data
    index = Index(24, backend="numpy")
    with pytest.raises(ValueError, match="dim 23"):
        index.add(docs[:, :23], ids)
    with pytest.raises(ValueError, match="2-D"):
        index.add(docs[0], ids[:1])
    bad = docs[:3].copy()
    bad[1, 5] = np.nan
    with pytest.raises(ValueError, match="row 1 has NaN"):
        index.add(bad, ids[:3])
    with pytest.raises(ValueError, match="all zeros"):
        index.add(np.zeros((1, 24), np.float32), ["zero"])
    with pytest.raises(TypeError, match="floating point"):
        index.add(np.ones((2, 24), dtype=np.int64), ["a", "b"])
    with pytest.raises(ValueError, match="duplicate id 'a'"):
        index.add(docs[:2], ["a", "a"])
    index.add(docs[:2], ["a", "b"])
    with pytest.raises(ValueError, match="duplicate id 'b'"):
        index.add(docs[2:4], ["c", "b"])
    assert len(index) == 2  # the failed add left nothing behind
    with pytest.raises(ValueError, match="3 ids for 2 vectors"):
        index.add(docs[2:4], ["c", "d", "e"])
    with pytest.raises(TypeError, match="JSON"):
        index.add(docs[2:3], ["c"], [object()])
    with pytest.raises(TypeError, match="strings"):
        index.add(docs[2:3], [3])
    with pytest.raises(ValueError, match="dim 5"):
        index.search(np.ones((1, 5), np.float32), k=1)
    with pytest.raises(ValueError, match="k must be"):
        index.search(docs[:1], k=0)
    with pytest.raises(KeyError):
        index.payload("zzz")
    with pytest.raises(FileNotFoundError, match="index file not found"):
        Index.load(tmp_path / "missing")
    with pytest.raises(ValueError, match="storage"):
        Index(24, storage="bf16")
    with pytest.raises(ValueError, match="dim"):
        Index(0)


def test_load_rejects_non_index_json(tmp_path):
    npz_path, json_path = index_files(tmp_path / "x", for_writing=True)
    np.savez(npz_path, vectors=np.zeros((0, 3), np.float32))
    json_path.write_text('{"hello": 1}')
    with pytest.raises(ValueError, match="not a LaME index"):
        Index.load(tmp_path / "x")


def test_faiss_backend_matches_exact(data):
    pytest.importorskip("faiss", reason="faiss-cpu is optional")
    docs, queries, ids = data
    for storage in ("float32", "int8"):
        exact = Index(24, storage=storage, backend="numpy")
        flat = Index(24, storage=storage, backend="faiss")
        for index in (exact, flat):
            index.add(docs, ids)
            index.remove(["doc0010"])
        want, got = exact.search(queries, k=8), flat.search(queries, k=8)
        assert flat.backend == "faiss"
        assert got[1] == want[1]
        np.testing.assert_allclose(got[0], want[0], atol=1e-5)
    tied = Index(2, backend="faiss")
    tied.add(np.ones((5, 2), np.float32), list("edcba"))
    assert tied.search(np.ones((1, 2), np.float32), k=3)[1] == [["e", "d", "c"]]


def test_auto_backend_falls_back_to_numpy():
    try:
        import faiss  # noqa: F401

        expected = "faiss"
    except ImportError:
        expected = "numpy"
        with pytest.raises(RuntimeError, match="faiss-cpu"):
            Index(4, backend="faiss")
    assert Index(4).backend == expected


def test_unstorable_ids_and_payloads_are_refused_before_any_change(tmp_path):
    """What a save could not write (a lone surrogate, from a non-UTF-8 file name or a JSON
    escape; a non-finite number) is refused by add, naming it, and the index is unchanged
    and still saves; lame-search index checks its items the same way before embedding."""
    from lame_runtime.retrieval.indexing import check_items

    index = Index(4)
    index.add(np.eye(4, dtype=np.float32)[:1], ["ok"], [{"k": "v"}])
    bad = [
        (["bad\udcff"], [None], "lone surrogate"),
        (["p1"], [{"k\ud800": 1}], "lone surrogate"),
        (["p2"], [{"k": ["\udfff"]}], "lone surrogate"),
        (["p3"], [{"k": float("nan")}], "finite"),
        (["p4"], [{1: "x"}], "keys are strings"),
        (["p5"], [{"k": {1, 2}}], "not JSON"),
    ]
    for ids, payloads, words in bad:
        with pytest.raises((InputError, TypeError), match=words):
            index.add(np.eye(4, dtype=np.float32)[1:2], ids, payloads)
        with pytest.raises((InputError, TypeError), match=words):
            check_items([(ids[0], payloads[0], "text", None)])
    assert index.ids == ["ok"]
    index.save(tmp_path / "i")
    assert Index.load(tmp_path / "i").ids == ["ok"]
