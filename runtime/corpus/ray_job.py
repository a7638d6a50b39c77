"""The driver of ``lame-search embed-corpus --engine ray``: plan, embed on Ray Data, write.

The pipeline, per run::

    from_items(unfinished shard specs)                       one row per shard
      .map_batches(load_shards, num_cpus=0)                  Ray tasks: the shard's rows
      .map_batches(CorpusEmbedder, compute=ActorPoolStrategy(size=N), num_gpus=G,
                   batch_size=B)                             one model per actor
      .iter_batches()                                        back on the driver

The driver gathers each shard's rows (keyed by position, so a block Ray retries after a lost
worker cannot add a row twice), and when a shard is complete writes its Parquet file (then
upserts it into Qdrant, when asked). Ray schedules and retries; the driver only keeps the
books, so a killed driver loses at most the shards it had not written yet.

Where the cluster comes from: an already initialised Ray (a test's, a notebook's), else
``address`` or ``$RAY_ADDRESS`` (a cluster started with ``ray start --head``), else a local
cluster on this machine, shut down at the end.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from lame_runtime.corpus.shards import ERRORS, MANIFEST, Output, read_shard_file, shard_table
from lame_runtime.corpus.sources import Plan, Shard, parquet_metadata, plan_source, read_shard
from lame_runtime.corpus.udf import ROLES, CorpusEmbedder, load_shards, none_if_missing
from lame_runtime.errors import BackendError, InputError
from lame_runtime.persist import sha256, writer_lock

ENGINES = ("ray",)


@dataclass
class CorpusOptions:
    concurrency: int = 1  # model actors
    num_gpus: float = 0  # per actor
    num_cpus: float = 1  # per actor (also its ONNX Runtime threads, unless threads is set)
    batch_size: int = 32  # rows per model call
    shard_size: int = 1000  # items per output file: the unit of resume
    role: str = "document"
    dimensions: int | None = None
    precision: str = "fp32"
    backend: str = "auto"
    instruction: str | None = None
    task: str | None = None
    pattern: str = "*"  # for a folder of images
    threads: int | None = None
    qdrant: str | None = None
    collection: str = "lame"
    force: bool = False
    address: str | None = None

    def check(self) -> None:
        for name in ("concurrency", "batch_size", "shard_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value!r}")
        for name in ("num_gpus", "num_cpus"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise InputError(f"{name} must be a number >= 0, got {value!r}")
        if self.role not in ROLES:
            raise InputError(f"role must be one of {ROLES}, got {self.role!r}")


def embed_corpus(
    model: str | Path,
    source: str | Path,
    out: str | Path,
    options: CorpusOptions | None = None,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
) -> dict[str, Any]:
    """Embed every item of ``source`` into Parquet shards under ``out``; returns the summary.

    Rerunning the same command resumes: finished shards are skipped (not recomputed), the
    rest are embedded; the result is the same set of vectors, each id once."""
    from lame_runtime.artifact.contract import Artifact

    options = options or CorpusOptions()
    options.check()
    _ray()  # a missing extra fails here, before --out is touched
    artifact = Artifact.open(model)
    size = artifact.dim if options.dimensions is None else options.dimensions
    if size not in artifact.dimensions:
        raise InputError(
            f"dimensions={size} is not served by this model: choose one of {list(artifact.dimensions)}"
        )
    if options.precision not in artifact.precisions:
        raise InputError(f"the artifact has no {options.precision} model (it has {artifact.precisions})")
    plan = plan_source(source, options.shard_size, options.pattern)
    job: dict[str, Any] = {
        "format": 1,
        "model": sha256(artifact.path / "lame_artifact.json"),
        "precision": options.precision,
        "dimensions": size,
        "role": options.role,
        "instruction": options.instruction,
        "task": options.task,
        "source": plan.describe(),
        "shard_size": options.shard_size,
        "shards": len(plan.shards),
    }
    output = Output(out)
    with writer_lock(output.path / MANIFEST):
        output.prepare(job, options.force)
        done = output.finished(len(plan.shards))
        pending = [s for s in plan.shards if s.number not in done]
        skipped = sum(s.rows for s in plan.shards if s.number in done)
        log(
            f"embed-corpus: {plan.total} items in {len(plan.shards)} shards; {len(done)} finished, {len(pending)} to do"
        )
        store = _open_store(options, size, artifact.dimensions)
        try:
            start = time.perf_counter()
            target = f"{options.collection}@{options.qdrant}"
            books = _Books(output, plan, job["model"], store, target, log)
            if pending:
                _run_ray(str(artifact.path), pending, options, books)
            if store is not None:  # shards finished by an earlier run that had no --qdrant
                for number in sorted(done):
                    books.upsert_file(number)
            seconds = time.perf_counter() - start
            errors = output.errors(len(plan.shards))
            summary = {
                "out": str(output.path.resolve()),
                "source": plan.path,
                "total": plan.total,
                "shards": len(plan.shards),
                "embedded": books.embedded,
                "skipped": skipped,
                "failed": len(errors),
                "failed_this_run": books.failed,
                "seconds": round(seconds, 3),
                "items_per_s": round(books.embedded / seconds, 2) if seconds > 0 else None,
                "dimensions": size,
                "errors": str(output.path / ERRORS) if errors else None,
                "qdrant": {"location": options.qdrant, "collection": options.collection, "count": len(store)}
                if store is not None
                else None,
            }
            output.finish(summary, errors)
        finally:
            if store is not None:
                store.close()
    return summary


def _open_store(options: CorpusOptions, size: int, sizes: tuple[int, ...]) -> Any:
    if options.qdrant is None:
        return None
    from lame_runtime.retrieval.qdrant_store import QdrantStore

    return QdrantStore(options.qdrant, options.collection, dim=size, sizes=sizes)


class _Books:
    """The driver's ledger: rows per unfinished shard until it is complete, then written."""

    def __init__(
        self, output: Output, plan: Plan, model: str, store: Any, target: str, log: Callable[[str], None]
    ):
        # target: "collection@location", what the upsert markers are kept for
        self.output, self.model, self.store, self.target, self.log = output, model, store, target, log
        self.shards: dict[int, Shard] = {s.number: s for s in plan.shards}
        self.rows: dict[int, dict[int, tuple[Any, np.ndarray, Any]]] = {}
        self.embedded = self.failed = self.written = 0

    def add(self, batch: dict[str, np.ndarray]) -> None:
        touched = set()
        for shard, position, item_id, vector, error in zip(
            batch["shard"], batch["position"], batch["id"], batch["vector"], batch["error"]
        ):
            # Ray hands a missing string back as None or NaN, depending on the block format
            self.rows.setdefault(int(shard), {})[int(position)] = (
                none_if_missing(item_id),
                vector,
                none_if_missing(error),
            )
            touched.add(int(shard))
        for number in sorted(touched):
            if len(self.rows[number]) == self.shards[number].rows:
                self._finish(number, self.rows.pop(number))

    def _finish(self, number: int, rows: dict[int, tuple[Any, np.ndarray, Any]]) -> None:
        spec = self.shards[number].spec
        items = read_shard(spec, images=False)  # ids, metadata and image paths, in order
        ids, vectors, metadata, errors, keep = [], [], [], [], []
        for n, item in enumerate(items):
            item_id, vector, error = rows[item["position"]]
            if error is None:
                ids.append(str(item_id))
                vectors.append(vector)
                metadata.append(item["metadata"])
                keep.append(n)
            else:
                image = item["image"] if isinstance(item["image"], str) else None
                errors.append(
                    {
                        "shard": number,
                        "position": item["position"],
                        "id": item_id,
                        "image": image,
                        "error": str(error),
                    }
                )
        size = int(np.asarray(next(iter(rows.values()))[1]).shape[-1])
        matrix = np.stack(vectors).astype(np.float32) if vectors else np.zeros((0, size), np.float32)
        typed = parquet_metadata(spec)
        table = shard_table(ids, matrix, metadata if typed is None else typed.take(keep), self.model)
        self.output.write_shard(number, table, errors)
        self.embedded += len(ids)
        self.failed += len(errors)
        self.written += 1
        if self.store is not None:
            self.upsert_file(number)
        self.log(f"embed-corpus: shard {number} written ({len(ids)} vectors, {len(errors)} failed)")

    def upsert_file(self, number: int) -> None:
        """Upsert one written shard (point ids derive from item ids: idempotent)."""
        from lame_runtime.corpus.shards import shard_file

        if self.output.marker(self.target, number).is_file():
            return
        ids, vectors, payloads = read_shard_file(shard_file(self.output.path, number))
        if ids:
            self.store.add(vectors, ids, payloads)
        self.output.mark_upserted(self.target, number)


def _ray() -> Any:
    try:
        import pyarrow  # noqa: F401  (the shards)
        import ray
        import ray.data
    except ImportError as err:
        raise BackendError(
            f"--engine ray needs Ray Data and pyarrow (pip install 'lame-embed[ray]'): {err}"
        ) from err
    return ray


def connect(ray: Any, address: str | None, num_cpus: int | None = None) -> bool:
    """Join a running Ray or start a local one; True when this call started it."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    try:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as err:
        where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
        raise BackendError(f"cannot start or reach {where}: {' '.join(str(err).split())}") from err
    return True


def _run_ray(model: str, pending: list[Shard], options: CorpusOptions, books: _Books) -> None:
    ray = _ray()
    started = connect(ray, options.address)
    try:
        specs = [{"shard": s.number, "spec": json.dumps(s.spec)} for s in pending]
        ds = ray.data.from_items(specs, override_num_blocks=len(specs))
        # Reading a shard's rows is light next to the model: no CPU reserved, so it never
        # waits for a core the actors hold; a pool as large as the actors' keeps them fed
        # without starting a process per shard.
        loaders = ray.data.TaskPoolStrategy(size=max(2, options.concurrency))
        ds = ds.map_batches(load_shards, batch_size=1, num_cpus=0, compute=loaders)
        kwargs = {
            "model": model,
            "precision": options.precision,
            "backend": options.backend,
            "role": options.role,
            "dimensions": options.dimensions,
            "batch_size": options.batch_size,
            "instruction": options.instruction,
            "task": options.task,
            "threads": options.threads or max(1, int(options.num_cpus)),
        }
        ds = ds.map_batches(
            CorpusEmbedder,
            fn_constructor_kwargs=kwargs,
            compute=ray.data.ActorPoolStrategy(size=options.concurrency),
            batch_size=options.batch_size,
            num_cpus=options.num_cpus,
            num_gpus=options.num_gpus or None,
            batch_format="numpy",
        )
        for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
            books.add(batch)
        unfinished = sorted(books.rows)
        if unfinished:
            raise BackendError(f"Ray returned incomplete shards {unfinished[:5]}: rerun to finish them")
    finally:
        if started:
            ray.shutdown()
