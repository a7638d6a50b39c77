"""The output folder of ``embed-corpus``: Parquet shards, errors, job manifest and summary.

::

    OUT/_corpus.json              the job: model hash, precision, dimensions, role, source
                                  fingerprint, shard size and count (a rerun must match it)
    OUT/shard-00000.parquet       id, vector (fixed_size_list<float32>[d]), model, dimensions,
                                  and the source's metadata columns -- one file per shard
    OUT/_errors/shard-00000.jsonl the shard's failed items {"shard", "position", "id", "image", "error"}
    OUT/_errors.jsonl             all of them, rewritten at the end of each run
    OUT/_summary.json             the last run's summary
    OUT/.qdrant/<hash>/00000       a shard upserted into that collection (hash of name and location)

Everything but the shards starts with ``_`` or ``.``, which pyarrow, pandas, Polars and Spark
skip when they read a folder: ``pandas.read_parquet(OUT)`` is the vectors and nothing else.

A shard is finished exactly when its Parquet file exists: its errors file is written first and
the Parquet file is renamed into place (``persist.atomic_write_file``), so a kill leaves either
nothing or a complete shard, and a rerun recomputes only the shards without a file.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np

from lame_runtime.errors import InputError, MissingFileError
from lame_runtime.persist import atomic_write_file, atomic_write_json, atomic_write_text, read_json

MANIFEST, SUMMARY, ERRORS = "_corpus.json", "_summary.json", "_errors.jsonl"
FORMAT = 1
RESERVED = ("id", "vector", "model", "dimensions")
_SHARD = re.compile(r"^shard-(\d{5,})\.parquet$")


def shard_file(out: Path, number: int) -> Path:
    return out / f"shard-{number:05d}.parquet"


def errors_file(out: Path, number: int) -> Path:
    return out / "_errors" / f"shard-{number:05d}.jsonl"


class Output:
    """One job's output folder (the caller holds ``persist.writer_lock`` on it)."""

    def __init__(self, out: str | Path):
        self.path = Path(out)

    def prepare(self, job: dict[str, Any], force: bool = False) -> None:
        """Start or resume ``job`` here. Another job's output is refused unless ``force``,
        which removes only this toolkit's files; a folder of other files is never touched."""
        manifest = self.path / MANIFEST
        if manifest.is_file():
            old = read_json(manifest, InputError, what="corpus manifest")
            if old != job:
                if not force:
                    diff = next(k for k in sorted(set(old) | set(job)) if old.get(k) != job.get(k))
                    raise InputError(
                        f"cannot resume {self.path}: its {diff} was {old.get(diff)!r}, this run's is "
                        f"{job.get(diff)!r} (pass --force to start over, or another --out)"
                    )
                self._clear()
        elif self.path.is_dir() and any(p for p in self.path.iterdir() if not p.name.startswith(".")):
            raise InputError(f"{self.path} is not empty and holds no {MANIFEST}: choose an empty --out")
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(manifest, job)

    def _clear(self) -> None:
        for path in self.path.iterdir():
            if _SHARD.match(path.name) or path.name in (SUMMARY, ERRORS):
                path.unlink()
        for folder in (self.path / "_errors", self.path / ".qdrant"):
            for path in folder.rglob("*") if folder.is_dir() else ():
                if path.is_file():
                    path.unlink()

    def finished(self, count: int) -> set[int]:
        return {n for n in range(count) if shard_file(self.path, n).is_file()}

    def write_shard(self, number: int, table: Any, errors: list[dict[str, Any]]) -> None:
        import pyarrow.parquet as pq

        lines = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in errors)
        errors_file(self.path, number).parent.mkdir(exist_ok=True)
        atomic_write_text(errors_file(self.path, number), lines)  # before the shard: see above
        atomic_write_file(shard_file(self.path, number), lambda handle: pq.write_table(table, handle))

    def marker(self, target: str, number: int) -> Path:
        """``target``: the collection and where it lives; hashed into a folder name, so two
        servers' collections of one name keep separate records."""
        digest = hashlib.sha256(target.encode()).hexdigest()[:16]
        return self.path / ".qdrant" / digest / f"{number:05d}"

    def mark_upserted(self, target: str, number: int) -> None:
        path = self.marker(target, number)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, "")

    def errors(self, count: int) -> list[dict[str, Any]]:
        found = []
        for n in range(count):
            path = errors_file(self.path, n)
            if shard_file(self.path, n).is_file() and path.is_file():
                found += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
        return found

    def finish(self, summary: dict[str, Any], errors: list[dict[str, Any]]) -> None:
        atomic_write_text(
            self.path / ERRORS, "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in errors)
        )
        atomic_write_json(self.path / SUMMARY, summary)


# ----------------------------------------------------------------------------- tables
def shard_table(ids: list[str], vectors: np.ndarray, metadata: Any, model: str) -> Any:
    """The Parquet schema: id, vector as fixed_size_list<float32>[d] (what pandas, Polars,
    DuckDB and LanceDB read as an array column), model, dimensions, then metadata columns
    (``metadata``: one dict per row, or an Arrow table whose types are kept)."""
    import pyarrow as pa

    size = int(vectors.shape[1])
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1), type=pa.float32())
    columns: dict[str, Any] = {
        "id": pa.array(ids, type=pa.string()),
        "vector": pa.FixedSizeListArray.from_arrays(flat, size),
        "model": pa.array([model] * len(ids), type=pa.string()),
        "dimensions": pa.array([size] * len(ids), type=pa.int32()),
    }
    if isinstance(metadata, pa.Table):
        for key in metadata.column_names:
            columns[f"source_{key}" if key in RESERVED else key] = metadata.column(key)
        return pa.table(columns)
    keys: dict[str, None] = {}
    for row in metadata:
        keys.update(dict.fromkeys(row))
    for key in keys:
        name = f"source_{key}" if key in RESERVED else str(key)
        columns[name] = _metadata_column([row.get(key) for row in metadata])
    return pa.table(columns)


def _metadata_column(values: list[Any]) -> Any:
    """Arrow infers the type; values it cannot put in one column (an int here, a string there
    in JSON lines) are stored as their JSON text instead of failing the shard."""
    import pyarrow as pa

    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
        return pa.array([None if v is None else json.dumps(v, default=str) for v in values], type=pa.string())


def read_shard_file(path: Path) -> tuple[list[str], np.ndarray, list[dict[str, Any]]]:
    """-> (ids, float32 vectors [n, d], JSON-able metadata payloads) of one shard."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    vector = table.column("vector").combine_chunks()
    size = vector.type.list_size
    vectors = vector.flatten().to_numpy(zero_copy_only=False).reshape(-1, size).astype(np.float32)
    rest = [n for n in table.column_names if n not in RESERVED]
    payloads = [_jsonable(row) for row in table.select(rest).to_pylist()] if rest else [{}] * len(vectors)
    return table.column("id").to_pylist(), vectors, payloads


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    cleaned: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        cleaned[key] = json.loads(json.dumps(value, default=str)) if value is not None else None
    return cleaned


def shard_files(folder: str | Path) -> tuple[dict[str, Any], list[Path]]:
    """(job manifest, every shard file) of a finished ``embed-corpus`` output."""
    root = Path(folder)
    if not (root / MANIFEST).is_file():
        raise MissingFileError(f"{root} is not an embed-corpus output (no {MANIFEST})")
    job = read_json(root / MANIFEST, InputError, what="corpus manifest")
    missing = [n for n in range(job["shards"]) if not shard_file(root, n).is_file()]
    if missing:
        raise InputError(
            f"{root}: {len(missing)} of {job['shards']} shards are not written yet (first: "
            f"{shard_file(root, missing[0]).name}); rerun embed-corpus to finish the job"
        )
    return job, [shard_file(root, n) for n in range(job["shards"])]


def build_index_from_shards(
    folder: str | Path,
    out: str | Path,
    storage: str = "float32",
    ann: Any = None,
    progress: Callable[[int], None] = lambda n: None,
) -> dict[str, Any]:
    """The exact ``Index`` (or a FAISS ``AnnIndex`` with ``ann``) of every vector in the
    shards, payloads = their metadata; ``lame-search query --index OUT`` searches it."""
    from lame_runtime.retrieval.index import Index

    job, files = shard_files(folder)
    if ann is not None:
        from lame_runtime.retrieval.ann import AnnIndex

        index: Any = AnnIndex(job["dimensions"], ann)
    else:
        index = Index(job["dimensions"], storage=storage)
    for path in files:
        ids, vectors, payloads = read_shard_file(path)
        if ids:
            index.add(vectors, ids, payloads)
        progress(1)
    info = {"corpus": {"source": job["source"], "model": job["model"], "shards": str(Path(folder).resolve())}}
    npz, meta = index.save(out, info=info)
    return {"index": str(out), "count": len(index), "dim": index.dim, "files": [str(npz), str(meta)]}
