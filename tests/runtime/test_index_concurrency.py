"""Index reliability: concurrent readers and a writer, iterables read once, load validation,
the version-1 format, and an interrupted save that keeps the previous index."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from lame_runtime import Index
from lame_runtime.errors import IndexFileError, InputError, InputTypeError, MissingFileError
from lame_runtime.persist import sha256
from lame_runtime.retrieval.index import index_files
from lame_runtime.retrieval.index_io import content_sha256 as _content_sha256

BACKENDS = ["numpy"] + (["faiss"] if Index(2).backend == "faiss" else [])


def vectors(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_readers_after_adds_never_corrupt(backend):
    """Adds, then 4 threads search at once (lazy merge / FAISS build)."""
    docs, queries = vectors(160), vectors(8, seed=1)
    ids = [f"d{i}" for i in range(160)]
    reference = Index(16, backend="numpy")
    reference.add(docs, ids)
    want = reference.search(queries, k=5)
    for trial in range(200):
        index = Index(16, backend=backend)
        for start in range(0, 160, 20):  # several adds: pending rows to merge lazily
            index.add(docs[start : start + 20], ids[start : start + 20])
        barrier, results, errors = threading.Barrier(4), [], []

        def reader():
            try:
                barrier.wait()
                results.append(index.search(queries, k=5))
            except Exception as err:  # noqa: BLE001  (reported below)
                errors.append(err)

        threads = [threading.Thread(target=reader) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        assert index.vectors().shape == (160, 16) and len(index.ids) == 160, f"trial {trial}"
        for scores, found in results:
            assert found == want[1]
            np.testing.assert_allclose(scores, want[0], atol=1e-5)
        index.remove(["d0", "d159"])
        assert len(index) == 158 and index.vectors().shape == (158, 16)


@pytest.mark.parametrize("backend", BACKENDS)
def test_readers_during_writes_see_consistent_snapshots(backend, tmp_path):
    """4 readers search while one writer adds, removes and saves: every result is a
    consistent view (ids distinct, scores sorted, k bounded by the size at that time)."""
    index = Index(16, backend=backend)
    index.add(vectors(50), [f"base{i}" for i in range(50)])
    queries = vectors(4, seed=2)
    stop, errors = threading.Event(), []

    def reader():
        try:
            while not stop.is_set():
                scores, found = index.search(queries, k=10)
                for row_scores, row in zip(scores, found):
                    assert len(row) == len(set(row)) == 10
                    assert np.all(np.diff(row_scores) <= 1e-6)
                    assert all(item.startswith(("base", "w")) for item in row)
                _ = [index.payload(i) for i in index.ids[:5]]
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for step in range(150):
            index.add(vectors(3, seed=100 + step), [f"w{step}.{j}" for j in range(3)], [{"step": step}] * 3)
            if step % 3 == 2:
                index.remove([f"w{step - 1}.0"])
            if step % 50 == 49:
                index.save(tmp_path / "live")
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not errors, errors
    assert len(index) == 50 + 450 - 50 == len(set(index.ids)) == index.vectors().shape[0]
    loaded = Index.load(tmp_path / "live")
    assert len(loaded) == len(loaded.ids) == loaded.vectors().shape[0]


def test_add_and_remove_accept_generators_once():
    index = Index(16, backend="numpy")
    docs = vectors(6)
    index.add((row for row in docs), (f"g{i}" for i in range(6)), ({"n": i} for i in range(6)))
    assert index.ids == [f"g{i}" for i in range(6)] and index.payload("g3") == {"n": 3}
    np.testing.assert_allclose(index.vectors(), docs / np.linalg.norm(docs, axis=1)[:, None], atol=1e-6)
    index.remove(i for i in ("g1", "g4"))
    assert index.ids == ["g0", "g2", "g3", "g5"]
    with pytest.raises(KeyError, match="nope"):
        index.remove(i for i in ("g0", "nope"))
    assert "g0" in index  # all-or-nothing, the generator read once
    with pytest.raises(InputTypeError, match="list"):
        index.add(docs[:1], "g9")


def test_failed_add_leaves_index_usable():
    index = Index(16, backend="numpy")
    index.add(vectors(3), ["a", "b", "c"])
    for bad in (
        lambda: index.add(vectors(2), ["d", "a"]),
        lambda: index.add(vectors(2), ["d", 5]),
        lambda: index.add(vectors(2), ["d", "e"], [{"x": float("nan")}, None]),
    ):
        with pytest.raises((InputError, InputTypeError)):
            bad()
    assert index.ids == ["a", "b", "c"] and index.vectors().shape == (3, 16)
    index.add(vectors(1, seed=3), ["d"])
    assert index.ids == ["a", "b", "c", "d"]


def test_info_round_trip_and_save_layout(tmp_path):
    index = Index(16, storage="int8", backend="numpy")
    index.add(vectors(4), list("abcd"))
    npz_path, json_path = index.save(tmp_path / "idx", info={"source": "x", "next": 4})
    assert json_path.name == "idx.json" and npz_path.name.startswith("idx.")
    meta = json.loads(json_path.read_text())
    assert meta["files"]["npz"]["sha256"] == sha256(npz_path)
    loaded = Index.load(tmp_path / "idx.json")
    assert loaded.info == {"source": "x", "next": 4} and loaded.ids == list("abcd")


def test_version_1_index_still_loads(tmp_path):
    """The two-file format of earlier releases (index.npz + index.json with npz_sha256)."""
    docs = vectors(5)
    npz_path, json_path = index_files(tmp_path / "old", for_writing=True)
    np.savez(npz_path, vectors=(docs / np.linalg.norm(docs, axis=1)[:, None]))
    json_path.write_text(
        json.dumps(
            {
                "format": "lame-index",
                "version": 1,
                "dim": 16,
                "storage": "float32",
                "count": 5,
                "ids": list("vwxyz"),
                "payloads": [None] * 5,
                "npz_sha256": sha256(npz_path),
            }
        )
    )
    loaded = Index.load(tmp_path / "old")
    assert loaded.ids == list("vwxyz")
    assert loaded.search(docs[2:3], k=1)[1] == [["x"]]


def _saved(tmp_path, storage="float32"):
    index = Index(16, storage=storage, backend="numpy")
    index.add(vectors(4), list("abcd"), [{"n": i} for i in range(4)])
    npz_path, json_path = index.save(tmp_path / "idx")
    return npz_path, json_path, json.loads(json_path.read_text())


def _rewrite(json_path, meta, rehash=True):
    if rehash:
        content = {
            k: meta.get(k)
            for k in ("format", "version", "dim", "storage", "count", "ids", "payloads", "info")
        }
        meta["content_sha256"] = _content_sha256(content)
    json_path.write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda m: m.update(ids=["a", "b", "c", 4]), "ids[3] is 4, not a string"),
        (lambda m: m.update(ids=["a", "b", "a", "d"]), "duplicate ids (e.g. 'a')"),
        (lambda m: m.update(payloads=[None]), "1 payloads for 4 ids"),
        (lambda m: m.update(count=7), "'count' is 7"),
        (lambda m: m.update(dim="16"), "'dim' must be a positive integer"),
        (lambda m: m.update(storage="bf16"), "'storage' must be one of"),
        (lambda m: m.pop("ids"), "lacks the field(s) ['ids']"),
        (lambda m: m.update(ids={"a": 1}), "'ids' and 'payloads' must be lists"),
        (lambda m: m.update(version=9), "index version 9 is not supported"),
        (lambda m: m.update(format="other"), "is not a LaME index"),
        (lambda m: m.update(dim=8), "expected float32 (4, 8)"),
    ],
)
def test_load_names_what_is_wrong(tmp_path, edit, message):
    _, json_path, meta = _saved(tmp_path)
    edit(meta)
    _rewrite(json_path, meta)
    with pytest.raises(IndexFileError) as caught:
        Index.load(tmp_path / "idx")
    assert message in str(caught.value) and str(json_path.parent) in str(caught.value)


def test_load_detects_edited_json_truncation_and_bad_npz(tmp_path):
    npz_path, json_path, meta = _saved(tmp_path, storage="int8")
    meta["ids"][0] = "zz"  # edited without updating the hash
    _rewrite(json_path, meta, rehash=False)
    with pytest.raises(IndexFileError, match="content_sha256"):
        Index.load(tmp_path / "idx")
    npz_path, json_path, meta = _saved(tmp_path, storage="int8")
    json_path.write_text(json_path.read_text()[:40])  # truncated
    with pytest.raises(IndexFileError, match="not valid JSON"):
        Index.load(tmp_path / "idx")
    npz_path, json_path, meta = _saved(tmp_path, storage="int8")
    np.savez(npz_path, vectors=np.zeros((4, 16), np.int8))  # scales missing
    meta["files"]["npz"]["sha256"] = sha256(npz_path)
    _rewrite(json_path, meta)
    with pytest.raises(IndexFileError, match=r"holds arrays \['vectors'\]"):
        Index.load(tmp_path / "idx")
    npz_path.write_bytes(b"not a zip")
    meta["files"]["npz"]["sha256"] = sha256(npz_path)
    _rewrite(json_path, meta)
    with pytest.raises(IndexFileError, match="not a readable npz"):
        Index.load(tmp_path / "idx")
    npz_path.unlink()
    with pytest.raises(IndexFileError, match="missing"):
        Index.load(tmp_path / "idx")
    meta["files"]["npz"]["path"] = "../escape.npz"
    _rewrite(json_path, meta)
    with pytest.raises(IndexFileError, match="outside its folder"):
        Index.load(tmp_path / "idx")
    with pytest.raises(MissingFileError, match="index file not found"):
        Index.load(tmp_path / "nothing")


def test_failed_save_keeps_the_previous_index(tmp_path, monkeypatch):
    index = Index(16, backend="numpy")
    index.add(vectors(4), list("abcd"))
    index.save(tmp_path / "idx")
    index.add(vectors(2, seed=5), ["e", "f"])

    def broken_savez(handle, **arrays):
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        index.save(tmp_path / "idx")
    monkeypatch.undo()
    assert Index.load(tmp_path / "idx").ids == list("abcd")
    assert len(list(tmp_path.iterdir())) == 2  # json + one npz: no temp files left


@pytest.mark.skipif("faiss" not in BACKENDS, reason="faiss-cpu is optional")
def test_faiss_with_rows_added_after_its_build_matches_numpy():
    """FAISS indexes are reused across adds (new rows searched exactly with NumPy) and
    rebuilt after a remove or many adds: results always equal the NumPy backend's."""
    rng = np.random.default_rng(7)
    exact, flat = Index(16, backend="numpy"), Index(16, backend="faiss")
    queries = vectors(6, seed=8)
    for step in range(60):
        rows = rng.normal(size=(int(rng.integers(1, 40)), 16)).astype(np.float32)
        ids = [f"s{step}.{i}" for i in range(len(rows))]
        for index in (exact, flat):
            index.add(rows, ids)
        if step % 17 == 16:
            for index in (exact, flat):
                index.remove(ids[:1])
        k = int(rng.integers(1, 30))
        want, got = exact.search(queries, k=k), flat.search(queries, k=k)
        assert got[1] == want[1], step
        np.testing.assert_allclose(got[0], want[0], atol=1e-5)
