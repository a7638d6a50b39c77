"""The Ray Data callables: ``CorpusEmbedder`` (one ``Embedder`` per actor) and ``load_shards``.

Neither imports ray: Ray instantiates ``CorpusEmbedder`` once per actor of the pool that
``Dataset.map_batches(CorpusEmbedder, compute=ActorPoolStrategy(size=N), num_gpus=G)``
starts, so the model loads once per actor, and calls it on batches of rows. Usable in any Ray
Data pipeline of your own::

    ds = ray.data.read_parquet("s3://bucket/catalogue/")       # columns id, text, image
    ds = ds.map_batches(CorpusEmbedder, fn_constructor_kwargs={"model": "/models/lame"},
                        compute=ray.data.ActorPoolStrategy(size=4), num_gpus=1, batch_size=64)

Input columns: ``text`` (str or None) and/or ``image`` (a path, the encoded bytes, or None;
``image_bytes`` is read too when present). Output: the other input columns unchanged, plus
``vector`` (float32 [n, size], NaN for a failed row) and ``error`` (None, or why the row
failed: an unreadable image, a bad text). A bad row never fails the batch.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any

import numpy as np

from lame_runtime.errors import InputError, InputTypeError, MissingFileError
from lame_runtime.inputs.preprocess import format_query

ROLES = ("document", "query")
ITEM_ERRORS = (InputError, InputTypeError, MissingFileError)
ROW_COLUMNS = ("shard", "position", "id", "text", "image", "image_bytes", "error")


def open_embedder(
    model: str, precision: str, backend: str, device_id: int, gpu: bool, threads: int | None
) -> Any:
    """The one place this package constructs an ``Embedder``."""
    from lame_runtime.embedder import Embedder
    from lame_runtime.options import RuntimeOptions

    # An actor Ray gave no GPU must not take one of the node's GPUs anyway.
    providers = None if gpu else ["CPUExecutionProvider"]
    options = RuntimeOptions(threads=threads or None, providers=providers)
    return Embedder(model, precision=precision, backend=backend, device_id=device_id, options=options)


def assigned_gpu() -> bool:
    """Whether Ray gave this actor a GPU. Ray sets CUDA_VISIBLE_DEVICES to the GPUs it
    assigned, so the actor's GPU is device 0 whichever physical one it is."""
    try:
        import ray

        return ray.is_initialized() and bool(ray.get_gpu_ids())
    except ImportError:
        return False


class CorpusEmbedder:
    """A ``map_batches`` callable class: rows with text/image -> rows with ``vector``."""

    def __init__(
        self,
        model: str,
        precision: str = "fp32",
        backend: str = "auto",
        role: str = "document",
        dimensions: int | None = None,
        batch_size: int = 32,
        instruction: str | None = None,
        task: str | None = None,
        threads: int | None = None,
    ):
        if role not in ROLES:
            raise InputError(f"role must be one of {ROLES}, got {role!r}")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        gpu = assigned_gpu()
        self.embedder = open_embedder(model, precision, backend, 0, gpu, threads)
        self.size = self.embedder.check_dimensions(dimensions)
        self.role, self.batch_size = role, batch_size
        self.instruction, self.task = instruction, task

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        count = len(next(iter(batch.values()))) if batch else 0
        texts = _column(batch, "text", count)
        images = _column(batch, "image", count)
        if "image_bytes" in batch:
            images = [b if b is not None else i for i, b in zip(images, batch["image_bytes"])]
        errors: list[str | None] = list(_column(batch, "error", count))
        vectors = np.full((count, self.size), np.nan, dtype=np.float32)
        rows = []
        for row in range(count):
            if errors[row] is None:
                errors[row], image = _check_row(texts[row], images[row])
                if errors[row] is None:
                    rows.append((row, texts[row], image))
        if rows:
            self._embed(rows, vectors, errors)
        out = {k: v for k, v in batch.items() if k not in ("text", "image", "image_bytes", "error")}
        out["vector"] = vectors
        out["error"] = np.array(errors, dtype=object)
        return out

    def _instructions(self, rows: list[tuple[int, Any, Any]]) -> list[str | None]:
        if self.role == "document":
            instruction = self.instruction
            if instruction is None:
                instruction = self.embedder.artifact.instruction("document")
            return [instruction] * len(rows)
        texts = [r[1] for r in rows]
        images = [r[2] for r in rows]
        return list(self.embedder.query_instructions(texts, images, self.instruction, self.task))

    def _embed(self, rows: list[tuple[int, Any, Any]], vectors: np.ndarray, errors: list[str | None]) -> None:
        """Exactly the path ``lame-search index`` takes (the pipeline's prepared feeds, then
        ``unit_prefix``), so the vectors equal a single-process build's."""
        from lame_runtime.embedder import unit_prefix

        try:
            instructions = self._instructions(rows)
        except ITEM_ERRORS as err:  # e.g. a query modality without a trained instruction
            for row, _, _ in rows:
                errors[row] = str(err)
            return
        feed_rows = [
            (row, format_query(text, ins), image) for (row, text, image), ins in zip(rows, instructions)
        ]
        for prepared in self.embedder.pipeline.prepared(feed_rows, self.batch_size, skip_bad=True):
            for _, row, _, problem in prepared.errors:
                errors[row] = " ".join(str(problem).split())
            if prepared.feed is not None:
                vectors[prepared.ids] = unit_prefix(self.embedder.infer(prepared.feed), self.size)


def _column(batch: dict[str, np.ndarray], name: str, count: int) -> list[Any]:
    if name not in batch:
        return [None] * count
    return [none_if_missing(v) for v in batch[name]]


def none_if_missing(value: Any) -> Any:
    """Ray hands missing strings over as None, and as NaN when a whole column is missing
    (an all-None object column comes back as float32)."""
    if isinstance(value, (float, np.floating)) and np.isnan(value):
        return None
    return value.decode("utf-8") if isinstance(value, np.bytes_) else value


def _check_row(text: Any, image: Any) -> tuple[str | None, Any]:
    """(why the row cannot be embedded or None, the image as the pipeline takes it)."""
    if text is not None and not isinstance(text, str):
        return f"text must be a string, got {type(text).__name__}", None
    if isinstance(image, (bytes, bytearray, memoryview)):
        from PIL import Image, UnidentifiedImageError

        try:
            image = Image.open(io.BytesIO(bytes(image)))  # decoded (and checked) in the pool
        except (UnidentifiedImageError, OSError, ValueError) as err:
            return f"cannot read image bytes: {err}", None
    elif image is not None and not isinstance(image, (str, os.PathLike)):
        return f"image must be a path or bytes, got {type(image).__name__}", None
    if not text and image is None:
        return "the item has neither text nor image", None
    return None, image


# ----------------------------------------------------------------------------- loading
def load_shards(batch: dict[str, np.ndarray]) -> Any:
    """Shard specs (JSON) -> their rows, as an Arrow table with fixed column types (so batches
    from different shards concatenate). Runs as Ray tasks, next to the data."""
    import pyarrow as pa

    from lame_runtime.corpus.sources import read_shard

    columns: dict[str, list[Any]] = {name: [] for name in ROW_COLUMNS}
    for shard, spec in zip(batch["shard"], batch["spec"]):
        for row in read_shard(json.loads(spec)):
            image = row["image"]
            columns["shard"].append(int(shard))
            columns["position"].append(row["position"])
            columns["id"].append(row["id"])
            columns["text"].append(row["text"])
            columns["image"].append(image if isinstance(image, str) else None)
            columns["image_bytes"].append(image if isinstance(image, bytes) else None)
            columns["error"].append(row["error"])
    types = {
        "shard": pa.int64(),
        "position": pa.int64(),
        "image_bytes": pa.binary(),
    }
    return pa.table(
        {name: pa.array(values, type=types.get(name, pa.string())) for name, values in columns.items()}
    )
