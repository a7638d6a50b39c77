"""Devices and numeric precision for training, evaluation and benchmarks.

``resolve_device("auto" | "cpu" | "cuda" | "cuda:N")`` -> a ``torch.device``; a CUDA request on a
machine without CUDA (or an index past the last GPU) is a :class:`BackendError` with one clear
sentence, never a traceback from deep inside torch. Under ``torchrun`` the bare ``cuda`` and
``auto`` pick the process's own GPU (``LOCAL_RANK``).

``autocast(device, precision)`` is the forward-pass context: ``bf16`` runs matmuls in bfloat16
while the parameters (the optimizer's master weights) stay float32; ``fp32`` is a no-op.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any

from lame_runtime.errors import BackendError, InputError

if TYPE_CHECKING:  # each function imports torch itself: PRECISIONS and DEVICES name options in --help
    import torch

DEVICES = ("auto", "cpu", "cuda", "cuda:N")
PRECISIONS = ("fp32", "bf16")


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """``auto``: this process's GPU when CUDA is available, else the CPU."""
    import torch

    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = (spec or "auto").strip().lower()
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "auto":
        return torch.device("cuda", local_rank()) if torch.cuda.is_available() else (torch.device("cpu"))
    if spec == "cuda" or spec.startswith("cuda:"):
        index_text = spec.partition(":")[2]
        if index_text and not index_text.isdigit():
            raise InputError(f"device {spec!r}: expected one of {', '.join(DEVICES)}")
        if not torch.cuda.is_available():
            build = torch.version.cuda or "none (a CPU-only build)"
            raise BackendError(
                f"device {spec!r} requested but torch sees no CUDA device on "
                f"this machine (torch {torch.__version__}, CUDA {build}); use "
                "--device cpu or --device auto"
            )
        index = int(index_text) if index_text else local_rank()
        count = torch.cuda.device_count()
        if index >= count:
            raise BackendError(
                f"device {spec!r}: GPU index {index} does not exist "
                f"(this machine has {count} GPU{'s' * (count != 1)})"
            )
        return torch.device("cuda", index)
    raise InputError(f"unknown device {spec!r}; expected one of {', '.join(DEVICES)}")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def autocast(device: torch.device, precision: str):
    """The forward context for ``precision`` (bf16 autocast, float32 master weights)."""
    if check_precision(precision) == "fp32":
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def to_device(value: Any, device: torch.device) -> Any:
    """Move every tensor of a (nested dict/list) batch to ``device`` in one pass; batches are
    built on the CPU (tokenisation, images) and moved once per step."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=device.type == "cuda")
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device) for v in value)
    return value


def peak_memory_bytes(device: torch.device) -> int | None:
    """Peak allocated accelerator memory since the last reset (None on the CPU)."""
    if device.type == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated(device))
    return None
