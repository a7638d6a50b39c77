"""``RuntimeOptions``: how an ``Embedder`` runs, grouped apart from *what* it serves.

The ``Embedder`` constructor takes the artifact, the precision, the backend and the GPU; every
other knob (ONNX Runtime providers and threads, lazy loading, hashing, caches, routing, image
limits, the decode pipeline) lives here, so a deployment can build one options object and
reuse it.

TensorRT is reached one documented way per engine kind, and the two never overlap:

- ``backend="tensorrt"``: a native TensorRT engine (``model_fp16.plan``) that
  ``lame-search build-engine`` (or ``lame-export --trt``) recorded in the artifact. The
  backend axis chooses *which runtime executes the plan*: ONNX Runtime or TensorRT itself.
- ONNX Runtime's TensorRT execution provider is an ONNX Runtime device choice like CUDA's,
  so it is a provider: ``RuntimeOptions(providers=["TensorrtExecutionProvider",
  "CUDAExecutionProvider", "CPUExecutionProvider"])`` with ``backend="onnxruntime"`` (or
  ``"auto"``). It gets an engine cache and the artifact's profile shapes by default.

A provider that was asked for and does not start is never silent: a warning naming it and
the provider actually used, or ``BackendError`` with ``strict_providers=True``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Sequence

from lame_runtime.errors import InputError, InputTypeError
from lame_runtime.inputs.pipeline import PipelineOptions

BACKENDS = ("auto", "onnxruntime", "tensorrt")


@dataclass(frozen=True)
class RuntimeOptions:
    """How an :class:`~lame_runtime.Embedder` runs its artifact (all fields optional)."""

    providers: Sequence[Any] | None = None
    """ONNX Runtime execution providers in order, as ``onnxruntime.InferenceSession`` takes
    them: names or ``(name, options)`` pairs. None: CUDA when this onnxruntime build has it,
    then CPU. Name ``TensorrtExecutionProvider`` first to use ONNX Runtime's TensorRT EP; the
    TensorRT/CUDA providers get defaults from the artifact (engine cache, fp16 flag, profile
    shapes, ``device_id``) underneath the options given here."""

    threads: int | None = None
    """ONNX Runtime intra-op threads per session (None: ONNX Runtime's default, one per core)."""

    lazy: bool = False
    """Open the inference sessions on first use instead of in the constructor."""

    spin: bool = True
    """Let idle ONNX Runtime worker threads spin-wait: fastest back to back, but they take
    cores from anything else in the process; turn off when sharing the CPU."""

    verify: bool = True
    """sha256-check the artifact's files (hashes are cached per file version). False: for
    devices that verify at install time; paths, sizes and the manifest are still checked."""

    strict_providers: bool = False
    """A requested provider that is absent or fails to start raises ``BackendError`` instead
    of a warning."""

    cache_dir: str | Path | None = None
    """The TensorRT execution provider's engine and timing caches (None: ``<artifact>/trt_cache``)."""

    route_text: bool = True
    """Send text-only rows to the artifact's text-only graph when it has one (no vision tower);
    False: every row goes through the full graph."""

    max_pixels: int | None = None
    """Refuse input images with more pixels, read from the file header before decoding
    (None: ``lame_runtime.inputs.images.default_max_pixels``, from the model's resolution)."""

    share_weights: bool = True
    """The full and the text graph use one mapped copy of the weights they share on disk;
    False: each session loads (and pre-packs) its own."""

    prepack: bool | None = None
    """Let ONNX Runtime pre-pack the weights at session creation (MLAS re-lays MatMul weights
    into its own layout). None: per precision -- on for int8 and int4, whose kernels need it
    (int4's ``MatMulNBits`` is several times slower unpacked), off for fp32 and fp16, where it
    costs most of the load time and a second copy of the weights at load for a small gain."""

    session_cache: str | Path | None = None
    """A folder where the first start on this machine saves ONNX Runtime's optimized graph with
    its pre-packed weights, which later starts load instead of optimising and packing again
    (``lame_runtime.engines.session_cache``; CPU provider only; about the graph's size again on
    disk). None: every start builds its sessions from the artifact's graphs."""

    pipeline: PipelineOptions | None = None
    """Decode threads, prefetch depth and JPEG draft mode of the image pipeline
    (``lame_runtime.inputs.pipeline``; None: its defaults)."""

    def __post_init__(self) -> None:
        if self.threads is not None and (
            isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1
        ):
            raise InputError(f"threads must be a positive integer or None, got {self.threads!r}")
        if self.pipeline is not None and not isinstance(self.pipeline, PipelineOptions):
            raise InputTypeError(f"pipeline must be a PipelineOptions, got {type(self.pipeline).__name__}")


# Old Embedder keyword -> RuntimeOptions field; accepted for one release with a warning.
LEGACY_KEYWORDS = {
    "providers": "providers",
    "threads": "threads",
    "lazy": "lazy",
    "spin": "spin",
    "verify": "verify",
    "strict": "strict_providers",
    "cache_dir": "cache_dir",
    "route_text": "route_text",
    "max_pixels": "max_pixels",
    "share_weights": "share_weights",
    "pipeline_options": "pipeline",
    "tensorrt_ep": None,  # -> providers with the TensorRT EP first
}
TENSORRT_EP_PROVIDERS = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "CPUExecutionProvider",
)


def merge_legacy(options: RuntimeOptions | None, legacy: dict[str, Any]) -> RuntimeOptions:
    """``options`` with the deprecated ``Embedder`` keywords applied, one DeprecationWarning
    per keyword naming its new spelling; an unknown keyword is a ``TypeError`` as Python's own."""
    if options is not None and not isinstance(options, RuntimeOptions):
        raise InputTypeError(f"options must be a RuntimeOptions, got {type(options).__name__}")
    options = options or RuntimeOptions()
    unknown = sorted(set(legacy) - set(LEGACY_KEYWORDS))
    if unknown:
        raise InputTypeError(
            f"Embedder() got unexpected keyword arguments {unknown}; the run options are "
            f"RuntimeOptions fields: {[f.name for f in fields(RuntimeOptions)]}"
        )
    changes: dict[str, Any] = {}
    for key, value in legacy.items():
        target = LEGACY_KEYWORDS[key]
        if target is None:  # tensorrt_ep
            new = (
                f"options=RuntimeOptions(providers={list(TENSORRT_EP_PROVIDERS)!r})"
                if value
                else "leave the TensorRT EP out of RuntimeOptions.providers"
            )
            # As before: an explicit provider list wins over the flag.
            if value and "providers" not in legacy and options.providers is None:
                changes["providers"] = TENSORRT_EP_PROVIDERS
        else:
            new = f"options=RuntimeOptions({target}={value!r})"
            changes[target] = value
        warnings.warn(
            f"Embedder({key}={value!r}) is deprecated; use Embedder(..., {new})",
            DeprecationWarning,
            stacklevel=3,
        )
    return replace(options, **changes) if changes else options
