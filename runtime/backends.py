"""Inference backends behind one interface: ``infer(feed) -> {output_name: ndarray}``.

The feed is checked against the artifact's input specs *before* it reaches a backend, so a
wrong dtype or rank is reported by name instead of failing deep inside ONNX Runtime.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from lame_runtime.artifact import TensorSpec


class Backend(Protocol):
    name: str

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def check_feed(feed: dict[str, np.ndarray], specs: Sequence[TensorSpec]) -> None:
    if not isinstance(feed, dict):
        raise TypeError(f"feed must be a dict of input name -> array, got {type(feed).__name__}")
    missing = [s.name for s in specs if s.name not in feed]
    if missing:
        raise ValueError(f"feed lacks inputs {missing}")
    unexpected = sorted(set(feed) - {s.name for s in specs})
    if unexpected:
        raise ValueError(f"feed has unknown inputs {unexpected}; the model takes "
                         f"{[s.name for s in specs]}")
    batch = None
    for spec in specs:
        value = feed[spec.name]
        if not isinstance(value, np.ndarray):
            raise TypeError(f"input {spec.name!r} must be a NumPy array, got {type(value).__name__}")
        if value.dtype != np.dtype(spec.dtype):
            raise TypeError(f"input {spec.name!r} must be {spec.dtype}, got {value.dtype}")
        if value.ndim != len(spec.shape):
            raise ValueError(f"input {spec.name!r} must have {len(spec.shape)} dims "
                             f"{spec.shape}, got shape {value.shape}")
        for axis, (want, got) in enumerate(zip(spec.shape, value.shape)):
            if isinstance(want, int) and want != got:
                raise ValueError(f"input {spec.name!r} dim {axis} must be {want}, got {got} "
                                 f"(shape {value.shape})")
        if batch is not None and value.shape[0] != batch:
            raise ValueError(f"input {spec.name!r} has batch {value.shape[0]}, expected {batch}")
        batch = value.shape[0]


def choose_providers(requested: Sequence[str] | None = None) -> list[str]:
    """ONNX Runtime providers in preference order; warns when a GPU provider is unavailable."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    wanted = list(requested) if requested else [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    chosen = [p for p in wanted if p in available]
    dropped = [p for p in wanted if p not in available]
    if requested and dropped:
        warnings.warn(f"ONNX Runtime providers {dropped} are not available here "
                      f"(available: {available}); falling back to {chosen or ['CPUExecutionProvider']}")
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, model_path: Path, output_name: str, providers: Sequence[str] | None = None,
                 threads: int | None = None, spin: bool = True):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        if not spin:
            # Idle ORT worker threads spin-wait by default: fastest back to back, but they steal
            # cores from anything else in the process (another session, torch, the app).
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(model_path), options,
                                                providers=choose_providers(providers))
        except Exception as err:  # ORT raises its own exception types; name the file
            raise RuntimeError(f"ONNX Runtime could not load {model_path}: {err}") from err
        self.output_name = output_name
        self.providers = self.session.get_providers()

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # InferenceSession.run is thread-safe, so one session serves concurrent encode() calls.
        try:
            (out,) = self.session.run([self.output_name], feed)
        except Exception as err:  # ORT's errors name kernels, not the call; add the shapes
            shapes = {name: tuple(value.shape) for name, value in feed.items()}
            raise RuntimeError(f"ONNX Runtime inference failed for inputs {shapes}: {err}") from err
        return {self.output_name: out}


def tensorrt_backend(*args, **kwargs):
    """The native TensorRT backend arrives with the TensorRT issue; say so clearly."""
    try:
        import tensorrt  # noqa: F401  (lazy: never imported unless asked for)
    except ImportError as err:
        raise RuntimeError("backend='tensorrt' needs the TensorRT Python package (JetPack or "
                           "NVIDIA's wheels); it is not installed here") from err
    raise NotImplementedError("the native TensorRT engine backend is not implemented yet; use "
                              "backend='onnxruntime' (with onnxruntime-gpu its TensorRT "
                              "execution provider is used)")
