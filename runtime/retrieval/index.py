"""``Index``: exact cosine top-k over embeddings, in NumPy (optionally FAISS), saved as npz + json.

Vectors are normalised on the way in, so a dot product *is* the cosine. Results are ordered by
score, then by insertion order, so equal scores come back in the same order on every run and
on every backend. ``float16`` and ``int8`` storage trade a little accuracy for memory; the
search itself always runs in float32.

Concurrency: any number of threads may ``search`` (and read ids/payloads) while one thread
``add``s, ``remove``s or ``save``s. Readers work on an immutable snapshot of the index; writers
publish a new snapshot under a lock, and the lazy work readers trigger (merging pending rows,
building the FAISS index) happens under that lock too.

On disk (format version 2): ``<stem>.json`` (ids, payloads, config, the sha256 of its own
content) points at ``<stem>.<token>.npz`` by name and sha256. A save writes a new npz under a
new name and replaces the json last (``lame_runtime.persist.save_versioned``), so a kill at any
instant leaves the previous or the new index loadable, never neither. Version 1 indexes
(``<stem>.npz`` + ``<stem>.json``) still load.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from lame_runtime.errors import (
    BackendError,
    IndexFileError,
    InputError,
    InputTypeError,
    IntegrityError,
    MissingFileError,
)
from lame_runtime.persist import save_versioned, sha256, versioned_file
from lame_runtime.retrieval.index_io import (  # noqa: F401
    FORMAT,
    INDEX_STEM,
    STORAGES,
    VERSION,
    check_id,
    check_storable,
    code_dtype,
    content_sha256,
    index_exists,
    index_files,
    read_arrays,
    read_meta,
)

BACKENDS = ("auto", "numpy", "faiss")
BLOCK_ELEMENTS = 1 << 23  # scores computed per block: at most ~32 MB of float32 at a time


@dataclass(frozen=True)
class _State:
    """One immutable view of the index.

    ``ids``/``payloads``/``rows``/``pending`` are append-only and shared with the states that
    later ``add``s publish (so many small adds stay linear); a state reads only its first
    ``count`` ids and ``n_pending`` chunks, so appends never change what it sees. ``remove``
    builds fresh containers.
    """

    ids: list[str]
    rows: dict[str, int]
    payloads: list[Any]
    count: int
    codes: np.ndarray
    scales: np.ndarray
    pending: list[tuple[np.ndarray, np.ndarray]]
    n_pending: int
    cache: dict[str, Any]  # per-state derived data (the FAISS index): valid as long as the state is
    # (codes, scales) arrays with spare capacity that ``codes``/``scales`` are views of: merges
    # append past every published view instead of reallocating N rows each time (which also
    # fragments the heap: resident memory crept up under a soak of interleaved add/search).
    buffers: tuple[np.ndarray, np.ndarray] | None = None

    def row(self, item_id: str) -> int | None:
        row = self.rows.get(item_id)
        return row if row is not None and row < self.count else None


class Index:
    """Exact cosine top-k. ``add(vectors, ids, payloads)``, ``search(queries, k)``, ``remove``.

    Thread-safe for concurrent readers and writers (see the module docstring).
    """

    def __init__(self, dim: int, storage: str = "float32", backend: str = "auto"):
        if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool) or dim < 1:
            raise InputError(f"dim must be a positive integer, got {dim!r}")
        if storage not in STORAGES:
            raise InputError(f"storage must be one of {STORAGES}, got {storage!r}")
        self.dim = int(dim)
        self.storage = storage
        self.backend = _resolve_backend(backend)
        self.info: dict[str, Any] = {}  # free-form JSON metadata saved with the index
        self._lock = threading.RLock()  # writers, and readers' lazy merges / FAISS builds
        self._save_lock = threading.Lock()  # two saves of one index must not interleave
        self._faiss_base: tuple[Any, ...] | None = None  # (buffer, FAISS index, rows covered)
        self._state = _State(
            [], {}, [], 0, np.zeros((0, self.dim), code_dtype(storage)), np.zeros(0, np.float32), [], 0, {}
        )

    # ----------------------------------------------------------------- contents
    def __len__(self) -> int:
        return self._state.count

    def __contains__(self, item_id: object) -> bool:
        return isinstance(item_id, str) and self._state.row(item_id) is not None

    def __repr__(self) -> str:
        return f"Index(dim={self.dim}, size={len(self)}, storage={self.storage}, backend={self.backend})"

    @property
    def ids(self) -> list[str]:
        state = self._state
        return state.ids[: state.count]

    def payload(self, item_id: str) -> Any:
        """The payload stored with ``item_id`` (None when it was added without one)."""
        state = self._state
        row = state.row(item_id) if isinstance(item_id, str) else None
        if row is None:
            raise KeyError(f"id {item_id!r} is not in the index")
        return state.payloads[row]

    def vectors(self) -> np.ndarray:
        """The stored vectors as float32 [N, dim] (dequantised for float16/int8 storage)."""
        state = self._merged()
        return _decode(state.codes, state.scales, self.storage)

    # ----------------------------------------------------------------- mutation
    def add(self, vectors: Any, ids: Iterable[str], payloads: Iterable[Any] | None = None) -> None:
        """Add rows; all-or-nothing: a bad row leaves the index unchanged.

        ``vectors``, ``ids`` and ``payloads`` may be any iterables (read exactly once).
        """
        unit = _normalise(_check_matrix(_materialise(vectors), self.dim, "vectors"), "vectors")
        ids = _as_list(ids, "ids")
        payloads = [None] * len(ids) if payloads is None else _as_list(payloads, "payloads")
        if len(payloads) != len(ids):
            raise InputError(f"got {len(payloads)} payloads for {len(ids)} ids")
        for item_id, payload in zip(ids, payloads):
            _check_payload(item_id, payload)
        codes = _encode(unit, self.storage)
        with self._lock:
            state = self._owned_state()
            _check_ids(ids, len(unit), state)
            start = state.count
            state.pending.append(codes)
            state.ids.extend(ids)
            state.payloads.extend(payloads)
            state.rows.update({item_id: start + i for i, item_id in enumerate(ids)})
            self._state = replace(state, count=start + len(ids), n_pending=len(state.pending), cache={})

    def remove(self, ids: Iterable[str]) -> None:
        """Remove rows by id; unknown ids raise KeyError and nothing is removed."""
        ids = [ids] if isinstance(ids, str) else _as_list(ids, "ids")
        with self._lock:
            state = self._merged()
            unknown = [i for i in ids if not isinstance(i, str) or state.row(i) is None]
            if unknown:
                raise KeyError(
                    f"ids not in the index: {unknown[:5]}"
                    + (f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else "")
                )
            keep = np.ones(state.count, dtype=bool)
            keep[[state.rows[i] for i in ids]] = False
            # Compacting keeps the survivors in insertion order, which is the tie-break order.
            kept_ids = [i for i, k in zip(state.ids[: state.count], keep) if k]
            self._state = _State(
                kept_ids,
                {item_id: row for row, item_id in enumerate(kept_ids)},
                [p for p, k in zip(state.payloads[: state.count], keep) if k],
                len(kept_ids),
                state.codes[keep],
                state.scales[keep],
                [],
                0,
                {},
            )

    def _owned_state(self) -> _State:
        """The current state, its shared containers trimmed to it (after a failed add)."""
        state = self._state
        if (
            len(state.ids) == state.count
            and len(state.payloads) == state.count
            and len(state.pending) == state.n_pending
            and len(state.rows) == state.count
        ):
            return state
        ids = state.ids[: state.count]
        return replace(
            state,
            ids=ids,
            payloads=state.payloads[: state.count],
            rows={item_id: row for row, item_id in enumerate(ids)},
            pending=state.pending[: state.n_pending],
        )

    def _merged(self) -> _State:
        """The current state with pending rows merged into one array (lazily, under the lock)."""
        state = self._state
        if not state.n_pending:
            return state
        with self._lock:
            state = self._owned_state()
            if state.n_pending:
                state = _merge(state)
            self._state = state
            return state

    # ----------------------------------------------------------------- search
    def search(self, queries: Any, k: int = 10) -> tuple[np.ndarray, list[list[str]]]:
        """-> (scores float32 ``[Q, min(k, len)]``, ids ``[Q][min(k, len)]``), best first."""
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise InputError(f"k must be a positive integer, got {k!r}")
        unit = _normalise(_check_matrix(_materialise(queries), self.dim, "queries"), "queries")
        state = self._merged()
        k = min(int(k), state.count)
        if k == 0:
            return np.zeros((len(unit), 0), dtype=np.float32), [[] for _ in range(len(unit))]
        if self.backend == "faiss":
            scores, rows = self._search_faiss(state, unit, k)
        else:
            scores, rows = _search_numpy(state.codes, state.scales, self.storage, unit, k)
        return scores, [[state.ids[r] for r in row] for row in rows]

    def _search_faiss(self, state: _State, unit: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        flat, covered = self._faiss_for(state)
        scores, rows = flat.search(np.ascontiguousarray(unit), min(k, covered))
        scores, rows = scores.astype(np.float32), rows.astype(np.int64)
        if covered < state.count:  # rows added since the FAISS index was built: exact NumPy
            tail = _search_numpy(
                state.codes[covered:],
                state.scales[covered:],
                self.storage,
                unit,
                min(k, state.count - covered),
                offset=covered,
            )
            scores = np.concatenate([scores, tail[0]], axis=1)
            rows = np.concatenate([rows, tail[1]], axis=1)
        # FAISS does not promise an order among equal scores; impose the exact backend's one.
        return _top_k(scores, rows, k)

    def _faiss_for(self, state: _State) -> tuple[Any, int]:
        """(a FAISS index over ``state``'s first ``covered`` rows, covered).

        Rows only ever get appended past published views of a buffer, so a FAISS index built
        for an earlier state of the same buffer still holds exactly those rows: it is reused
        while the rows added since are few (searched with NumPy), and rebuilt when they reach
        a quarter of it. Rebuilding on every add would copy all vectors per add+search.
        """
        cached = state.cache.get("faiss")
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        with self._lock:  # one build at a time, however many readers arrive at once
            cached = state.cache.get("faiss")
            if cached is None:
                buffer = state.buffers[0] if state.buffers else state.codes
                base = self._faiss_base
                if (
                    base is not None
                    and base[0] is buffer
                    and base[2] <= state.count
                    and state.count - base[2] <= max(base[2] // 4, 256)
                ):
                    cached = (base[1], base[2])
                else:
                    import faiss

                    flat = faiss.IndexFlatIP(self.dim)
                    flat.add(np.ascontiguousarray(_decode(state.codes, state.scales, self.storage)))
                    cached = (flat, state.count)
                    self._faiss_base = (buffer, flat, state.count)
                state.cache["faiss"] = cached
        return cached

    # ----------------------------------------------------------------- persistence
    def save(self, path: str | Path, info: dict[str, Any] | None = None) -> tuple[Path, Path]:
        """Write ``<prefix>.json`` + ``<prefix>.<token>.npz``; returns (npz, json) paths.

        ``path`` is a directory (existing, or ending in a separator) holding ``index.json`` /
        ``index.<token>.npz``, or a prefix. ``info`` (JSON) replaces ``self.info`` and is
        saved with the index. The previous save stays loadable until the new json is in
        place (see the module docstring).
        """
        if info is not None:
            check_storable(info, "info")
            self.info = dict(info)
        _, json_path = index_files(path, for_writing=True)
        state = self._merged()  # immutable: written without holding up readers or writers
        arrays = {"vectors": state.codes}
        if self.storage == "int8":
            arrays["scales"] = state.scales
        content = {
            "format": FORMAT,
            "version": VERSION,
            "dim": self.dim,
            "storage": self.storage,
            "count": state.count,
            "ids": state.ids[: state.count],
            "payloads": state.payloads[: state.count],
            "info": self.info,
        }
        meta = {**content, "content_sha256": content_sha256(content)}
        with self._save_lock:
            written = save_versioned(json_path, {"npz": lambda handle: _savez(handle, arrays)}, meta)
        return json_path.parent / written["files"]["npz"]["path"], json_path

    @classmethod
    def load(cls, path: str | Path, backend: str = "auto") -> Index:
        """Read a saved index, validating every field; errors name the file and the problem."""
        legacy_npz, json_path = index_files(path)
        if not json_path.is_file():
            raise MissingFileError(f"index file not found: {json_path}")
        meta = read_meta(json_path)
        index = cls(meta["dim"], meta["storage"], backend)
        if meta["version"] == 1:
            if not legacy_npz.is_file():
                raise MissingFileError(f"index file not found: {legacy_npz}")
            if meta.get("npz_sha256") != sha256(legacy_npz):
                raise IndexFileError(
                    f"{legacy_npz} does not match {json_path} (sha256 "
                    "differs): the files come from different saves or are "
                    "corrupt; rebuild the index"
                )
            npz_path = legacy_npz
        else:
            try:
                npz_path = versioned_file(json_path, meta, "npz")
            except (IntegrityError, MissingFileError) as err:
                raise IndexFileError(f"{err}; rebuild the index") from err
        codes, scales = read_arrays(npz_path, index.storage, index.dim, meta["count"])
        ids, payloads = meta["ids"], meta["payloads"]
        index.info = meta.get("info") or {}
        index._state = _State(
            ids,
            {item_id: row for row, item_id in enumerate(ids)},
            payloads,
            len(ids),
            codes,
            scales,
            [],
            0,
            {},
        )
        return index


def _merge(state: _State) -> _State:
    """``state`` with its pending chunks appended to the codes (capacity doubles as needed).

    Rows are written only past ``len(state.codes)``: no published state can see them, so
    readers of older states are unaffected.
    """
    chunks = state.pending[: state.n_pending]
    start = len(state.codes)
    stop = start + sum(len(c) for c, _ in chunks)
    if state.buffers is not None and len(state.buffers[0]) >= stop:
        codes_buf, scales_buf = state.buffers
    else:
        capacity = max(stop, 2 * start, 256)
        codes_buf = np.empty((capacity, state.codes.shape[1]), state.codes.dtype)
        scales_buf = np.empty(capacity, np.float32)
        codes_buf[:start], scales_buf[:start] = state.codes, state.scales
    row = start
    for codes, scales in chunks:
        codes_buf[row : row + len(codes)], scales_buf[row : row + len(codes)] = codes, scales
        row += len(codes)
    return replace(
        state,
        codes=codes_buf[:stop],
        scales=scales_buf[:stop],
        pending=[],
        n_pending=0,
        cache={},
        buffers=(codes_buf, scales_buf),
    )


# --------------------------------------------------------------------- checks
def _resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise InputError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "numpy":
        return backend
    try:
        import faiss  # noqa: F401  (optional: faiss-cpu)
    except ImportError as err:
        if backend == "faiss":
            raise BackendError("backend='faiss' needs the faiss-cpu package (pip install faiss-cpu)") from err
        return "numpy"
    return "faiss"


def _as_list(values: Any, name: str) -> list[Any]:
    if isinstance(values, (str, bytes)):
        raise InputTypeError(f"{name} must be a list, not a single {type(values).__name__}")
    try:
        return list(values)
    except TypeError as err:
        raise InputTypeError(f"{name} must be a list (any iterable), got {type(values).__name__}") from err


def _materialise(values: Any) -> Any:
    """A generator/iterator of rows becomes a list (read once); arrays pass through."""
    if isinstance(values, (np.ndarray, list, tuple)) or hasattr(values, "__array__"):
        return values
    if hasattr(values, "__iter__") and not isinstance(values, (str, bytes, dict)):
        return list(values)
    return values


def _check_matrix(values: Any, dim: int, name: str) -> np.ndarray:
    try:
        array = np.asarray(values)
    except (ValueError, TypeError) as err:  # ragged rows
        raise InputError(f"{name} must be a 2-D float array [n, {dim}]: {err}") from err
    if array.dtype.kind != "f":
        raise InputTypeError(f"{name} must be floating point, got dtype {array.dtype}")
    if array.ndim != 2:
        raise InputError(f"{name} must be 2-D [n, {dim}], got shape {array.shape}")
    if array.shape[1] != dim:
        raise InputError(f"{name} have dim {array.shape[1]}, the index has dim {dim}")
    if not np.isfinite(array).all():
        bad = int(np.flatnonzero(~np.isfinite(array).all(axis=1))[0])
        raise InputError(f"{name} row {bad} has NaN or infinite values")
    return array


def _normalise(array: np.ndarray, name: str) -> np.ndarray:
    # In float64: squaring large float32 (or float16) components would overflow to inf.
    wide = array.astype(np.float64)
    norms = np.linalg.norm(wide, axis=1)
    if (norms == 0).any():
        raise InputError(
            f"{name} row {int(np.flatnonzero(norms == 0)[0])} is all zeros (a zero vector has no direction)"
        )
    unit: np.ndarray = (wide / norms[:, None]).astype(np.float32)
    return unit


def _check_ids(ids: list[Any], count: int, state: _State) -> None:
    if len(ids) != count:
        raise InputError(f"got {len(ids)} ids for {count} vectors")
    for item_id in ids:
        check_id(item_id)
    seen: set[str] = set()
    for item_id in ids:
        if state.row(item_id) is not None or item_id in seen:
            raise InputError(f"duplicate id {item_id!r}")
        seen.add(item_id)


def _check_payload(item_id: str, payload: Any) -> None:
    """Refuse, before anything is stored, a payload the saved json could not hold exactly."""
    check_storable(payload, f"payload of {ascii(item_id)}")


# --------------------------------------------------------------------- storage and search
def _encode(unit: np.ndarray, storage: str) -> tuple[np.ndarray, np.ndarray]:
    if storage != "int8":
        return unit.astype(code_dtype(storage)), np.zeros(len(unit), dtype=np.float32)
    # Symmetric per-vector quantisation: the largest component maps to +-127. The scale is then
    # chosen so that codes * scale has unit norm, which keeps scores true cosines (<= 1).
    peak = np.abs(unit).max(axis=1, keepdims=True)
    codes = np.clip(np.rint(unit * (127.0 / peak)), -127, 127).astype(np.int8)
    scales = 1.0 / np.linalg.norm(codes.astype(np.float32), axis=1)
    return codes, scales.astype(np.float32)


def _decode(codes: np.ndarray, scales: np.ndarray, storage: str, copy: bool = True) -> np.ndarray:
    """float32 vectors; ``copy=False`` may return a view of float32 codes (never written to)."""
    vectors = codes.astype(np.float32, copy=copy or storage == "int8")
    if storage == "int8":
        vectors *= scales[:, None]
    return vectors


def _search_numpy(
    codes: np.ndarray, scales: np.ndarray, storage: str, unit: np.ndarray, k: int, offset: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of ``unit`` against ``codes`` (row numbers start at ``offset``)."""
    block = max(k, BLOCK_ELEMENTS // max(len(unit), 1))
    best_scores: np.ndarray | None = None
    best_rows: np.ndarray | None = None
    for start in range(0, len(codes), block):
        stop = min(start + block, len(codes))
        scores = unit @ _decode(codes[start:stop], scales[start:stop], storage, copy=False).T
        rows = np.broadcast_to(np.arange(offset + start, offset + stop), scores.shape)
        if best_scores is not None:  # merge with the best of the earlier blocks
            scores = np.concatenate([best_scores, scores], axis=1)
            rows = np.concatenate([best_rows, rows], axis=1)
        best_scores, best_rows = _top_k(scores, rows, k)
    assert best_scores is not None and best_rows is not None  # codes is never empty here
    return best_scores, best_rows


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


def _savez(handle: Any, arrays: dict[str, np.ndarray]) -> None:
    np.savez(handle, **arrays)  # type: ignore[arg-type]
