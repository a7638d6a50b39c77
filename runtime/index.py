"""``Index``: exact cosine top-k over embeddings, in NumPy (optionally FAISS), saved as npz + json.

Vectors are normalised on the way in, so a dot product *is* the cosine. Results are ordered by
score, then by insertion order, so equal scores come back in the same order on every run and
on every backend. ``float16`` and ``int8`` storage trade a little accuracy for memory; the
search itself always runs in float32.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lame_runtime.artifact import sha256

STORAGES = ("float32", "float16", "int8")
BACKENDS = ("auto", "numpy", "faiss")
FORMAT = "lame-index"
VERSION = 1
INDEX_STEM = "index"  # file names used when save/load is given a directory
BLOCK_ELEMENTS = 1 << 23  # scores computed per block: at most ~32 MB of float32 at a time


class Index:
    """Exact cosine top-k. ``add(vectors, ids, payloads)``, ``search(queries, k)``, ``remove``.

    Not synchronised: serialise add/remove against searches (e.g. with a lock) when sharing
    one index between threads.
    """

    def __init__(self, dim: int, storage: str = "float32", backend: str = "auto"):
        if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if storage not in STORAGES:
            raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
        self.dim = int(dim)
        self.storage = storage
        self.backend = _resolve_backend(backend)
        self._ids: list[str] = []
        self._rows: dict[str, int] = {}
        self._payloads: list[Any] = []
        self._codes = np.zeros((0, self.dim), dtype=_code_dtype(storage))
        self._scales = np.zeros(0, dtype=np.float32)  # int8 only: one scale per vector
        # Rows added since the last consolidation: many small add() calls stay linear in time.
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._faiss = None  # built lazily, dropped whenever the vectors change

    # ----------------------------------------------------------------- contents
    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._rows

    def __repr__(self) -> str:
        return (f"Index(dim={self.dim}, size={len(self)}, storage={self.storage}, "
                f"backend={self.backend})")

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    def payload(self, item_id: str) -> Any:
        """The payload stored with ``item_id`` (None when it was added without one)."""
        if item_id not in self._rows:
            raise KeyError(f"id {item_id!r} is not in the index")
        return self._payloads[self._rows[item_id]]

    def vectors(self) -> np.ndarray:
        """The stored vectors as float32 [N, dim] (dequantised for float16/int8 storage)."""
        self._consolidate()
        return _decode(self._codes, self._scales, self.storage)

    # ----------------------------------------------------------------- mutation
    def add(self, vectors: Any, ids: Sequence[str], payloads: Sequence[Any] | None = None) -> None:
        """Add rows; all-or-nothing: a bad row leaves the index unchanged."""
        unit = _normalise(_check_matrix(vectors, self.dim, "vectors"), "vectors")
        ids = _check_ids(ids, len(unit), self._rows)
        if payloads is None:
            payloads = [None] * len(ids)
        payloads = list(payloads)
        if len(payloads) != len(ids):
            raise ValueError(f"got {len(payloads)} payloads for {len(ids)} ids")
        for item_id, payload in zip(ids, payloads):
            _check_payload(item_id, payload)
        start = len(self._ids)
        self._pending.append(_encode(unit, self.storage))
        self._ids.extend(ids)
        self._payloads.extend(payloads)
        self._rows.update({item_id: start + i for i, item_id in enumerate(ids)})
        self._faiss = None

    def remove(self, ids: Sequence[str]) -> None:
        """Remove rows by id; unknown ids raise KeyError and nothing is removed."""
        if isinstance(ids, str):
            ids = [ids]
        unknown = [i for i in ids if i not in self._rows]
        if unknown:
            raise KeyError(f"ids not in the index: {unknown[:5]}"
                           + (f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else ""))
        self._consolidate()
        keep = np.ones(len(self._ids), dtype=bool)
        keep[[self._rows[i] for i in ids]] = False
        # Compacting keeps the survivors in insertion order, which is the tie-break order.
        self._codes = self._codes[keep]
        self._scales = self._scales[keep]
        self._ids = [i for i, k in zip(self._ids, keep) if k]
        self._payloads = [p for p, k in zip(self._payloads, keep) if k]
        self._rows = {item_id: row for row, item_id in enumerate(self._ids)}
        self._faiss = None

    # ----------------------------------------------------------------- search
    def search(self, queries: Any, k: int = 10) -> tuple[np.ndarray, list[list[str]]]:
        """-> (scores float32 [Q, min(k, len)], ids [Q][min(k, len)]), best first."""
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        unit = _normalise(_check_matrix(queries, self.dim, "queries"), "queries")
        k = min(int(k), len(self))
        if k == 0:
            return np.zeros((len(unit), 0), dtype=np.float32), [[] for _ in range(len(unit))]
        if self.backend == "faiss":
            scores, rows = self._search_faiss(unit, k)
        else:
            scores, rows = self._search_numpy(unit, k)
        return scores, [[self._ids[r] for r in row] for row in rows]

    def _consolidate(self) -> None:
        if self._pending:
            self._codes = np.concatenate([self._codes, *(c for c, _ in self._pending)])
            self._scales = np.concatenate([self._scales, *(s for _, s in self._pending)])
            self._pending = []

    def _search_numpy(self, unit: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        self._consolidate()
        block = max(k, BLOCK_ELEMENTS // max(len(unit), 1))
        best_scores, best_rows = None, None
        for start in range(0, len(self), block):
            stop = min(start + block, len(self))
            scores = unit @ _decode(self._codes[start:stop], self._scales[start:stop],
                                    self.storage).T
            rows = np.broadcast_to(np.arange(start, stop), scores.shape)
            if best_scores is not None:  # merge with the best of the earlier blocks
                scores = np.concatenate([best_scores, scores], axis=1)
                rows = np.concatenate([best_rows, rows], axis=1)
            best_scores, best_rows = _top_k(scores, rows, k)
        return best_scores, best_rows

    def _search_faiss(self, unit: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self._faiss is None:
            import faiss

            self._faiss = faiss.IndexFlatIP(self.dim)
            self._faiss.add(np.ascontiguousarray(self.vectors()))
        scores, rows = self._faiss.search(np.ascontiguousarray(unit), k)
        # FAISS does not promise an order among equal scores; impose the exact backend's one.
        return _top_k(scores.astype(np.float32), rows.astype(np.int64), k)

    # ----------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> tuple[Path, Path]:
        """Write ``<prefix>.npz`` (vectors) + ``<prefix>.json`` (ids, payloads, config).

        ``path`` is a directory (existing, or ending in a separator) holding ``index.npz`` /
        ``index.json``, or a prefix. Each file is written to a temporary name and renamed, and
        the json records the npz's sha256, so a reader never pairs halves of two saves.
        """
        npz_path, json_path = index_files(path, for_writing=True)
        self._consolidate()
        arrays = {"vectors": self._codes}
        if self.storage == "int8":
            arrays["scales"] = self._scales
        _atomic_write(npz_path, lambda handle: np.savez(handle, **arrays))
        meta = {"format": FORMAT, "version": VERSION, "dim": self.dim, "storage": self.storage,
                "count": len(self), "ids": self._ids, "payloads": self._payloads,
                "npz_sha256": sha256(npz_path)}
        text = json.dumps(meta, ensure_ascii=False)
        _atomic_write(json_path, lambda handle: handle.write(text.encode("utf-8")))
        return npz_path, json_path

    @classmethod
    def load(cls, path: str | Path, backend: str = "auto") -> "Index":
        npz_path, json_path = index_files(path)
        for file in (json_path, npz_path):
            if not file.is_file():
                raise FileNotFoundError(f"index file not found: {file}")
        try:
            meta = json.loads(json_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{json_path} is not valid JSON: {err}") from err
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError(f"{json_path} is not a LaME index")
        if meta.get("version") != VERSION:
            raise ValueError(f"{json_path}: index version {meta.get('version')!r} is not "
                             f"supported (expects {VERSION})")
        if meta.get("npz_sha256") != sha256(npz_path):
            raise ValueError(f"{npz_path} does not match {json_path} (sha256 differs): the "
                             "files come from different saves or are corrupt; rebuild the index")
        missing = [key for key in ("dim", "storage", "ids", "payloads") if key not in meta]
        if missing:
            raise ValueError(f"{json_path} lacks {missing}")
        index = cls(meta["dim"], meta["storage"], backend)
        with np.load(npz_path, allow_pickle=False) as arrays:
            codes = arrays["vectors"]
            scales = arrays["scales"] if index.storage == "int8" else np.zeros(len(codes),
                                                                               np.float32)
        ids, payloads = list(meta["ids"]), list(meta["payloads"])
        if codes.shape != (len(ids), index.dim) or codes.dtype != index._codes.dtype:
            raise ValueError(f"{npz_path} holds {codes.dtype} {codes.shape}, expected "
                             f"{index._codes.dtype} ({len(ids)}, {index.dim})")
        index._codes, index._scales = codes, scales.astype(np.float32, copy=False)
        index._ids, index._payloads = ids, payloads
        index._rows = {item_id: row for row, item_id in enumerate(ids)}
        if len(index._rows) != len(ids):
            raise ValueError(f"{json_path} lists duplicate ids")
        return index


# --------------------------------------------------------------------- helpers
def index_files(path: str | Path, for_writing: bool = False) -> tuple[Path, Path]:
    """Map a directory or prefix to its (npz, json) pair."""
    text = str(path)
    path = Path(path)
    if path.is_dir() or text.endswith(("/", os.sep)):
        if for_writing:
            path.mkdir(parents=True, exist_ok=True)
        return path / f"{INDEX_STEM}.npz", path / f"{INDEX_STEM}.json"
    if path.suffix in (".npz", ".json"):
        path = path.with_suffix("")
    if for_writing and not path.parent.is_dir():
        raise FileNotFoundError(f"directory not found: {path.parent}")
    return path.with_name(path.name + ".npz"), path.with_name(path.name + ".json")


def _resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "numpy":
        return backend
    try:
        import faiss  # noqa: F401  (optional: faiss-cpu)
    except ImportError as err:
        if backend == "faiss":
            raise RuntimeError("backend='faiss' needs the faiss-cpu package "
                               "(pip install faiss-cpu)") from err
        return "numpy"
    return "faiss"


def _check_matrix(values: Any, dim: int, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype.kind != "f":
        raise TypeError(f"{name} must be floating point, got dtype {array.dtype}")
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D [n, {dim}], got shape {array.shape}")
    if array.shape[1] != dim:
        raise ValueError(f"{name} have dim {array.shape[1]}, the index has dim {dim}")
    if not np.isfinite(array).all():
        bad = int(np.flatnonzero(~np.isfinite(array).all(axis=1))[0])
        raise ValueError(f"{name} row {bad} has NaN or infinite values")
    return array


def _normalise(array: np.ndarray, name: str) -> np.ndarray:
    # In float64: squaring large float32 (or float16) components would overflow to inf.
    wide = array.astype(np.float64)
    norms = np.linalg.norm(wide, axis=1)
    if (norms == 0).any():
        raise ValueError(f"{name} row {int(np.flatnonzero(norms == 0)[0])} is all zeros "
                         "(a zero vector has no direction)")
    return (wide / norms[:, None]).astype(np.float32)


def _check_ids(ids: Sequence[str], count: int, existing: dict[str, int]) -> list[str]:
    if isinstance(ids, str):
        raise TypeError("ids must be a list of strings, not a single string")
    ids = list(ids)
    if len(ids) != count:
        raise ValueError(f"got {len(ids)} ids for {count} vectors")
    for item_id in ids:
        if not isinstance(item_id, str):
            raise TypeError(f"ids must be strings, got {type(item_id).__name__} {item_id!r}")
    seen: set[str] = set()
    for item_id in ids:
        if item_id in existing or item_id in seen:
            raise ValueError(f"duplicate id {item_id!r}")
        seen.add(item_id)
    return ids


def _check_payload(item_id: str, payload: Any) -> None:
    try:  # payloads go to JSON on save; fail now, next to the add() that brought them
        json.dumps(payload)
    except (TypeError, ValueError) as err:
        raise TypeError(f"payload of {item_id!r} is not JSON-serialisable: {err}") from err


def _code_dtype(storage: str) -> np.dtype:
    return np.dtype({"float32": np.float32, "float16": np.float16, "int8": np.int8}[storage])


def _encode(unit: np.ndarray, storage: str) -> tuple[np.ndarray, np.ndarray]:
    if storage != "int8":
        return unit.astype(_code_dtype(storage)), np.zeros(len(unit), dtype=np.float32)
    # Symmetric per-vector quantisation: the largest component maps to +-127. The scale is then
    # chosen so that codes * scale has unit norm, which keeps scores true cosines (<= 1).
    peak = np.abs(unit).max(axis=1, keepdims=True)
    codes = np.clip(np.rint(unit * (127.0 / peak)), -127, 127).astype(np.int8)
    scales = 1.0 / np.linalg.norm(codes.astype(np.float32), axis=1)
    return codes, scales.astype(np.float32)


def _decode(codes: np.ndarray, scales: np.ndarray, storage: str) -> np.ndarray:
    vectors = codes.astype(np.float32)
    if storage == "int8":
        vectors *= scales[:, None]
    return vectors


def _top_k(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` per query ordered by (score desc, row asc): deterministic under ties."""
    n = scores.shape[1]
    out_scores = np.empty((len(scores), k), dtype=np.float32)
    out_rows = np.empty((len(scores), k), dtype=np.int64)
    for q in range(len(scores)):
        s, r = scores[q], rows[q]
        if n > k:
            # Keep everything tied with the k-th best so the tie-break below sees all of it.
            kth = np.partition(s, n - k)[n - k]
            keep = np.flatnonzero(s >= kth)
            s, r = s[keep], r[keep]
        order = np.lexsort((r, -s))[:k]
        out_scores[q], out_rows[q] = s[order], r[order]
    return out_scores, out_rows


def _atomic_write(path: Path, write) -> None:
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.",
                                         suffix=".tmp", delete=False)
    try:
        with handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(handle.name, 0o644)  # temp files are created 0600; an index is shareable data
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
