"""``Embedder``: texts/images in, unit-norm float32 embeddings out. No torch, no transformers."""

from __future__ import annotations

import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import numpy as np

from lame_runtime.artifact.contract import PRECISIONS, Artifact
from lame_runtime.encoder import legacy_positional
from lame_runtime.engines.backends import (
    Backend,
    OnnxRuntimeBackend,
    check_feed,
    choose_backend,
    load_tensorrt,
    provider_defaults,
)
from lame_runtime.engines.providers import CPU_EP, TENSORRT_EP
from lame_runtime.engines.tensorrt.backend import running_device
from lame_runtime.errors import InputError, InputTypeError
from lame_runtime.inputs.images import check_max_pixels, preprocess_images
from lame_runtime.inputs.instructions import modality
from lame_runtime.inputs.instructions import pick as pick_instruction
from lame_runtime.inputs.native import native_feed
from lame_runtime.inputs.pipeline import FeedPipeline, encode_iter, encode_pipelined
from lame_runtime.inputs.preprocess import Preprocessor, format_query
from lame_runtime.inputs.routing import route
from lame_runtime.options import BACKENDS, RuntimeOptions, merge_legacy

if TYPE_CHECKING:
    from lame_runtime.engines.shared_weights import SharedWeights


class Embedder:
    """Serve an export artifact directory: texts/images in, unit-norm embeddings out.

    ``Embedder(path, precision="auto", backend="auto", device_id=0, options=None)``:

    - ``precision``: ``"auto"`` (fp32 on ONNX Runtime; a recorded TensorRT engine's precision
      under ``backend="auto"``) or one of the artifact's precisions (fp32, fp16, int8, int4).
    - ``backend``: ``"onnxruntime"``; ``"tensorrt"``, a native engine built by
      ``lame-search build-engine``; ``"auto"``, such an engine when one is recorded and runs
      on this GPU, else ONNX Runtime. ONNX Runtime's TensorRT execution provider is a
      provider choice instead: ``RuntimeOptions(providers=[...])``
      (see ``lame_runtime.options``).
    - ``device_id``: the GPU of the CUDA/TensorRT providers and of the TensorRT backend.
    - ``options``: :class:`~lame_runtime.options.RuntimeOptions` (providers, threads, lazy
      loading, hashing, caches, routing, image limits, decode pipeline).

    The encode methods follow :class:`~lame_runtime.encoder.Encoder`, as does the training
    side's ``lame.load(ckpt)``; both run the same preprocessing code, so their embeddings
    match (parity is checked at export). The old keywords (``threads=``, ``providers=``,
    ``tensorrt_ep=``, ...) still work for one release, with a DeprecationWarning.
    """

    def __init__(
        self,
        path: str | Path,
        precision: str = "auto",
        backend: str = "auto",
        device_id: int = 0,
        options: RuntimeOptions | None = None,
        **legacy: Any,
    ) -> None:
        if precision in BACKENDS[1:] and backend in PRECISIONS:
            # The 0.1 order was (path, backend, precision): a positional call still works.
            warnings.warn(
                f"Embedder(path, {precision!r}, {backend!r}) passes backend before precision; "
                f"use keywords: Embedder(path, precision={backend!r}, backend={precision!r})",
                DeprecationWarning,
                stacklevel=2,
            )
            precision, backend = backend, precision
        elif precision in BACKENDS[1:] and backend == "auto":
            warnings.warn(
                f"Embedder(path, {precision!r}) passes the backend positionally, where precision "
                f"now stands; use Embedder(path, backend={precision!r})",
                DeprecationWarning,
                stacklevel=2,
            )
            precision, backend = "auto", precision
        if backend not in BACKENDS:
            raise InputError(f"backend must be one of {BACKENDS}, got {backend!r}")
        options = merge_legacy(options, legacy)
        self.options = options
        max_pixels = check_max_pixels(options.max_pixels)  # every argument checked before any I/O
        if backend == "tensorrt":
            running_device(device_id)  # TensorRT or a GPU missing: one error, before any hashing
        self.artifact = Artifact.open(path, verify=options.verify)
        self.backend_name, precision, self._engine = choose_backend(
            self.artifact, backend, precision, device_id
        )
        self.precision = self._pick_precision(precision) if self._engine is None else precision
        self._device_id = device_id
        self.preprocessor = Preprocessor.from_dir(self.artifact.path)
        self.preprocessor.max_pixels = max_pixels
        self._backend: Backend | None = None
        self._pipeline: FeedPipeline | None = None
        self._text_backend: OnnxRuntimeBackend | None = None
        self._shared: SharedWeights | None = None
        self._fallback_reported: tuple[str, ...] = ()
        self._precision_warned = False
        self._lock = threading.Lock()  # guards lazy backend creation across threads
        if not options.lazy:
            self._load_backend()
            if self.routes_text and not self.uses_routed_graph:
                self._load_text_backend()

    def _pick_precision(self, precision: str) -> str:
        if precision == "auto":
            return "fp32"  # the reference precision; fp16/int8 are opt-in
        if precision not in PRECISIONS:
            raise InputError(f"precision must be 'auto' or one of {PRECISIONS}, got {precision!r}")
        self.artifact.file_for(precision, verify=False)  # clear error if absent
        return precision

    def _load_backend(self) -> Backend:
        backend = self._backend
        if backend is not None:  # fast path: no lock once loaded
            return backend
        with self._lock:  # one session per Embedder even when many threads arrive at once
            if self._backend is None:
                if self._engine is not None:
                    self._backend = load_tensorrt(
                        self.artifact,
                        self._engine,
                        self.artifact.output_name,
                        self._device_id,
                        self.options.verify,
                    )
                else:
                    self._backend = self._onnx_backend(graph="routed" if self.uses_routed_graph else "full")
            return self._backend

    def _onnx_backend(self, graph: str) -> OnnxRuntimeBackend:
        """An ONNX Runtime session over one of the artifact's graphs (called under the lock).
        A provider fallback is reported once per Embedder, not once per graph."""
        options = self.options
        backend = OnnxRuntimeBackend(
            self.artifact.file_for(self.precision, graph=graph),
            self.artifact.output_name,
            options.providers,
            options.threads,
            options.spin,
            strict=options.strict_providers,
            defaults=provider_defaults(self.artifact, self.precision, self._device_id, options.cache_dir),
            reported=self._fallback_reported,
            expect=(self.artifact.dim, self.artifact.inputs),
            shared=None if graph == "routed" else self._shared_weights(),
            session_cache=self._session_cache(graph),
            prepack=self.prepacks,
        )
        self._fallback_reported = tuple(set(self._fallback_reported) | set(backend.fallback))
        self._warn_cpu_precision(backend.providers)
        return backend

    def _session_cache(self, graph: str) -> tuple[Path, dict[str, str]] | None:
        """(folder, the graph's files -> their manifest sha256): what keys a saved session."""
        if self.options.session_cache is None:
            return None
        entry = self.artifact.models[self.precision]
        entry = entry if graph == "full" else entry[graph]
        files = self.artifact.manifest["files"]
        names = [entry["path"], *entry["external_data"]]
        return Path(self.options.session_cache), {name: files[name]["sha256"] for name in names}

    def _warn_cpu_precision(self, active: Sequence[str]) -> None:
        # ONNX Runtime's CPU provider has few fp16 kernels: it casts around them, so the fp16
        # graph runs slower than fp32 there. Said once per Embedder; the graph still runs.
        if self.precision == "fp16" and active and active[0] == CPU_EP and not self._precision_warned:
            self._precision_warned = True
            warnings.warn(
                f"precision fp16 runs on {CPU_EP} here, which computes fp16 slowly; "
                "on a CPU serve int8 or int4 (fp16 is for GPUs)",
                RuntimeWarning,
                stacklevel=5,
            )

    def _shared_weights(self) -> SharedWeights | None:
        """The mappings both graphs of this precision use, when the text graph's weights live
        in the full graph's data file and it is served."""
        if not (self.options.share_weights and self.routes_text):
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
    def prepacks(self) -> bool:
        """Whether ONNX Runtime pre-packs this precision's weights (``RuntimeOptions.prepack``)."""
        if self.options.prepack is not None:
            return self.options.prepack
        return self.precision in ("int8", "int4")

    @property
    def uses_routed_graph(self) -> bool:
        """One session over the artifact's routed graph serves both routes: one copy of the
        weights, pre-packed (``share_weights`` on, text routing on, the artifact has one, and
        the TensorRT EP, which runs subgraphs poorly, was not asked for)."""
        providers = self.options.providers or ()
        names = [p if isinstance(p, str) else p[0] for p in providers]
        return (
            self.options.share_weights
            and self.routes_text
            and self.artifact.has_routed_graph(self.precision)
            and TENSORRT_EP not in names
        )

    @property
    def shares_weights(self) -> bool:
        """Whether text and image rows run over one in-memory copy of their common weights
        (one session over the routed graph, or two over one mapping)."""
        if self.uses_routed_graph:
            return True
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
        if self.uses_routed_graph:
            backend = self._load_backend()
            # The text branch reads input_ids and attention_mask only; an image_mask of zeros
            # selects it, and pixel_values goes in empty (batch 0).
            empty = feed["pixel_values"][:0]

            def text_rows(rows: dict[str, np.ndarray]) -> np.ndarray:
                zeros = np.zeros(len(rows["input_ids"]), dtype=feed["image_mask"].dtype)
                return backend.infer({**rows, "pixel_values": empty, "image_mask": zeros})[output]

            return route(feed, lambda rows: backend.infer(rows)[output], text_rows)
        return route(
            feed,
            lambda rows: self._load_backend().infer(rows)[output],
            lambda rows: self._load_text_backend().infer(rows)[output],
        )

    @property
    def routes_text(self) -> bool:
        """Text-only rows skip the vision tower (the artifact has a text graph for this
        precision, served by ONNX Runtime, and ``route_text`` was not turned off)."""
        return (
            self.options.route_text and self._engine is None and self.artifact.has_text_graph(self.precision)
        )

    def _load_text_backend(self) -> OnnxRuntimeBackend:
        backend = self._text_backend
        if backend is not None:
            return backend
        with self._lock:
            if self._text_backend is None:
                self._text_backend = self._onnx_backend(graph="text")
            return self._text_backend

    @legacy_positional("batch_size", "dimensions")
    def encode(
        self,
        texts: Sequence[str | None] | None = None,
        images: Sequence[Any] | None = None,
        *,
        videos: Sequence[Any] | None = None,
        instruction: str | None = None,
        dimensions: int | None = None,
        batch_size: int = 32,
    ) -> np.ndarray:
        """-> unit-norm float32 [N, dim]. Safe to call from several threads at once.

        ``instruction``: prefixed to every row as in training (None or ``""``: none; see
        ``encode_queries`` for the trained ones). ``dimensions`` (one of :attr:`dimensions`):
        the leading components of each embedding, renormalised to unit length --
        [N, dimensions] (Matryoshka models).

        ``texts``/``images`` are lists (a single string or path raises ``InputTypeError``);
        an empty batch gives shape [0, dim]. A bad item raises one ``InputError`` naming it
        (``images[7] ('a.png'): cannot read image ...``). A row whose embedding is NaN/Inf
        (e.g. fp16 overflow) is returned as NaN with a ``RuntimeWarning``; the other rows
        are normalised as usual.

        A native-resolution artifact (Qwen-VL families) also takes several images per row
        (``images[i]`` a list) and ``videos`` (``videos[i]``: a list of frames, a folder of
        frames or a video file; see ``lame_runtime.inputs.native``).
        """
        if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        size = self.check_dimensions(dimensions)
        _check_instruction(instruction)
        rows, pictures, clips = self.preprocessor.rows(texts, images, videos)
        if self.preprocessor.image.native:
            return self._encode_native(rows, pictures, clips, instruction, size, int(batch_size))
        if instruction:
            rows = [format_query(t, instruction) for t in rows]
        if not rows:
            return np.zeros((0, size), dtype=np.float32)
        step = int(batch_size)
        if len(rows) > step and any(image is not None for image in pictures):
            # Several batches with images: decode the next ones in the pool while this one runs.
            chunks = encode_pipelined(self, rows, pictures, step)
        else:
            chunks = [
                self.infer(self.preprocessor(rows[i : i + step], pictures[i : i + step], i))
                for i in range(0, len(rows), step)
            ]
        return unit_prefix(np.concatenate(chunks), size)

    def _encode_native(
        self,
        rows: list[str | None],
        pictures: list[Any],
        clips: list[Any] | None,
        instruction: str | None,
        size: int,
        step: int,
    ) -> np.ndarray:
        if instruction:
            rows = [format_query(t, instruction) for t in rows]
        if not rows:
            return np.zeros((0, size), dtype=np.float32)
        chunks = [
            self.infer(
                self.preprocessor(
                    rows[i : i + step],
                    pictures[i : i + step],
                    i,
                    None if clips is None else clips[i : i + step],
                )
            )
            for i in range(0, len(rows), step)
        ]
        return unit_prefix(np.concatenate(chunks), size)

    def encode_iter(
        self,
        items: Iterable[Any],
        batch_size: int = 32,
        instruction: str | None = None,
        dimensions: int | None = None,
    ) -> Iterator[tuple[list[Any], np.ndarray]]:
        """Stream ``(ids, unit vectors)`` batches with bounded memory (``lame_runtime.inputs.pipeline``).

        ``items``: ``(id, text, image)`` triples, or bare texts / images (ids = positions)."""
        size = self.check_dimensions(dimensions)
        for ids, raw in encode_iter(self, items, batch_size, instruction):
            yield ids, unit_prefix(raw, size)

    @property
    def pipeline(self) -> FeedPipeline:
        """The decode thread pool (created on first use; ``RuntimeOptions.pipeline`` sizes it)."""
        if self._pipeline is None:
            with self._lock:
                if self._pipeline is None:
                    self._pipeline = FeedPipeline(self.preprocessor, self.options.pipeline)
        return self._pipeline

    @legacy_positional("batch_size", "instruction", "task", "dimensions")
    def encode_queries(
        self,
        texts: Sequence[str | None] | None = None,
        images: Sequence[Any] | None = None,
        *,
        videos: Sequence[Any] | None = None,
        instruction: str | None = None,
        task: str | None = None,
        dimensions: int | None = None,
        batch_size: int = 32,
    ) -> np.ndarray:
        """Queries get the instruction they were trained with.

        ``instruction`` sets it for every row (``""`` means none); ``task`` picks that
        training task's. Otherwise each row gets the instruction of the training directions
        that start at its modality (text -> the text->image one, image -> image->text, ...);
        if those disagree ``InputError`` asks for ``instruction=`` or ``task=``
        (see ``lame_runtime.inputs.instructions``).
        """
        texts, images, videos = self.preprocessor.rows(texts, images, videos)
        # A video row picks its instruction as an image row does.
        shown = images if videos is None else [i if v is None else v for i, v in zip(images, videos)]
        per_row = self.query_instructions(texts, shown, instruction, task)
        return self._encode_rows(per_row, texts, images, batch_size, dimensions, videos)

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

    @legacy_positional("batch_size", "instruction", "dimensions")
    def encode_documents(
        self,
        texts: Sequence[str | None] | None = None,
        images: Sequence[Any] | None = None,
        *,
        videos: Sequence[Any] | None = None,
        instruction: str | None = None,
        dimensions: int | None = None,
        batch_size: int = 32,
    ) -> np.ndarray:
        """Candidates, with the artifact's document instruction unless ``instruction`` is given."""
        if instruction is None:
            instruction = self.artifact.instruction("document")
        _check_instruction(instruction)
        texts, images, videos = self.preprocessor.rows(texts, images, videos)
        return self._encode_rows([instruction] * len(texts), texts, images, batch_size, dimensions, videos)

    def _encode_rows(
        self,
        instructions: list[str | None],
        texts: Sequence[str | None],
        images: Sequence[Any],
        batch_size: int,
        dimensions: int | None = None,
        videos: Sequence[Any] | None = None,
    ) -> np.ndarray:
        return self.encode(
            [format_query(t, i) for t, i in zip(texts, instructions)],
            images,
            videos=videos,
            dimensions=dimensions,
            batch_size=batch_size,
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
        image (decoded; None for text-only rows; at native resolution its list of ``Visual``s,
        one per image or video, in its row's order). A service that tokenises each text once to
        count and check it feeds those same tokens here instead of tokenising again."""
        size = self.check_dimensions(dimensions)
        if len(rows) != len(images):
            raise InputError(f"got {len(rows)} token rows for {len(images)} images")
        if not rows:
            return np.zeros((0, size), dtype=np.float32)
        cfg, chunks = self.preprocessor.image, []
        for start in range(0, len(rows), batch_size):
            part, pictures = rows[start : start + batch_size], list(images[start : start + batch_size])
            ids, mask = self.preprocessor.text.pad_rows(part)
            if cfg.native:  # images[i]: row i's Visual list (lame_runtime.inputs.native), or None
                marks = ids == self.preprocessor.text.special["image"]
                feed = native_feed(ids, mask, marks, [list(p or ()) for p in pictures], cfg)
            else:
                feed = {
                    "input_ids": ids,
                    "attention_mask": mask,
                    "pixel_values": preprocess_images(
                        pictures, cfg, None, start, self.preprocessor.max_pixels
                    ),
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
