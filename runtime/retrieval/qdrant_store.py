"""``QdrantStore``: LaME embeddings in a Qdrant collection (``pip install lame-embed[qdrant]``).

For collections that outgrow one device. ``location`` is a folder (Qdrant's embedded local
mode: no server, what the tests use), ``":memory:"``, or an ``http(s)://`` URL of a Qdrant
server or cluster.

- Cosine distance, vector size from the artifact (``Embedder.dim``); an existing collection
  with another size or distance is refused with a clear error, never silently reused.
- Qdrant point ids must be unsigned integers or UUIDs: a LaME id (any string) is mapped to
  ``uuid5(NAMESPACE, id)`` (deterministic, so re-adding an id overwrites its point) and kept in
  the payload as ``"lame_id"``; the caller's payload (e.g. the image path) is kept beside it
  under ``"payload"``.
- Upserts go in batches of ``batch_size`` points.

Local mode is qdrant-client's pure-Python engine (exhaustive search; its sqlite file stores
points with pickle, so open only folders you created); use a server for large collections.

Results are ``(scores [Q, k], ids [Q][k])`` like ``Index.search``: cosine scores, best first.
"""

from __future__ import annotations

import sqlite3
import uuid
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

import numpy as np

from lame_runtime.errors import BackendError, InputError, LameError, StoreError
from lame_runtime.retrieval.index import (
    _as_list,
    _check_matrix,
    _check_payload,
    _materialise,
    _normalise,
)
from lame_runtime.retrieval.index_io import check_id

# Fixed namespace: the same LaME id maps to the same point id in every run and process.
NAMESPACE = uuid.UUID("6f1c7a0e-3c1b-5d7e-9a51-4c2b8e0d9f11")
ID_KEY, PAYLOAD_KEY = "lame_id", "payload"
DEFAULT_COLLECTION = "lame"
MEMORY = ":memory:"  # local mode without a folder (benchmarks)


def point_id(item_id: str) -> str:
    return str(uuid.uuid5(NAMESPACE, item_id))


def _client_module() -> tuple[Any, Any]:
    try:
        import qdrant_client
        from qdrant_client import models
    except ImportError as err:
        raise BackendError(
            "--qdrant needs the qdrant-client package (pip install 'lame-embed[qdrant]')"
        ) from err
    return qdrant_client, models


def is_url(location: str) -> bool:
    return str(location).startswith(("http://", "https://"))


class QdrantStore:
    """One collection. ``add`` upserts, ``search`` queries, ``close`` releases the folder lock
    (local mode allows one client per folder at a time)."""

    def __init__(
        self,
        location: str,
        collection: str = DEFAULT_COLLECTION,
        dim: int | None = None,
        batch_size: int = 256,
        api_key: str | None = None,
        sizes: tuple[int, ...] = (),
    ):
        """``dim``: the size a new collection gets (None: open an existing one at its size);
        an existing collection may also hold any of ``sizes`` (a Matryoshka model's)."""
        if not isinstance(collection, str) or not collection:
            raise InputError(f"collection must be a non-empty string, got {collection!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        qdrant_client, self._models = _client_module()
        self.location, self.collection, self.batch_size = str(location), collection, batch_size
        try:
            if is_url(self.location):
                self._client = qdrant_client.QdrantClient(url=self.location, api_key=api_key)
            elif self.location == MEMORY:
                self._client = qdrant_client.QdrantClient(location=MEMORY)
            else:
                self._client = qdrant_client.QdrantClient(path=self.location)
        except RuntimeError as err:  # local mode: the folder is locked by another client
            raise BackendError(f"cannot open Qdrant at {self.location}: {err}") from err
        except Exception as err:  # noqa: BLE001  (a bad URL, an unknown option)
            raise StoreError(f"cannot open Qdrant at {self.location}: {_one_line(err)}") from err
        self._sizes = tuple(sizes)
        with self._store("open the collection"):
            self.dim = self._prepare(dim)
        self._fast_local_commits()

    @contextmanager
    def _store(self, doing: str) -> Iterator[None]:
        """The store boundary: whatever qdrant-client, httpx or grpc raise (connection refused,
        timeouts, HTTP errors, a server that is not Qdrant) becomes one ``StoreError`` naming
        the location and what was being done. Nothing is lost: an upsert that failed is
        simply not in the collection, and ``--resume`` finds where to go on."""
        try:
            yield
        except LameError:
            raise
        except Exception as err:  # noqa: BLE001  (the client's exception types vary by transport)
            raise StoreError(f"Qdrant at {self.location} failed to {doing}: {_one_line(err)}") from err

    def _fast_local_commits(self) -> None:
        """Local mode commits one sqlite transaction per point, each an fsync: ~19 ms a point
        on this machine's disk (100,000 images: half an hour of fsyncs). Write-ahead logging
        with synchronous=NORMAL keeps every commit atomic and survives a killed process (what
        ``--resume`` needs); only an OS crash or power loss can drop the last commits. Reaches
        into qdrant-client's local storage; if that changes, nothing breaks, it is just slow."""
        collections = getattr(getattr(self._client, "_client", None), "collections", None)
        storage = getattr(getattr((collections or {}).get(self.collection), "storage", None), "storage", None)
        if isinstance(storage, sqlite3.Connection):
            storage.execute("PRAGMA journal_mode=WAL")
            storage.execute("PRAGMA synchronous=NORMAL")

    def _prepare(self, dim: int | None) -> int:
        models = self._models
        if self._client.collection_exists(self.collection):
            params = self._client.get_collection(self.collection).config.params.vectors
            if not isinstance(params, models.VectorParams):
                raise InputError(
                    f"Qdrant collection {self.collection!r} uses named vectors; "
                    "LaME writes one unnamed cosine vector per point"
                )
            if params.distance != models.Distance.COSINE:
                raise InputError(
                    f"Qdrant collection {self.collection!r} uses {params.distance} distance, not cosine"
                )
            if dim is not None and params.size != dim and params.size not in self._sizes:
                raise InputError(
                    f"Qdrant collection {self.collection!r} holds {params.size}-dim "
                    f"vectors, the model embeds in {dim}: another model built it"
                )
            return int(params.size)
        if dim is None:
            raise InputError(
                f"Qdrant collection {self.collection!r} does not exist at "
                f"{self.location}; build it with `lame-search index --qdrant`"
            )
        self._client.create_collection(
            self.collection,
            vectors_config=models.VectorParams(size=int(dim), distance=models.Distance.COSINE),
        )
        return int(dim)

    def __len__(self) -> int:
        with self._store("count points"):
            return int(self._client.count(self.collection, exact=True).count)

    def __enter__(self) -> QdrantStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._store("close"):
            self._client.close()

    def add(self, vectors: Any, ids: Iterable[str], payloads: Iterable[Any] | None = None) -> None:
        """Upsert rows in batches; an id already present is overwritten."""
        unit = _normalise(_check_matrix(_materialise(vectors), self.dim, "vectors"), "vectors")
        ids = _as_list(ids, "ids")
        payloads = [None] * len(ids) if payloads is None else _as_list(payloads, "payloads")
        if len(ids) != len(unit) or len(payloads) != len(ids):
            raise InputError(f"got {len(unit)} vectors, {len(ids)} ids, {len(payloads)} payloads")
        for item_id, payload in zip(ids, payloads):  # all checked before the first upsert
            if not isinstance(item_id, str):
                raise InputError(f"ids must be strings, got {type(item_id).__name__} {item_id!r}")
            check_id(item_id)
            _check_payload(item_id, payload)
        for start in range(0, len(ids), self.batch_size):
            stop = start + self.batch_size
            batch = self._models.Batch(
                ids=[point_id(i) for i in ids[start:stop]],
                vectors=unit[start:stop].tolist(),
                payloads=[{ID_KEY: i, PAYLOAD_KEY: p} for i, p in zip(ids[start:stop], payloads[start:stop])],
            )
            with self._store(f"upsert points {start}-{start + len(batch.ids) - 1}"):
                self._client.upsert(self.collection, points=batch, wait=True)

    def search(self, queries: Any, k: int = 10, exact: bool = False) -> tuple[np.ndarray, list[list[str]]]:
        """Top-k per query. ``exact`` asks Qdrant for a full scan (no HNSW)."""
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise InputError(f"k must be a positive integer, got {k!r}")
        unit = _normalise(_check_matrix(_materialise(queries), self.dim, "queries"), "queries")
        params = self._models.SearchParams(exact=True) if exact else None
        all_scores, all_ids = [], []
        for query in unit:
            with self._store("search"):
                points = self._client.query_points(
                    self.collection,
                    query=query.tolist(),
                    limit=int(k),
                    with_payload=[ID_KEY],
                    search_params=params,
                ).points
            all_scores.append([p.score for p in points])
            all_ids.append([p.payload[ID_KEY] for p in points])
        width = min(len(row) for row in all_scores) if all_scores else 0
        scores = np.array([row[:width] for row in all_scores], dtype=np.float32).reshape(len(unit), width)
        return scores, all_ids

    def payload(self, item_id: str) -> Any:
        with self._store("read a payload"):
            records = self._client.retrieve(self.collection, [point_id(item_id)], with_payload=True)
        if not records:
            raise KeyError(f"id {item_id!r} is not in Qdrant collection {self.collection!r}")
        return records[0].payload.get(PAYLOAD_KEY)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
