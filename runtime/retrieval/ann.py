"""``AnnIndex``: FAISS cosine search at scale: fp16/int8 storage and an approximate HNSW graph.

The exact ``lame_runtime.retrieval.index.Index`` stays the reference (exact top-k, deterministic ties,
remove, concurrent snapshots). This layer is for collections where that is too slow or too
big: vectors live *inside* FAISS (no float32 copy beside them), and ``add`` appends to the
FAISS index instead of rebuilding it.

Kinds (``AnnConfig.kind``) and storages (``AnnConfig.storage``):

- ``flat``: exhaustive search; ``float32`` is ``IndexFlatIP`` (exact), ``float16``/``int8``
  a ``IndexScalarQuantizer`` (QT_fp16 / QT_8bit) with inner product: 2x / 4x less memory.
- ``hnsw``: ``IndexHNSWFlat`` / ``IndexHNSWSQ`` with inner product: approximate, sub-linear
  queries; ``ef_search`` trades recall for speed (see scripts/bench/bench_search.py for the figures).

int8 (QT_8bit) learns a per-dimension range: it is trained on the first ``train_size`` vectors
added (buffered until then, or until the first search/save); later components outside that
range are clipped. For unit vectors from one model that range is stable.

Vectors are normalised on the way in, so inner product is cosine. Ids are strings and payloads
JSON, as in ``Index``. Saved as ``<stem>.json`` + ``<stem>.<token>.faiss`` (FAISS's own binary
format, never pickle) through ``lame_runtime.persist.save_versioned``: a kill mid-save leaves
the previous save loadable. One lock serialises ``add``/``save`` with ``search`` (FAISS's
index is not safe to read while it is being appended to).
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterable

import numpy as np

from lame_runtime.errors import BackendError, IndexFileError, InputError, MissingFileError
from lame_runtime.persist import read_json, save_versioned, versioned_file
from lame_runtime.retrieval.index import (
    _as_list,
    _check_matrix,
    _check_payload,
    _materialise,
    _normalise,
)
from lame_runtime.retrieval.index_io import index_files

KINDS = ("flat", "hnsw")
STORAGES = ("float32", "float16", "int8")
FORMAT = "lame-ann-index"
VERSION = 1


@dataclass
class AnnConfig:
    kind: str = "flat"
    storage: str = "float32"
    hnsw_m: int = 32  # graph degree: memory per vector grows with it
    ef_construction: int = 80  # build-time beam: better graph, slower adds
    ef_search: int = 64  # query-time beam: recall vs speed
    train_size: int = 4096  # int8: vectors its value range is learned from

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"ANN kind must be one of {KINDS}, got {self.kind!r}")
        if self.storage not in STORAGES:
            raise InputError(f"ANN storage must be one of {STORAGES}, got {self.storage!r}")
        for name in ("hnsw_m", "ef_construction", "ef_search", "train_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value!r}")

    def factory(self) -> str:
        """The ``faiss.index_factory`` string (always used with METRIC_INNER_PRODUCT)."""
        codec = {"float32": "Flat", "float16": "SQfp16", "int8": "SQ8"}[self.storage]
        if self.kind == "flat":
            return codec
        return f"HNSW{self.hnsw_m}" + ("" if codec == "Flat" else f",{codec}")


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as err:
        raise BackendError("AnnIndex needs the faiss-cpu package (pip install faiss-cpu)") from err
    return faiss


class AnnIndex:
    """Cosine top-k through FAISS: ``add(vectors, ids, payloads)``, ``search(queries, k)``."""

    def __init__(self, dim: int, config: AnnConfig | None = None):
        if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool) or dim < 1:
            raise InputError(f"dim must be a positive integer, got {dim!r}")
        self.dim = int(dim)
        self.config = config or AnnConfig()
        faiss = _faiss()
        self._index = faiss.index_factory(self.dim, self.config.factory(), faiss.METRIC_INNER_PRODUCT)
        if self.config.kind == "hnsw":
            self._hnsw().efConstruction = self.config.ef_construction
        self._ids: list[str] = []
        self._rows: dict[str, int] = {}
        self._payloads: list[Any] = []
        self._untrained: list[np.ndarray] = []  # int8: rows waiting for the range to be learned
        self.info: dict[str, Any] = {}
        self._lock = threading.RLock()

    def _hnsw(self) -> Any:
        return _faiss().downcast_index(self._index).hnsw

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._rows

    def __repr__(self) -> str:
        return f"AnnIndex(dim={self.dim}, size={len(self)}, {self.config.factory()})"

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    def payload(self, item_id: str) -> Any:
        row = self._rows.get(item_id)
        if row is None:
            raise KeyError(f"id {item_id!r} is not in the index")
        return self._payloads[row]

    @property
    def memory_bytes(self) -> int:
        """Bytes of FAISS's serialised index: what the vectors (and graph) take."""
        with self._lock:
            self._flush()
            return int(_faiss().serialize_index(self._index).nbytes)

    # ------------------------------------------------------------------ mutation
    def add(self, vectors: Any, ids: Iterable[str], payloads: Iterable[Any] | None = None) -> None:
        """Append rows (all-or-nothing: bad input leaves the index unchanged)."""
        unit = _normalise(_check_matrix(_materialise(vectors), self.dim, "vectors"), "vectors")
        ids = _as_list(ids, "ids")
        payloads = [None] * len(ids) if payloads is None else _as_list(payloads, "payloads")
        if len(ids) != len(unit) or len(payloads) != len(ids):
            raise InputError(f"got {len(unit)} vectors, {len(ids)} ids, {len(payloads)} payloads")
        seen: set[str] = set()
        for item_id, payload in zip(ids, payloads):
            if not isinstance(item_id, str):
                raise InputError(f"ids must be strings, got {type(item_id).__name__} {item_id!r}")
            if item_id in seen or item_id in self._rows:
                raise InputError(f"duplicate id {item_id!r}")
            seen.add(item_id)
            _check_payload(item_id, payload)
        with self._lock:
            if self._index.is_trained:
                self._index.add(np.ascontiguousarray(unit))
            else:
                self._untrained.append(unit)
                if sum(len(u) for u in self._untrained) >= self.config.train_size:
                    self._flush()
            start = len(self._ids)
            self._ids.extend(ids)
            self._payloads.extend(payloads)
            self._rows.update({item_id: start + i for i, item_id in enumerate(ids)})

    def _flush(self) -> None:
        """Train the int8 range on the buffered rows and add them (under the lock)."""
        if not self._untrained:
            return
        rows = np.concatenate(self._untrained)
        if not self._index.is_trained:
            self._index.train(rows[: self.config.train_size])
        self._index.add(rows)
        self._untrained = []

    # ------------------------------------------------------------------ search
    def search(
        self, queries: Any, k: int = 10, ef_search: int | None = None
    ) -> tuple[np.ndarray, list[list[str]]]:
        """-> (scores float32 [Q, min(k, len)], ids), best first. ``ef_search`` overrides the
        configured HNSW beam for this call (it must be >= k to find k neighbours)."""
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise InputError(f"k must be a positive integer, got {k!r}")
        unit = _normalise(_check_matrix(_materialise(queries), self.dim, "queries"), "queries")
        with self._lock:
            self._flush()
            k = min(int(k), len(self._ids))
            if k == 0:
                return np.zeros((len(unit), 0), np.float32), [[] for _ in range(len(unit))]
            if self.config.kind == "hnsw":
                self._hnsw().efSearch = max(int(ef_search or self.config.ef_search), k)
            scores, rows = self._index.search(np.ascontiguousarray(unit), k)
            ids = [[self._ids[r] for r in row if r >= 0] for row in rows]
        return scores.astype(np.float32), ids

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path, info: dict[str, Any] | None = None) -> tuple[Path, Path]:
        """Write ``<prefix>.json`` + ``<prefix>.<token>.faiss`` (a directory holds ``index.*``);
        -> (faiss file, json). ``info`` (JSON) replaces ``self.info`` and is saved with it."""
        if info is not None:
            _check_payload("info", info)
            self.info = dict(info)
        _, json_path = index_files(path, for_writing=True)
        with self._lock:
            self._flush()
            blob = _faiss().serialize_index(self._index).tobytes()
            content = {
                "format": FORMAT,
                "version": VERSION,
                "dim": self.dim,
                "config": asdict(self.config),
                "ids": list(self._ids),
                "payloads": list(self._payloads),
                "info": self.info,
            }
        meta = {**content, "content_sha256": _digest(content)}
        written = save_versioned(json_path, {"faiss": lambda handle: _write(handle, blob)}, meta)
        return json_path.parent / written["files"]["faiss"]["path"], json_path

    @classmethod
    def load(cls, path: str | Path) -> AnnIndex:
        _, json_path = index_files(path)
        if not json_path.is_file():
            raise MissingFileError(f"index file not found: {json_path}")
        meta = read_json(json_path, IndexFileError, what="index metadata")
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise IndexFileError(f'{json_path} is not a LaME ANN index ("format": {FORMAT!r})')
        if meta.get("version") != VERSION:
            raise IndexFileError(
                f"{json_path}: ANN index version {meta.get('version')!r} is not "
                f"supported (this runtime reads {VERSION})"
            )
        content = {
            key: meta.get(key) for key in ("format", "version", "dim", "config", "ids", "payloads", "info")
        }
        if meta.get("content_sha256") != _digest(content):
            raise IndexFileError(f"{json_path}: content does not match its content_sha256")
        ids, payloads = meta["ids"], meta["payloads"]
        if not (
            isinstance(ids, list)
            and isinstance(payloads, list)
            and len(ids) == len(payloads)
            and all(isinstance(i, str) for i in ids)
            and len(set(ids)) == len(ids)
        ):
            raise IndexFileError(f"{json_path}: ids must be distinct strings, one payload each")
        try:
            config = AnnConfig(**meta["config"])
        except (TypeError, InputError) as err:
            raise IndexFileError(f"{json_path}: bad 'config': {err}") from err
        index = cls(meta["dim"], config)
        blob = np.fromfile(versioned_file(json_path, meta, "faiss"), dtype=np.uint8)
        try:
            loaded = _faiss().deserialize_index(blob)
        except (RuntimeError, MemoryError, ValueError) as err:  # faiss: "Error in ... read"
            raise IndexFileError(
                f"{json_path}: its FAISS file cannot be read ({_first_line(err)}); rebuild the index"
            ) from err
        if loaded.d != index.dim or loaded.ntotal != len(ids):
            raise IndexFileError(
                f"{json_path}: the FAISS file holds {loaded.ntotal} vectors of "
                f"dim {loaded.d}, the json {len(ids)} of dim {index.dim}"
            )
        index._index = loaded
        index._ids, index._payloads = ids, payloads
        index._rows = {item_id: row for row, item_id in enumerate(ids)}
        index.info = meta.get("info") or {}
        return index


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


def _digest(content: dict[str, Any]) -> str:
    text = json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def load_any(path: str | Path, backend: str = "auto") -> Any:
    """An ``Index`` or an ``AnnIndex``, whichever was saved at ``path`` (by its json's format)."""
    from lame_runtime.retrieval.index import Index

    _, json_path = index_files(path)
    if json_path.is_file():
        try:
            kind = json.loads(json_path.read_text(encoding="utf-8")).get("format")
        except (ValueError, UnicodeDecodeError, AttributeError, RecursionError):
            kind = None  # Index.load names the problem
        if kind == FORMAT:
            return AnnIndex.load(path)
    return Index.load(path, backend=backend)


def _write(handle: BinaryIO, data: bytes) -> None:
    handle.write(data)
