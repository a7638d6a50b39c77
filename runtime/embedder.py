"""``Embedder``: texts/images in, unit-norm float32 embeddings out. No torch, no transformers."""
from __future__ import annotations

import threading
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lame_runtime.artifact import PRECISIONS, Artifact
from lame_runtime.backends import OnnxRuntimeBackend, check_feed, tensorrt_backend
from lame_runtime.preprocess import Preprocessor, align_inputs, format_query

BACKENDS = ("auto", "onnxruntime", "tensorrt")


class Embedder:
    """Serve an export artifact directory.

    ``encode`` has the same signature and meaning as ``lame.load(ckpt).encode``; the same
    preprocessing code runs in both, so embeddings match (parity is checked at export).
    """

    def __init__(self, path: str | Path, backend: str = "auto", precision: str = "auto",
                 providers: Sequence[str] | None = None, threads: int | None = None,
                 lazy: bool = False, spin: bool = True):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.artifact = Artifact.open(path)
        self.precision = self._pick_precision(precision)
        self.backend_name = "onnxruntime" if backend == "auto" else backend
        self.preprocessor = Preprocessor.from_dir(self.artifact.path)
        self._providers, self._threads, self._spin = providers, threads, spin
        self._backend = None
        self._lock = threading.Lock()  # guards lazy backend creation across threads
        if not lazy:
            self._load_backend()

    def _pick_precision(self, precision: str) -> str:
        if precision == "auto":
            return "fp32"  # the reference precision; fp16/int8 are opt-in
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be 'auto' or one of {PRECISIONS}, "
                             f"got {precision!r}")
        self.artifact.file_for(precision, verify=False)  # clear error if absent
        return precision

    def _load_backend(self):
        backend = self._backend
        if backend is not None:  # fast path: no lock once loaded
            return backend
        with self._lock:  # one session per Embedder even when many threads arrive at once
            if self._backend is None:
                model = self.artifact.file_for(self.precision)
                if self.backend_name == "tensorrt":
                    self._backend = tensorrt_backend(model)
                else:
                    self._backend = OnnxRuntimeBackend(model, self.artifact.output_name,
                                                       self._providers, self._threads,
                                                       self._spin)
            return self._backend

    @property
    def dim(self) -> int:
        return self.artifact.dim

    def __repr__(self) -> str:
        backend = self._backend.name if self._backend else f"{self.backend_name} (not loaded)"
        return (f"Embedder(path='{self.artifact.path}', dim={self.dim}, "
                f"precision={self.precision}, backend={backend})")

    def infer(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        check_feed(feed, self.artifact.inputs)
        return self._load_backend().infer(feed)[self.artifact.output_name]

    def encode(self, texts: Sequence[str | None] | None = None,
               images: Sequence[Any] | None = None, batch_size: int = 32) -> np.ndarray:
        """-> unit-norm float32 [N, dim]. Safe to call from several threads at once."""
        if (not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool)
                or batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        texts, images = align_inputs(texts, images)
        chunks = [self.infer(self.preprocessor(texts[i:i + batch_size], images[i:i + batch_size]))
                  for i in range(0, len(texts), int(batch_size))]
        return _unit_rows(np.concatenate(chunks).astype(np.float32, copy=False))

    def encode_queries(self, texts: Sequence[str | None] | None = None,
                       images: Sequence[Any] | None = None, batch_size: int = 32,
                       instruction: str | None = None) -> np.ndarray:
        """Queries get the artifact's query instruction, exactly as in training.

        ``instruction`` overrides it (e.g. a per-task one); ``""`` means no instruction.
        """
        if instruction is None:
            instruction = self.artifact.instruction("query")
        return self._encode_with(instruction, texts, images, batch_size)

    def encode_documents(self, texts: Sequence[str | None] | None = None,
                         images: Sequence[Any] | None = None, batch_size: int = 32,
                         instruction: str | None = None) -> np.ndarray:
        if instruction is None:
            instruction = self.artifact.instruction("document")
        return self._encode_with(instruction, texts, images, batch_size)

    def _encode_with(self, instruction: str | None, texts, images, batch_size: int) -> np.ndarray:
        if instruction is not None and not isinstance(instruction, str):
            raise TypeError(f"instruction must be a string, got {type(instruction).__name__}")
        texts, images = align_inputs(texts, images)
        return self.encode([format_query(t, instruction) for t in texts], images, batch_size)


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Renormalise in float32: an fp16 graph's output norm drifts by ~1e-3 from 1."""
    if not np.isfinite(vectors).all():
        warnings.warn("the model produced NaN or infinite embeddings; check the precision "
                      "(fp16 can overflow) and the inputs", RuntimeWarning, stacklevel=3)
        return vectors
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0).astype(np.float32)
