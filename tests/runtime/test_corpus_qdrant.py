"""Qdrant store (embedded local mode): same top-k as the exact Index on the digits eval."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("qdrant_client")

from lame_runtime.errors import InputError  # noqa: E402
from lame_runtime.retrieval.index import Index  # noqa: E402
from lame_runtime.retrieval.qdrant_store import ID_KEY, QdrantStore, point_id  # noqa: E402


@pytest.fixture(scope="module")
def digits_embeddings(artifact_dir, digits_dir):
    from lame_runtime import Embedder
    from lame_runtime.cli.search import dataset_items

    embedder = Embedder(artifact_dir)
    items = dataset_items(Path(digits_dir))
    vectors = embedder.encode_documents([i[2] for i in items], [i[3] for i in items])
    queries = embedder.encode(
        [
            "the digits add up to 9",
            "exactly 2 digits are greater than 6",
            "7 3 1",
            "the odd digits add up to 13",
        ]
    )
    return items, vectors, queries


def test_top_k_equals_exact_index(tmp_path, digits_embeddings):
    items, vectors, queries = digits_embeddings
    exact = Index(vectors.shape[1], backend="numpy")
    exact.add(vectors, [i[0] for i in items], [i[1] for i in items])
    k = 5
    truth_scores, truth = exact.search(queries, k)
    with QdrantStore(str(tmp_path / "q"), "digits", dim=vectors.shape[1], batch_size=7) as store:
        store.add(vectors, [i[0] for i in items], [i[1] for i in items])
        assert len(store) == len(items)
    with QdrantStore(str(tmp_path / "q"), "digits") as store:  # reopened from the folder
        scores, found = store.search(queries, k)
        for q in range(len(queries)):
            gaps = np.diff(truth_scores[q])
            if np.all(np.abs(gaps) > 1e-6):  # no near-tie that could legitimately swap
                assert found[q] == truth[q]
            else:
                assert set(found[q]) == set(truth[q])
        np.testing.assert_allclose(scores, truth_scores, atol=1e-5)
        assert store.payload(items[0][0]) == items[0][1]


def test_ids_sizes_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((10, 8)).astype(np.float32)
    ids = [f"img/{i}.png" for i in range(10)]
    assert point_id("a") == point_id("a") != point_id("b")
    with QdrantStore(str(tmp_path / "q"), "c", dim=8) as store:
        store.add(vectors, ids)
        store.add(vectors[:2] * -1, ids[:2])  # same ids: overwritten, not duplicated
        assert len(store) == 10
        _, found = store.search(-vectors[:1], 1)
        assert found == [[ids[0]]]
        record = store._client.retrieve("c", [point_id(ids[3])], with_payload=True)[0]
        assert record.payload[ID_KEY] == ids[3]
        with pytest.raises(InputError, match="dim"):
            store.add(vectors[:, :4], ids)
        with pytest.raises(InputError, match="ids must be strings"):
            store.add(vectors[:1], [3])
    with pytest.raises(InputError, match="holds 8-dim"):
        QdrantStore(str(tmp_path / "q"), "c", dim=16)
    with pytest.raises(InputError, match="does not exist"):
        QdrantStore(str(tmp_path / "q"), "other")
