"""Pipelined, streaming preprocessing: decode images in a thread pool while the model runs.

``Embedder.encode`` used to decode and resize every image on the calling thread, then run the
model, then decode the next batch: on the ``small`` model at batch 32 that reached 0.33x the
raw session throughput. Here each image of the next ``prefetch`` batches is a task in a thread
pool (Pillow's decode/resize and NumPy release the GIL), so decoding overlaps inference of the
current batch. Results are identical to the serial path: the same validated functions
(``lame_runtime.inputs.images``) produce each row, only the scheduling differs.

JPEG draft mode: a large JPEG can be decoded at 1/2, 1/4 or 1/8 scale by the DCT itself, far
cheaper than a full decode. ``draft_factor=F`` asks for the smallest such scale that still
leaves at least ``F`` x the model's resolution on both axes, so the final bicubic resize still
downsamples by >= F. With F = 2 (default) the preprocessed pixels stay within the tolerance
``tests/runtime/test_corpus_pipeline.py`` states (measured on synthetic 2-12 MP photos: mean
|diff| <= 0.31 and max <= 3 grey levels of 255 before normalisation; tested: mean <= 0.5,
max <= 4) at 2.3-2.7x less decode time; ``F = 0``
turns draft mode off (bit-exact with the serial path).

``encode_iter`` streams ``(ids, vectors)`` batches from any iterable of items with at most
``prefetch + 1`` batches of inputs in memory.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
from PIL import Image

from lame_runtime.errors import InputError, InputTypeError, MissingFileError
from lame_runtime.inputs.images import (
    _RESAMPLE,
    ImageConfig,
    _check_pixels,
    default_max_pixels,
    describe_image,
    load_image,
)
from lame_runtime.inputs.preprocess import Preprocessor, align_inputs, format_query

ITEM_ERRORS = (InputError, InputTypeError, MissingFileError)
JPEG_SUFFIXES = (".jpg", ".jpeg")


def default_workers() -> int:
    """Decode threads: one per core the process may use (at least 1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores)


@dataclass
class PipelineOptions:
    workers: int | None = None  # decode threads (None: one per available core)
    prefetch: int = 2  # batches decoded ahead of the one being inferred
    draft_factor: int = 2  # JPEG draft: keep >= this x the model resolution (0: off)

    def __post_init__(self) -> None:
        if self.workers is not None and (not isinstance(self.workers, int) or self.workers < 1):
            raise InputError(f"workers must be a positive integer, got {self.workers!r}")
        if not isinstance(self.prefetch, int) or self.prefetch < 1:
            raise InputError(f"prefetch must be a positive integer, got {self.prefetch!r}")
        if not isinstance(self.draft_factor, int) or self.draft_factor < 0:
            raise InputError(f"draft_factor must be an integer >= 0, got {self.draft_factor!r}")


def open_image(image: Any, cfg: ImageConfig, draft_factor: int, max_pixels: int | None = None) -> Image.Image:
    """``load_image`` (validated RGB), with JPEG files decoded in draft mode when large.

    Any problem in the draft path falls back to ``load_image(image)``, which raises the one
    clear error it always raises for a bad file. ``max_pixels`` applies to the file's own
    size (its header), before the draft scale-down.
    """
    limit = max_pixels or default_max_pixels(cfg)
    if draft_factor and isinstance(image, (str, Path)) and str(image).lower().endswith(JPEG_SUFFIXES):
        want = (cfg.width * draft_factor, cfg.height * draft_factor)
        try:
            with Image.open(image) as img:
                _check_pixels(img.size, limit)
                if img.format == "JPEG" and img.width >= 2 * want[0] and img.height >= 2 * want[1]:
                    img.draft("RGB", want)
                    img.load()
                    return load_image(img, limit)
        except ITEM_ERRORS:
            raise
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            pass
    return load_image(image, limit)


def decoded_pixels(
    image: Any, cfg: ImageConfig, index: int, draft_factor: int, max_pixels: int | None = None
) -> np.ndarray:
    """One image -> uint8 [height, width, 3] at the model resolution (the pool's task: Pillow
    releases the GIL while it decodes and resizes). Errors name ``images[index] (path)``."""
    try:
        img = open_image(image, cfg, draft_factor, max_pixels)
        if img.size != (cfg.width, cfg.height):  # exactly image_to_array's resize
            img = img.resize((cfg.width, cfg.height), _RESAMPLE[cfg.resample])
        return np.asarray(img, dtype=np.uint8)
    except ITEM_ERRORS as err:
        raise type(err)(f"{describe_image(index, image)}: {err}") from err


def batch_patches(pixels: np.ndarray, cfg: ImageConfig) -> np.ndarray:
    """uint8 [B, H, W, 3] -> pixel_values [B, num_patches, patch_dim], bit-identical to
    ``patchify(image_to_array(img))`` per image (the same float32 operations, elementwise),
    but as a few whole-batch NumPy calls instead of a dozen small ones per image."""
    array = pixels.astype(np.float32) / 255.0
    mean = np.asarray(cfg.mean, dtype=np.float32)
    std = np.asarray(cfg.std, dtype=np.float32)
    chw = ((array - mean) / std).transpose(0, 3, 1, 2)
    b, c, h, w = chw.shape
    p, m, t = cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size
    gh, gw = h // p, w // p
    x = chw.reshape(b, c, gh // m, m, p, gw // m, m, p).transpose(0, 2, 5, 3, 6, 1, 4, 7)
    x = np.broadcast_to(x[:, :, :, :, :, :, None], (*x.shape[:6], t, p, p))
    return np.ascontiguousarray(x.reshape(b, gh * gw, c * t * p * p), dtype=np.float32)


def image_patches(
    image: Any, cfg: ImageConfig, index: int, draft_factor: int, max_pixels: int | None = None
) -> np.ndarray:
    """One image -> [num_patches, patch_dim] (``decoded_pixels`` + ``batch_patches``)."""
    patches = batch_patches(decoded_pixels(image, cfg, index, draft_factor, max_pixels)[None], cfg)
    first: np.ndarray = patches[0]
    return first


@dataclass
class Batch:
    """One batch of rows, its images decoding (or decoded) in the pool."""

    start: int  # position of row 0 in the caller's stream
    ids: list[Any]
    texts: list[str | None]
    images: list[Any]
    patches: list[Future[np.ndarray] | None]  # per row: None (text-only) or a Future of the patches


@dataclass
class Prepared:
    """A batch ready for the model. ``feed`` covers ``ids`` (the good rows, in order); with
    ``skip_bad`` the rows whose image failed are in ``errors`` as (position, id, image, err)."""

    start: int
    ids: list[Any]
    feed: dict[str, np.ndarray] | None
    errors: list[tuple[int, Any, Any, Exception]]


class FeedPipeline:
    """Builds model feeds from batches of rows, decoding images ``prefetch`` batches ahead.

    Safe to share between threads: the pool is thread-safe and each call keeps its own queue.
    """

    def __init__(self, preprocessor: Preprocessor, options: PipelineOptions | None = None):
        self.preprocessor = preprocessor
        self.options = options or PipelineOptions()
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    @property
    def workers(self) -> int:
        return self.options.workers or default_workers()

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="lame-decode")
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _submit(self, start: int, ids: list[Any], texts: list[str | None], images: list[Any]) -> Batch:
        cfg, draft, pool = self.preprocessor.image, self.options.draft_factor, self._executor()
        limit = self.preprocessor.max_pixels
        patches: list[Future[np.ndarray] | None] = [
            None if image is None else pool.submit(decoded_pixels, image, cfg, start + row, draft, limit)
            for row, image in enumerate(images)
        ]
        return Batch(start, ids, texts, images, patches)

    def _finish(self, batch: Batch, skip_bad: bool) -> Prepared:
        cfg = self.preprocessor.image
        keep: list[int] = []
        errors: list[tuple[int, Any, Any, Exception]] = []
        rows: list[np.ndarray | None] = []
        for row, future in enumerate(batch.patches):
            if future is None:
                keep.append(row)
                rows.append(None)
                continue
            try:
                rows.append(future.result())
                keep.append(row)
            except ITEM_ERRORS as err:
                if not skip_bad:
                    self._drain(batch)
                    raise
                errors.append((batch.start + row, batch.ids[row], batch.images[row], err))
        if not keep:
            return Prepared(batch.start, [], None, errors)
        texts = [batch.texts[r] for r in keep]
        has_image = [batch.images[r] is not None for r in keep]
        ids, mask = self.preprocessor.text.encode_rows(texts, has_image, cfg.num_tokens)
        pixels = np.zeros((len(keep), cfg.num_patches, cfg.patch_dim), dtype=np.float32)
        with_image = [i for i, r in enumerate(rows) if r is not None]
        if with_image:
            pixels[with_image] = batch_patches(np.stack([r for r in rows if r is not None]), cfg)
        feed = {
            "input_ids": ids,
            "attention_mask": mask,
            "pixel_values": pixels,
            "image_mask": np.asarray(has_image, dtype=np.int64),
        }
        return Prepared(batch.start, [batch.ids[r] for r in keep], feed, errors)

    @staticmethod
    def _drain(batch: Batch) -> None:
        for future in batch.patches:
            if future is not None:
                future.cancel()

    def prepared(
        self,
        rows: Iterable[tuple[Any, str | None, Any]],
        batch_size: int,
        skip_bad: bool = False,
        start: int = 0,
    ) -> Iterator[Prepared]:
        """(id, text, image) rows -> ``Prepared`` batches of ``batch_size`` in order.

        At most ``prefetch + 1`` batches are held: while the caller runs the model on one,
        the images of the next ``prefetch`` decode in the pool. ``start``: the stream position
        of the first row (error messages and skip reports count from it).
        """
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        iterator = iter(rows)
        queue: deque[Batch] = deque()
        position = start

        def refill() -> None:
            nonlocal position
            while len(queue) < self.options.prefetch:
                chunk = list(islice(iterator, batch_size))
                if not chunk:
                    return
                ids = [row[0] for row in chunk]
                texts, images = align_inputs([row[1] for row in chunk], [row[2] for row in chunk], position)
                queue.append(self._submit(position, ids, texts, images))
                position += len(chunk)

        try:
            refill()
            while queue:
                batch = queue.popleft()
                refill()  # the next batches decode while the caller infers this one
                yield self._finish(batch, skip_bad)
        finally:
            for batch in queue:
                self._drain(batch)


def encode_iter(
    embedder: Any, items: Iterable[Any], batch_size: int = 32, instruction: str | None = None
) -> Iterator[tuple[list[Any], np.ndarray]]:
    """Stream ``(ids, raw model outputs [n, dim])`` batches, in input order, with bounded
    memory (``Embedder.encode_iter`` normalises them).

    ``items``: any iterable of ``(id, text, image)`` triples (text or image may be None), or
    of bare items: a string is a text, anything else an image (path, PIL image or array); their
    ids are their positions. ``instruction`` is prefixed to each text as
    ``encode_queries``/``encode_documents`` do.
    """
    rows = (_as_row(position, item, instruction) for position, item in enumerate(items))
    for prepared in embedder.pipeline.prepared(rows, batch_size):
        yield prepared.ids, embedder.infer(prepared.feed)


def _as_row(position: int, item: Any, instruction: str | None) -> tuple[Any, Any, Any]:
    """An item -> (id, text with its instruction, image). A bare string is a text; a bare
    Path, array or PIL image is an image (use a triple for a path given as a string)."""
    if isinstance(item, tuple) and len(item) == 3:
        item_id, text, image = item
    elif isinstance(item, str):
        item_id, text, image = position, item, None
    else:
        item_id, text, image = position, None, item
    if text is not None and not isinstance(text, str):
        raise InputTypeError(f"items[{position}]: text must be a string or None, got {type(text).__name__}")
    if text is None and image is None:
        raise InputError(f"items[{position}] has neither text nor image")
    return item_id, format_query(text, instruction), image


def encode_pipelined(
    embedder: Any, texts: Sequence[str | None], images: Sequence[Any], batch_size: int
) -> list[np.ndarray]:
    """Raw model outputs per batch for aligned ``texts``/``images`` (``Embedder.encode``)."""
    rows = zip(range(len(texts)), texts, images)
    return [embedder.infer(p.feed) for p in embedder.pipeline.prepared(rows, batch_size)]
