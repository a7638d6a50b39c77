"""ONNX Runtime execution providers: the one place that decides which ones a session asks for.

``providers`` takes what ``onnxruntime.InferenceSession`` takes: names, or ``(name, options)``
pairs. The TensorRT and CUDA execution providers get sensible defaults underneath the user's
options (the user's keys always win):

- TensorRT EP: engine + timing caches in a folder beside the artifact (or one the user gives),
  so a process reuses the engines built by the previous one instead of rebuilding per process
  and per shape; fp16 when the served graph is the fp16 one; optimisation-profile shapes from
  the artifact, so one engine covers every batch/sequence the runtime sends.
- CUDA EP: ``device_id``.

The default order never puts the TensorRT EP first: it is used only when asked for by name, and
then always with an engine cache.

After the session exists, :func:`check_fallback` compares ``session.get_providers()`` with the
request: ONNX Runtime silently falls back to the CPU when a provider is missing or fails to
start; here every provider that was asked for by name and is not running is a warning naming
it and the provider used, or a ``BackendError`` with ``strict=True``. Only the default
order's CUDA, never requested, is dropped quietly when this build lacks it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from lame_runtime.errors import BackendError, InputError, InputTypeError

TENSORRT_EP = "TensorrtExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"
CACHE_DIR_NAME = "trt_cache"

Provider = tuple[str, dict[str, str]]


@dataclass
class ProviderDefaults:
    """What the defaults are computed from (all optional)."""

    device_id: int = 0
    precision: str = "fp32"  # the ONNX graph served: fp16 turns trt_fp16_enable on
    cache_dir: Path | None = None  # TensorRT EP caches; None: <artifact>/trt_cache
    profile_shapes: dict[str, str] | None = None  # trt_profile_{min,opt,max}_shapes strings


def normalize_providers(providers: Sequence[Any]) -> list[Provider]:
    """Names and ``(name, options)`` pairs -> ``[(name, {key: str(value)})]``, in order.

    Accepts exactly what ``onnxruntime.InferenceSession(providers=...)`` accepts (a pair may be
    a tuple or a two-item list); anything else is rejected with the offending entry named.
    """
    if isinstance(providers, (str, bytes)) or not isinstance(providers, Sequence):
        raise InputTypeError(
            "providers must be a list of provider names or (name, options) "
            f"pairs, got {type(providers).__name__}"
        )
    result: list[Provider] = []
    for i, entry in enumerate(providers):
        if isinstance(entry, str):
            name, options = entry, {}
        elif isinstance(entry, (tuple, list)) and len(entry) == 2 and isinstance(entry[0], str):
            name, options = entry
            if not isinstance(options, Mapping):
                raise InputTypeError(
                    f"providers[{i}]: the options of {name} must be a dict, got {type(options).__name__}"
                )
        else:
            raise InputTypeError(
                f"providers[{i}] must be a provider name or a (name, options) pair, got {entry!r}"
            )
        if not name.endswith("ExecutionProvider"):
            raise InputError(
                f"providers[{i}]: {name!r} is not an ONNX Runtime provider name "
                "(they end in 'ExecutionProvider', e.g. CUDAExecutionProvider)"
            )
        bad = [k for k in options if not isinstance(k, str)]
        if bad:
            raise InputTypeError(f"providers[{i}]: option names of {name} must be strings, got {bad!r}")
        if any(n == name for n, _ in result):
            raise InputError(f"providers[{i}]: {name} is listed twice")
        result.append((name, {k: _option_value(v) for k, v in options.items()}))
    return result


def _option_value(value: Any) -> str:
    # ORT converts option values to strings itself; doing it here makes merging and the
    # comparison in tests exact (True -> "True" would not parse: use "1"/"0" for booleans).
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def parse_provider_arg(text: str) -> list[Any]:
    """CLI form -> ``providers`` list: ``NAME[:key=value;key=value],NAME2,...``.

    ``CUDAExecutionProvider:device_id=1,CPUExecutionProvider`` ->
    ``[("CUDAExecutionProvider", {"device_id": "1"}), "CPUExecutionProvider"]``. Short names
    (``tensorrt``, ``cuda``, ``cpu``) are accepted too.
    """
    short = {"tensorrt": TENSORRT_EP, "trt": TENSORRT_EP, "cuda": CUDA_EP, "cpu": CPU_EP}
    providers: list[Any] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, opts = part.partition(":")
        name = short.get(name.strip().lower(), name.strip())
        options = {}
        for item in filter(None, (o.strip() for o in opts.split(";"))):
            key, eq, value = item.partition("=")
            if not eq or not key.strip():
                raise InputError(f"--providers: option {item!r} of {name} must be key=value")
            options[key.strip()] = value.strip()
        providers.append((name, options) if options else name)
    if not providers:
        raise InputError("--providers is empty")
    return providers


def profile_shape_options(shapes: Mapping[str, Sequence[Sequence[int]]]) -> dict[str, str]:
    """``{input: (min, opt, max)}`` -> the TensorRT EP's ``trt_profile_*_shapes`` strings
    (``name:1x2,name2:1x2``: ORT's documented format)."""
    out = {}
    for index, key in enumerate(
        ("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes")
    ):
        out[key] = ",".join(
            f"{name}:{'x'.join(str(d) for d in triple[index])}" for name, triple in shapes.items()
        )
    return out


def tensorrt_ep_defaults(defaults: ProviderDefaults, artifact_dir: Path) -> dict[str, str]:
    cache = Path(defaults.cache_dir) if defaults.cache_dir else Path(artifact_dir) / CACHE_DIR_NAME
    options = {
        "device_id": str(defaults.device_id),
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": "1",
        "trt_timing_cache_path": str(cache),
        "trt_fp16_enable": "1" if defaults.precision == "fp16" else "0",
    }
    options.update(defaults.profile_shapes or {})
    return options


def cuda_ep_defaults(defaults: ProviderDefaults) -> dict[str, str]:
    return {"device_id": str(defaults.device_id)}


def default_providers(available: Sequence[str]) -> list[Any]:
    """CUDA when this ONNX Runtime build has it, then CPU. Never the TensorRT EP: it is used
    only when named in ``providers``, and then with an engine cache."""
    return [name for name in (CUDA_EP, CPU_EP) if name in available or name == CPU_EP]


def resolve_providers(
    requested: Sequence[Any] | None,
    available: Sequence[str],
    artifact_dir: Path,
    defaults: ProviderDefaults | None = None,
) -> tuple[list[Provider], list[str]]:
    """-> (providers to pass to ONNX Runtime, requested names this build does not have).

    The names asked for are the resolved ones followed by the missing ones: hand both to
    :func:`check_fallback` so that none is dropped without a word.

    Unavailable providers are left out here (ONNX Runtime would otherwise print its own warning
    and drop them); the caller reports them with :func:`check_fallback` after the session
    exists, together with any that were passed but did not start.
    """
    defaults = defaults or ProviderDefaults()
    wanted = normalize_providers(requested if requested is not None else default_providers(available))
    resolved: list[Provider] = []
    missing: list[str] = []
    for name, options in wanted:
        if name not in available:
            missing.append(name)
            continue
        base = {
            TENSORRT_EP: lambda: tensorrt_ep_defaults(defaults, artifact_dir),
            CUDA_EP: lambda: cuda_ep_defaults(defaults),
        }.get(name, dict)()
        resolved.append((name, {**base, **options}))
    if not any(name == CPU_EP for name, _ in resolved):
        resolved.append((CPU_EP, {}))  # last resort, as ONNX Runtime itself does
    return resolved, missing


def prepare_cache_dir(providers: Sequence[Provider]) -> None:
    """The TensorRT EP fails to start when its cache folder does not exist: create it."""
    for name, options in providers:
        if name == TENSORRT_EP and options.get("trt_engine_cache_enable") == "1":
            for key in ("trt_engine_cache_path", "trt_timing_cache_path"):
                if options.get(key):
                    try:
                        Path(options[key]).mkdir(parents=True, exist_ok=True)
                    except OSError as err:
                        raise BackendError(
                            f"cannot create the TensorRT EP cache folder "
                            f"{options[key]}: {err}; pass cache_dir= (or "
                            f"{key}) pointing at a writable folder"
                        ) from err


def check_fallback(
    requested: Sequence[str],
    active: Sequence[str],
    strict: bool = False,
    unavailable: Sequence[str] = (),
    reported: Sequence[str] = (),
) -> list[str]:
    """Requested providers missing from the session's ``get_providers()`` -> warning or error.

    Returns the missing names (empty when every requested provider is active). ``reported``:
    names already warned about for the same request (an Embedder's second graph), not
    repeated.
    """
    missing = [name for name in requested if name not in active]
    if not missing or (not strict and set(missing) <= set(reported)):
        return missing
    reasons = [
        f"{name} ({'not in this ONNX Runtime build' if name in unavailable else 'failed to start'})"
        for name in missing
    ]
    message = (
        f"ONNX Runtime is not using {', '.join(reasons)}; the session runs on "
        f"{', '.join(active)}. Install onnxruntime-gpu with a matching CUDA/TensorRT, or "
        "ask for RuntimeOptions(providers=['CPUExecutionProvider']) (--providers cpu) to silence this"
    )
    if strict:
        raise BackendError(message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)
    return missing
