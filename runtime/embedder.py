"""``Embedder``: texts/images in, unit-norm float32 embeddings out. No torch, no transformers."""

from __future__ import annotations

import threading
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from lame_runtime.artifact.contract import PRECISIONS, Artifact
from lame_runtime.engines.backends import (
    OnnxRuntimeBackend,
    check_feed,
    choose_backend,
    load_tensorrt,
    provider_defaults,
)
from lame_runtime.engines.tensorrt.backend import running_device
from lame_runtime.errors import InputError, InputTypeError
from lame_runtime.inputs.images import check_max_pixels, preprocess_images
from lame_runtime.inputs.instructions import modality
from lame_runtime.inputs.instructions import pick as pick_instruction
from lame_runtime.inputs.pipeline import FeedPipeline, PipelineOptions, encode_iter, encode_pipelined
from lame_runtime.inputs.preprocess import Preprocessor, align_inputs, format_query
from lame_runtime.inputs.routing import route

BACKENDS = ("auto", "onnxruntime", "tensorrt")


class Embedder:
    """Serve an export artifact directory.

    ``encode`` has the same signature and meaning as ``lame.load(ckpt).encode``; the same
    preprocessing code runs in both, so embeddings match (parity is checked at export).
    """

    def __init__(
        self,
        path: str | Path,
        backend: str = "auto",
        precision: str = "auto",
        providers: Sequence[Any] | None = None,
        threads: int | None = None,
        lazy: bool = False,
        spin: bool = True,
        verify: bool = True,
        device_id: int = 0,
        strict: bool = False,
        cache_dir: str | Path | None = None,
        tensorrt_ep: bool = False,
        pipeline_options: PipelineOptions | None = None,
        route_text: bool = True,
        max_pixels: int | None = None,
        share_weights: bool = True,
    ):
        # providers: names or (name, options) pairs, as onnxruntime takes them; the TensorRT/CUDA
        # EPs get defaults from the artifact (lame_runtime.engines.providers). strict: a provider that
        # does not start raises BackendError instead of a warning. device_id: the GPU for the
        # CUDA/TensorRT EPs and the TensorRT backend. cache_dir: the TensorRT EP's engine and
        # timing caches (default <artifact>/trt_cache). tensorrt_ep: put the TensorRT EP first.
        # route_text=False: every row through the full graph even if the artifact has a
        # text-only one. pipeline_options: decode threads / prefetch / JPEG draft
        # (lame_runtime.inputs.pipeline). max_pixels: refuse larger input images before decoding
        # (None: lame_runtime.inputs.images.default_max_pixels, from the model's resolution).
        # share_weights: the full and the text graph use one
        # mapped copy of the weights they share on disk (lame_runtime.engines.shared_weights);
        # False: each session loads (and pre-packs) its own.
        # verify=False skips the sha256 checks of the artifact's files (for devices that
        # verify at install time); paths, sizes and the manifest are still checked.
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "tensorrt":
            running_device(device_id)  # TensorRT or a GPU missing: one error, before any hashing
        self.artifact = Artifact.open(path, verify=verify)
        self.backend_name, precision, self._engine = choose_backend(
            self.artifact, backend, precision, device_id
        )
        self.precision = self._pick_precision(precision) if self._engine is None else precision
        self._device_id, self._strict, self._verify = device_id, strict, verify
        self._cache_dir, self._tensorrt_ep = cache_dir, tensorrt_ep
        self.preprocessor = Preprocessor.from_dir(self.artifact.path)
        self.preprocessor.max_pixels = check_max_pixels(max_pixels)
        self._providers, self._threads, self._spin = providers, threads, spin
        self._backend = None
        self._pipeline_options, self._pipeline = pipeline_options, None
        self._route_text, self._text_backend = route_text, None
        self._share_weights, self._shared = share_weights, None
        self._fallback_reported: tuple[str, ...] = ()
        self._lock = threading.Lock()  # guards lazy backend creation across threads
        if not lazy:
            self._load_backend()
            if self.routes_text:
                self._load_text_backend()

    def _pick_precision(self, precision: str) -> str:
        if precision == "auto":
            return "fp32"  # the reference precision; fp16/int8 are opt-in
        if precision not in PRECISIONS:
            raise InputError(f"precision must be 'auto' or one of {PRECISIONS}, got {precision!r}")
        self.artifact.file_for(precision, verify=False)  # clear error if absent
        return precision

    def _load_backend(self):
        backend = self._backend
        if backend is not None:  # fast path: no lock once loaded
            return backend
        with self._lock:  # one session per Embedder even when many threads arrive at once
            if self._backend is None:
                if self._engine is not None:
                    self._backend = load_tensorrt(
                        self.artifact, self._engine, self.artifact.output_name, self._device_id, self._verify
                    )
                else:
                    self._backend = self._onnx_backend(graph="full")
            return self._backend

    def _onnx_backend(self, graph: str) -> OnnxRuntimeBackend:
        """An ONNX Runtime session over one of the artifact's graphs (called under the lock).
        A provider fallback is reported once per Embedder, not once per graph."""
        backend = OnnxRuntimeBackend(
            self.artifact.file_for(self.precision, graph=graph),
            self.artifact.output_name,
            self._providers,
            self._threads,
            self._spin,
            strict=self._strict,
            defaults=provider_defaults(self.artifact, self.precision, self._device_id, self._cache_dir),
            tensorrt_ep=self._tensorrt_ep,
            reported=self._fallback_reported,
            expect=(self.artifact.dim, self.artifact.inputs),
            shared=self._shared_weights(),
        )
        self._fallback_reported = tuple(set(self._fallback_reported) | set(backend.fallback))
        return backend

    def _shared_weights(self):
        """The mappings both graphs of this precision use, when the text graph's weights live
        in the full graph's data file (exports since issue 21) and it is served."""
        if not (self._share_weights and self.routes_text):
            return None
        if self._shared is None:
            from lame_runtime.engines.shared_weights import SharedWeights

            entry = self.artifact.models[self.precision]
            common = set(entry["external_data"]) & set(entry["text"]["external_data"])
            if not common:
                return None
            self._shared = SharedWeights(self.artifact.path, common)
        return self._shared

    @property
    def shares_weights(self) -> bool:
        """Whether the loaded sessions use one in-memory copy of their common weights."""
        return self._shared is not None and self._shared.shared_bytes > 0

    @property
    def dim(self) -> int:
        return self.artifact.dim

    @property
    def dimensions(self) -> tuple[int, ...]:
        """The embedding sizes this artifact serves (``Artifact.dimensions``)."""
        return self.artifact.dimensions

    def check_dimensions(self, dimensions: Any) -> int:
        """``dimensions`` (None: the full size) -> the size to return; ``InputError`` when the
        artifact was not trained to serve it (cutting an ordinary embedding loses quality
        silently, so only trained sizes are offered)."""
        if dimensions is None:
            return self.dim
        if not isinstance(dimensions, (int, np.integer)) or isinstance(dimensions, bool):
            raise InputTypeError(f"dimensions must be an integer, got {type(dimensions).__name__}")
        if int(dimensions) not in self.dimensions:
            hint = (
                "this model serves only its full size (it was not trained with --matryoshka)"
                if len(self.dimensions) == 1
                else f"choose one of {list(self.dimensions)}"
            )
            raise InputError(f"dimensions={int(dimensions)} is not supported: {hint}")
        return int(dimensions)

    def __repr__(self) -> str:
        backend = self._backend.name if self._backend else f"{self.backend_name} (not loaded)"
        return (
            f"Embedder(path='{self.artifact.path}', dim={self.dim}, "
            f"precision={self.precision}, backend={backend})"
        )

    def infer(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        """Raw outputs of a model feed; text-only rows go to the text graph when there is one
        (``lame_runtime.inputs.routing``), in the caller's row order."""
        check_feed(feed, self.artifact.inputs)
        output = self.artifact.output_name
        if not self.routes_text:
            return self._load_backend().infer(feed)[output]
        return route(
            feed,
            lambda rows: self._load_backend().infer(rows)[output],
            lambda rows: self._load_text_backend().infer(rows)[output],
        )

    @property
    def routes_text(self) -> bool:
        """Text-only rows skip the vision tower (the artifact has a text graph for this
        precision, served by ONNX Runtime, and ``route_text`` was not turned off)."""
        return self._route_text and self._engine is None and self.artifact.has_text_graph(self.precision)

    def _load_text_backend(self):
        backend = self._text_backend
        if backend is not None:
            return backend
        with self._lock:
            if self._text_backend is None:
                self._text_backend = self._onnx_backend(graph="text")
            return self._text_backend

    def encode(
        self,
        texts: Sequence[str | None] | None = None,
        images: Sequence[Any] | None = None,
        batch_size: int = 32,
        dimensions: int | None = None,
    ) -> np.ndarray:
        """-> unit-norm float32 [N, dim]. Safe to call from several threads at once.

        ``dimensions`` (one of :attr:`dimensions`): the leading components of each embedding,
        renormalised to unit length -- [N, dimensions] (Matryoshka models).

        ``texts``/``images`` are lists (a single string or path raises ``InputTypeError``);
        an empty batch gives shape [0, dim]. A bad item raises one ``InputError`` naming it
        (``images[7] ('a.png'): cannot read image ...``). A row whose embedding is NaN/Inf
        (e.g. fp16 overflow) is returned as NaN with a ``RuntimeWarning``; the other rows
        are normalised as usual.
        """
        if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        size = self.check_dimensions(dimensions)
        texts, images = align_inputs(texts, images)
        if not texts:
            return np.zeros((0, size), dtype=np.float32)
        step = int(batch_size)
        if len(texts) > step and any(image is not None for image in images):
            # Several batches with images: decode the next ones in the pool while this one runs.
            chunks = encode_pipelined(self, texts, images, step)
        else:
            chunks = [
                self.infer(self.preprocessor(texts[i : i + step], images[i : i + step], i))
                for i in range(0, len(texts), step)
            ]
        return unit_prefix(np.concatenate(chunks), size)

    def encode_iter(
        self,
        items: Iterable[Any],
        batch_size: int = 32,
        instruction: str | None = None,
        dimensions: int | None = None,
    ) -> Iterator[tuple[list, np.ndarray]]:
        """Stream ``(ids, unit vectors)`` batches with bounded memory (``lame_runtime.inputs.pipeline``).

        ``items``: ``(id, text, image)`` triples, or bare texts / images (ids = positions)."""
        size = self.check_dimensions(dimensions)
        for ids, raw in encode_iter(self, items, batch_size, instruction):
            yield ids, unit_prefix(raw, size)

    @property
    def pipeline(self) -> FeedPipeline:
        """The decode thread pool (created on first use; ``pipeline_options`` sizes it)."""
        if self._pipeline is None:
            with self._lock:
                if self._pipeline is None:
                    self._pipeline = FeedPipeline(self.preprocessor, self._pipeline_options)
        return self._pipeline

    def encode_queries(
        self,
        texts: Sequence[str | None] | None = None,
        images: Sequence[Any] | None = None,
        batch_size: int = 32,
        instruction: str | None = None,
        task: str | None = None,
        dimensions: int | None = None,
    ) -> np.ndarray:
        """Queries get the instruction they were trained with.

        ``instruction`` sets it for every row (``""`` means none); ``task`` picks that
        training task's. Otherwise each row gets the instruction of the training directions
        that start at its modality (text -> the text->image one, image -> image->text, ...);
        if those disagree ``InputError`` asks for ``instruction=`` or ``task=``
        (see ``lame_runtime.inputs.instructions``).
        """
        texts, images = align_inputs(texts, images)
        per_row = self.query_instructions(texts, images, instruction, task)
        return self._encode_rows(per_row, texts, images, batch_size, dimensions)

    def query_instructions(
        self,
        texts: Sequence[str | None],
        images: Sequence[Any],
        instruction: str | None = None,
        task: str | None = None,
    ) -> list[str | None]:
        """The instruction ``encode_queries`` applies to each row."""
        if instruction is not None:
            _check_instruction(instruction)
            return [instruction] * len(texts)
        if task is not None and not isinstance(task, str):
            raise InputTypeError(f"task must be a string, got {type(task).__name__}")
        table = self.artifact.instructions
        cache: dict[str, str | None] = {}
        picked = []
        for text, image in zip(texts, images):
            kind = modality(text, image)
            if kind not in cache:
                cache[kind] = pick_instruction(table, kind, task)
            picked.append(cache[kind])
        return picked

    def encode_documents(
        self,
        texts: Sequence[str | None] | None = None,
        images: Sequence[Any] | None = None,
        batch_size: int = 32,
        instruction: str | None = None,
        dimensions: int | None = None,
    ) -> np.ndarray:
        if instruction is None:
            instruction = self.artifact.instruction("document")
        _check_instruction(instruction)
        texts, images = align_inputs(texts, images)
        return self._encode_rows([instruction] * len(texts), texts, images, batch_size, dimensions)

    def _encode_rows(
        self, instructions: list[str | None], texts, images, batch_size: int, dimensions: int | None = None
    ) -> np.ndarray:
        return self.encode(
            [format_query(t, i) for t, i in zip(texts, instructions)], images, batch_size, dimensions
        )

    def encode_tokens(
        self,
        rows: Sequence[Sequence[int]],
        images: Sequence[Any],
        batch_size: int = 32,
        dimensions: int | None = None,
    ) -> np.ndarray:
        """-> unit vectors of rows the caller already tokenised, each the full token row the
        preprocessor builds ([BOS], the visual tokens of its image, its text), with the row's
        image (decoded; None for text-only rows). A service that tokenises each text once to
        count and check it feeds those same tokens here instead of tokenising again."""
        size = self.check_dimensions(dimensions)
        if len(rows) != len(images):
            raise InputError(f"got {len(rows)} token rows for {len(images)} images")
        if not rows:
            return np.zeros((0, size), dtype=np.float32)
        pad, cfg, chunks = self.preprocessor.text.special["pad"], self.preprocessor.image, []
        for start in range(0, len(rows), batch_size):
            part, pictures = rows[start : start + batch_size], list(images[start : start + batch_size])
            length = max(len(row) for row in part)
            ids = np.full((len(part), length), pad, dtype=np.int64)
            mask = np.zeros((len(part), length), dtype=np.int64)
            for i, row in enumerate(part):  # padded on the left, as TextProcessor.encode_rows
                ids[i, length - len(row) :], mask[i, length - len(row) :] = row, 1
            feed = {
                "input_ids": ids,
                "attention_mask": mask,
                "pixel_values": preprocess_images(pictures, cfg, None, start, self.preprocessor.max_pixels),
                "image_mask": np.asarray([p is not None for p in pictures], dtype=np.int64),
            }
            chunks.append(self.infer(feed))
        return unit_prefix(np.concatenate(chunks), size)


def _check_instruction(instruction: Any) -> None:
    if instruction is not None and not isinstance(instruction, str):
        raise InputTypeError(f"instruction must be a string, got {type(instruction).__name__}")


def unit_prefix(vectors: np.ndarray, size: int | None = None) -> np.ndarray:
    """Raw (or unit) embeddings -> their leading ``size`` components (None: all) as float32
    unit vectors: how every Matryoshka size is served (Embedder, indexes, lame-serve)."""
    vectors = vectors.astype(np.float32, copy=False)
    return _unit_rows(vectors if size is None else vectors[:, :size])


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Renormalise in float32 (an fp16 graph's output norm drifts by ~1e-3 from 1).

    Rows with NaN/Inf become all-NaN (with a warning naming them); the others are normalised.
    """
    finite = np.isfinite(vectors).all(axis=1)
    norms = np.linalg.norm(np.where(finite[:, None], vectors, 0.0), axis=1, keepdims=True)
    out = vectors / np.where(norms > 0, norms, 1.0).astype(np.float32)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        warnings.warn(
            f"the model produced NaN or infinite embeddings for rows "
            f"{bad[:10].tolist()}{' ...' if len(bad) > 10 else ''}; they are returned "
            "as NaN (check the precision: fp16 can overflow; and those inputs)",
            RuntimeWarning,
            stacklevel=3,
        )
        out[bad] = np.nan
    return out.astype(np.float32, copy=False)
