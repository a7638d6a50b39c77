"""FAISS layer (lame_runtime.retrieval.ann): storages and HNSW against the exact NumPy Index."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("faiss")

from lame_runtime.errors import IndexFileError, InputError  # noqa: E402
from lame_runtime.retrieval.ann import AnnConfig, AnnIndex  # noqa: E402
from lame_runtime.retrieval.index import Index  # noqa: E402

DIM, N, Q, K = 48, 3000, 40, 10


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((N, DIM)).astype(np.float32)
    queries = rng.standard_normal((Q, DIM)).astype(np.float32)
    ids = [f"doc-{i}" for i in range(N)]
    exact = Index(DIM, backend="numpy")
    exact.add(vectors, ids)
    return vectors, queries, ids, exact.search(queries, K)


def _recall(found, truth):
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, truth)]))


def _build(config, vectors, ids, chunk=450):
    index = AnnIndex(DIM, config)
    for start in range(0, len(ids), chunk):  # many appends, as streaming indexing does
        index.add(
            vectors[start : start + chunk],
            ids[start : start + chunk],
            [{"n": i} for i in range(start, min(start + chunk, len(ids)))],
        )
    return index


def test_flat_float32_equals_exact(data):
    vectors, queries, ids, (scores, truth) = data
    index = _build(AnnConfig("flat", "float32"), vectors, ids)
    got_scores, got = index.search(queries, K)
    assert got == truth
    np.testing.assert_allclose(got_scores, scores, atol=1e-5)


@pytest.mark.parametrize(
    "storage,min_recall,max_score_error,ratio", [("float16", 0.99, 2e-3, 2), ("int8", 0.9, 0.02, 4)]
)
def test_scalar_quantizer_storage(data, storage, min_recall, max_score_error, ratio):
    vectors, queries, ids, (scores, truth) = data
    index = _build(AnnConfig("flat", storage, train_size=1000), vectors, ids)
    got_scores, got = index.search(queries, K)
    assert _recall(got, truth) >= min_recall
    assert np.abs(got_scores - scores).max() <= max_score_error
    full = _build(AnnConfig("flat", "float32"), vectors, ids).memory_bytes
    assert index.memory_bytes <= full / ratio * 1.05  # the storage really shrinks


@pytest.mark.parametrize("storage", ["float32", "int8"])
def test_hnsw_recall_and_ef_search(data, storage):
    vectors, queries, ids, (_, truth) = data
    index = _build(AnnConfig("hnsw", storage, hnsw_m=16, ef_search=16, train_size=1000), vectors, ids)
    low = _recall(index.search(queries, K, ef_search=K)[1], truth)
    high = _recall(index.search(queries, K, ef_search=256)[1], truth)
    assert high >= 0.9 and high >= low  # a wider beam never finds less here


def test_add_appends_without_rebuilding(data):
    vectors, _, ids, _ = data
    index = AnnIndex(DIM)
    index.add(vectors[:10], ids[:10])
    faiss_index = index._index
    index.add(vectors[10:20], ids[10:20])
    assert index._index is faiss_index and faiss_index.ntotal == 20
    with pytest.raises(InputError, match="duplicate id"):
        index.add(vectors[:1], ids[:1])
    assert len(index) == 20


@pytest.mark.parametrize("kind,storage", [("flat", "int8"), ("hnsw", "float16")])
def test_save_load_roundtrip(tmp_path, data, kind, storage):
    vectors, queries, ids, _ = data
    index = _build(AnnConfig(kind, storage, train_size=500), vectors[:1000], ids[:1000])
    before = index.search(queries, K)
    index.save(tmp_path / "ann")
    loaded = AnnIndex.load(tmp_path / "ann")
    after = loaded.search(queries, K)
    assert after[1] == before[1]
    np.testing.assert_array_equal(after[0], before[0])
    assert loaded.payload(ids[5]) == {"n": 5} and loaded.config == index.config
    # a tampered blob is refused with a clear error
    blob = next(tmp_path.glob("ann.*.faiss"))
    blob.write_bytes(blob.read_bytes()[:-8])
    with pytest.raises(Exception, match="sha256|corrupt"):
        AnnIndex.load(tmp_path / "ann")


def test_bad_config_and_file(tmp_path):
    with pytest.raises(InputError, match="kind"):
        AnnConfig(kind="ivf")
    with pytest.raises(InputError, match="storage"):
        AnnConfig(storage="int4")
    (tmp_path / "x.json").write_text('{"format": "lame-index"}')
    with pytest.raises(IndexFileError, match="not a LaME ANN index"):
        AnnIndex.load(tmp_path / "x")
