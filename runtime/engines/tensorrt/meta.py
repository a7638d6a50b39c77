"""TensorRT engine metadata: pure functions, no TensorRT needed (all unit-tested here).

- :func:`engine_profiles`: optimisation-profile min/opt/max for batch and sequence length,
  from the artifact's manifest, with user overrides.
- :func:`profile_shapes`: those as per-input shapes (for TensorRT, trtexec and the ORT TRT EP).
- :func:`trtexec_command`: the equivalent ``trtexec`` line, so a user can build by hand.
- :func:`check_engine_compatible`: an engine built by another TensorRT version or for another
  GPU architecture cannot be deserialised; refuse it with a message that says how to rebuild.
- :func:`validate_engines_section`: the manifest's ``"engines"`` section.
- :func:`select_backend`: ``backend="auto"``: a compatible engine, else ONNX Runtime.
"""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from lame_runtime.artifact.bounds import DEFAULT_MAX_BATCH, MIN_SEQUENCE
from lame_runtime.errors import ArtifactError, BackendError, InputError

ENGINE_PRECISIONS = ("fp16", "int8")
PLAN_FILES = {"fp16": "model_fp16.plan", "int8": "model_int8.plan"}
OPT_BATCH = 32  # Embedder.encode's default batch_size
INSTALL_HINT = (
    "install TensorRT 10.x/11.x: on a Jetson it comes with JetPack (`sudo apt install "
    "nvidia-jetpack`); on x86/SBSA use NVIDIA's wheels (`pip install tensorrt`, which "
    "fetches the libraries from NVIDIA's own package index)"
)


@dataclass(frozen=True)
class Range:
    min: int
    opt: int
    max: int

    def as_list(self) -> list[int]:
        return [self.min, self.opt, self.max]


@dataclass(frozen=True)
class EngineProfile:
    batch: Range
    sequence: Range
    # Native-resolution graphs only: patch slices per batch and patches per slice.
    slices: Range | None = None
    patches: Range | None = None

    def to_dict(self) -> dict[str, list[int]]:
        out = {"batch": self.batch.as_list(), "sequence": self.sequence.as_list()}
        for name in ("slices", "patches"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value.as_list()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EngineProfile:
        extra = {name: Range(*data[name]) for name in ("slices", "patches") if name in data}
        return cls(Range(*data["batch"]), Range(*data["sequence"]), **extra)


def max_sequence(manifest: Mapping[str, Any]) -> int:
    """The longest row the preprocessor produces: BOS + image placeholders + text tokens (a
    native-resolution graph: its own sequence bound, the visual tokens varying per image)."""
    if manifest.get("max_patches"):
        return int(manifest["max_sequence"])
    try:
        longest = 1 + int(manifest["num_image_tokens"]) + int(manifest["max_text_tokens"])
    except KeyError as err:
        raise ArtifactError(
            f"the manifest lacks {err.args[0]!r}: cannot size TensorRT profiles; re-export the artifact"
        ) from err
    graph_max = manifest.get("max_sequence")
    return min(longest, int(graph_max)) if graph_max else longest


PROFILE_KEYS = ("min_batch", "opt_batch", "max_batch", "min_sequence", "opt_sequence", "max_sequence")
NATIVE_PROFILE_KEYS = ("min_slices", "opt_slices", "max_slices", "min_patches", "opt_patches", "max_patches")
# A native profile's default slice range: up to this many images (or video steps) per row of a
# full batch. TensorRT sizes its memory for the maximum, so it is kept modest; override it.
SLICES_PER_ROW = 2


def engine_profiles(
    manifest: Mapping[str, Any], overrides: Mapping[str, int | None] | None = None
) -> EngineProfile:
    """Batch 1..max_batch (opt 32 or less), sequence 2..longest row (opt: the longest, since a
    batch is padded to its longest row and image rows are near the maximum).

    ``overrides`` may set any of :data:`PROFILE_KEYS`; None values are ignored.
    """
    given: dict[str, int] = {k: v for k, v in (overrides or {}).items() if v is not None}
    native = bool(manifest.get("max_patches"))
    allowed = PROFILE_KEYS + NATIVE_PROFILE_KEYS * native
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise InputError(f"unknown profile overrides {unknown}; use {list(allowed)}")
    batch_max = int(manifest.get("max_batch", DEFAULT_MAX_BATCH))
    seq_max = max_sequence(manifest)
    values = {"min_batch": 1, "max_batch": batch_max, "min_sequence": MIN_SEQUENCE, "max_sequence": seq_max}
    values.update(
        {k: given[k] for k in ("min_batch", "max_batch", "min_sequence", "max_sequence") if k in given}
    )
    values["opt_batch"] = given.get("opt_batch", min(OPT_BATCH, values["max_batch"]))
    values["opt_sequence"] = given.get("opt_sequence", values["max_sequence"])
    _check_ranges(values, ("batch", "sequence"))
    if values["max_batch"] > batch_max:
        raise InputError(
            f"max_batch {values['max_batch']} exceeds the exported graph's "
            f"{batch_max}; re-export with a larger --max-batch"
        )
    if values["max_sequence"] > seq_max:
        raise InputError(
            f"max_sequence {values['max_sequence']} exceeds the longest row this "
            f"artifact produces ({seq_max})"
        )
    if values["min_sequence"] < MIN_SEQUENCE:
        raise InputError(f"min_sequence must be at least {MIN_SEQUENCE}")
    batch = Range(values["min_batch"], values["opt_batch"], values["max_batch"])
    sequence = Range(values["min_sequence"], values["opt_sequence"], values["max_sequence"])
    if not native:
        return EngineProfile(batch, sequence)
    return EngineProfile(batch, sequence, *native_ranges(manifest, given, batch))


def _check_ranges(values: Mapping[str, Any], kinds: tuple[str, ...]) -> None:
    """Every value a positive integer and min <= opt <= max for each of ``kinds``."""
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"profile {key} must be a positive integer, got {value!r}")
    for kind in kinds:
        lo, mid, hi = (values[f"{p}_{kind}"] for p in ("min", "opt", "max"))
        if not lo <= mid <= hi:
            raise InputError(f"profile {kind} needs min <= opt <= max, got {lo}/{mid}/{hi}")


def native_ranges(manifest: Mapping[str, Any], given: Mapping[str, int], batch: Range) -> tuple[Range, Range]:
    """Slices 1..SLICES_PER_ROW x max batch (opt: one image per row of the opt batch); patches
    per slice from one merge block to the graph's bound at max_pixels (opt: the bound, since a
    batch is padded to its longest slice and photos are near the pixel budget)."""
    unit = int(manifest["image"].get("merge_size", 2)) ** 2
    most = int(manifest["max_patches"])
    values = {
        "min_slices": 1,
        "opt_slices": batch.opt,
        "max_slices": SLICES_PER_ROW * batch.max,
        "min_patches": unit,
        "opt_patches": most,
        "max_patches": most,
    }
    values.update({k: v for k, v in given.items() if k in values})
    for kind in ("slices", "patches"):  # a lowered max pulls the default opt down with it
        if f"opt_{kind}" not in given:
            values[f"opt_{kind}"] = min(values[f"opt_{kind}"], values[f"max_{kind}"])
    _check_ranges(values, ("slices", "patches"))
    if values["max_patches"] > most:
        raise InputError(
            f"max_patches {values['max_patches']} exceeds the graph's {most} (its max_pixels); "
            "re-export from a checkpoint with a larger --max-pixels"
        )
    for key in ("min_patches", "opt_patches", "max_patches"):
        if values[key] % unit:
            raise InputError(f"profile {key} must be a multiple of {unit} (whole merge blocks)")
    return (
        Range(values["min_slices"], values["opt_slices"], values["max_slices"]),
        Range(values["min_patches"], values["opt_patches"], values["max_patches"]),
    )


def profile_shapes(inputs: list[Mapping[str, Any]], profile: EngineProfile) -> dict[str, list[list[int]]]:
    """Manifest input specs (``"batch"``/``"sequence"`` symbolic dims) -> {name: [min, opt, max]}."""
    ranges = {"batch": profile.batch, "sequence": profile.sequence}
    if profile.slices is not None and profile.patches is not None:
        ranges.update(slices=profile.slices, patches=profile.patches)
    shapes: dict[str, list[list[int]]] = {}
    for spec in inputs:
        triple = []
        for pick in ("min", "opt", "max"):
            dims = []
            for dim in spec["shape"]:
                if isinstance(dim, int):
                    dims.append(dim)
                elif dim in ranges:
                    dims.append(getattr(ranges[dim], pick))
                else:
                    raise ArtifactError(
                        f"input {spec['name']!r} has an unknown dynamic dim "
                        f"{dim!r}; the profile covers {', '.join(map(repr, ranges))}"
                    )
            triple.append(dims)
        shapes[spec["name"]] = triple
    return shapes


def check_in_profile(name: str, shape: tuple[int, ...], low: list[int], high: list[int]) -> None:
    """A request outside the engine's optimisation profile -> ``InputError`` naming the input,
    the dimension and the range (TensorRT's own refusal names neither)."""
    labels = {
        "pixel_values": ("slices", "patches"),
        "position_ids": ("axes", "batch", "sequence"),
        "visual_index": ("batch", "sequence"),
    }.get(name, ("batch", "sequence") if name in ("input_ids", "attention_mask") else ("slices", "patches"))
    for axis, (size, lo, hi) in enumerate(zip(shape, low, high)):
        if not lo <= size <= hi:
            what = labels[axis] if axis < len(labels) else f"dim {axis}"
            raise InputError(
                f"{what} = {size} in {name!r} is outside the TensorRT engine's profile [{lo}, {hi}]: "
                "send fewer/smaller images or rows per request, or rebuild the engine with a "
                "larger profile (lame-search build-engine --max-slices / --max-patches / --max-batch)"
            )


def _shape_arg(shapes: Mapping[str, list[list[int]]], index: int) -> str:
    # A batch-only input has shape [B]: "name:4". trtexec's format is name:AxBxC, comma separated.
    return ",".join(f"{name}:{'x'.join(str(d) for d in triple[index])}" for name, triple in shapes.items())


def trtexec_command(
    onnx_file: str,
    plan_file: str,
    shapes: Mapping[str, list[list[int]]],
    workspace_mb: int | None = None,
    timing_cache: str | None = None,
) -> str:
    """The ``trtexec`` line that builds the same engine (strongly typed, same profile).

    Flags checked against samples/common/sampleOptions.cpp of TensorRT 10.0, 10.3 and 11.1.
    """
    args = [
        "trtexec",
        f"--onnx={onnx_file}",
        f"--saveEngine={plan_file}",
        "--stronglyTyped",
        f"--minShapes={_shape_arg(shapes, 0)}",
        f"--optShapes={_shape_arg(shapes, 1)}",
        f"--maxShapes={_shape_arg(shapes, 2)}",
    ]
    if workspace_mb:
        args.append(f"--memPoolSize=workspace:{int(workspace_mb)}M")
    if timing_cache:
        args.append(f"--timingCacheFile={timing_cache}")
    return " ".join(shlex.quote(a) for a in args)


# --------------------------------------------------------------------------- compatibility
@dataclass(frozen=True)
class DeviceInfo:
    """What the running process has: TensorRT version and the GPU it would deserialise on."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "8.7"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def _release(version: str) -> tuple[str, ...]:
    # Engines are tied to the TensorRT release (major.minor.patch); the 4th field is the build.
    return tuple(str(version).split(".")[:3])


def engine_incompatibility(record: Mapping[str, Any], running: DeviceInfo) -> str | None:
    """-> None when the recorded engine can be deserialised here, else the reason."""
    built = record.get("tensorrt_version")
    cc = (record.get("gpu") or {}).get("compute_capability")
    if not built or not cc:
        return "the engine record lacks its TensorRT version or compute capability"
    if _release(built) != _release(running.tensorrt_version):
        return f"it was built with TensorRT {built}, this process has TensorRT {running.tensorrt_version}"
    if str(cc) != running.compute_capability:
        gpu = (record.get("gpu") or {}).get("name", "another GPU")
        return (
            f"it was built for compute capability {cc} ({gpu}), this GPU "
            f"({running.gpu_name}) is {running.compute_capability}"
        )
    return None


def rebuild_hint(artifact_dir: str, precision: str, record: Mapping[str, Any] | None = None) -> str:
    hint = f"rebuild it on this device: lame-search build-engine {shlex.quote(str(artifact_dir))} --precision {precision}"
    if record and record.get("trtexec"):
        hint += f" (or by hand: {record['trtexec']})"
    return hint


def check_engine_compatible(
    record: Mapping[str, Any], running: DeviceInfo, artifact_dir: str, precision: str
) -> None:
    """Raise ``BackendError`` (before any deserialisation) when the engine cannot run here."""
    reason = engine_incompatibility(record, running)
    if reason:
        raise BackendError(
            f"the {precision} TensorRT engine in {artifact_dir} cannot run here: "
            f"{reason}; {rebuild_hint(artifact_dir, precision, record)}"
        )


# --------------------------------------------------------------------------- manifest section
ENGINE_KEYS = {
    "path": str,
    "sha256": str,
    "bytes": int,
    "precision": str,
    "source_onnx": dict,
    "tensorrt_version": str,
    "gpu": dict,
    "profile": dict,
    "shapes": dict,
    "trtexec": str,
}


def validate_engines_section(manifest: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """-> the ``"engines"`` section ({} when absent); ``ArtifactError`` naming a bad entry."""
    engines = manifest.get("engines", {})
    if not isinstance(engines, dict):
        raise ArtifactError("manifest 'engines' must be an object of precision -> engine")
    for precision, entry in engines.items():
        where = f"manifest engines[{precision!r}]"
        if precision not in ENGINE_PRECISIONS:
            raise ArtifactError(f"{where}: precision must be one of {ENGINE_PRECISIONS}")
        if not isinstance(entry, dict):
            raise ArtifactError(f"{where} must be an object")
        for key, kind in ENGINE_KEYS.items():
            if not isinstance(entry.get(key), kind):
                raise ArtifactError(f"{where}: {key!r} must be a {kind.__name__}")
        if entry["precision"] != precision:
            raise ArtifactError(f"{where}: precision {entry['precision']!r} does not match")
        if not isinstance(entry["gpu"].get("compute_capability"), str):
            raise ArtifactError(f"{where}: gpu.compute_capability must be a string like '8.7'")
        try:
            EngineProfile.from_dict(entry["profile"])
        except (KeyError, TypeError) as err:
            raise ArtifactError(
                f"{where}: profile must have batch and sequence [min, opt, max]: {err}"
            ) from err
    return engines


def select_backend(
    manifest: Mapping[str, Any], backend: str, precision: str, running: DeviceInfo | None
) -> tuple[str, str]:
    """-> (backend, precision) to load.

    ``backend="auto"``: the engine for ``precision`` (or, with ``precision="auto"``, the fp16
    then the int8 engine) when one is recorded and compatible with ``running``; otherwise ONNX
    Runtime with ``precision`` (``"auto"`` -> fp32). ``running`` is None when TensorRT or a GPU
    is absent. ``"tensorrt"`` and ``"onnxruntime"`` are returned as asked.
    """
    engines = validate_engines_section(manifest)
    if backend == "tensorrt":
        if precision == "auto":
            found = [p for p in ENGINE_PRECISIONS if p in engines]
            if not found:
                raise BackendError(
                    "backend='tensorrt' needs a TensorRT engine; this artifact has "
                    "none: build one with lame-search build-engine ART "
                    "--precision fp16"
                )
            return "tensorrt", found[0]
        return "tensorrt", precision
    if backend == "auto" and running is not None:
        candidates = ENGINE_PRECISIONS if precision == "auto" else (precision,)
        for p in candidates:
            if p in engines and engine_incompatibility(engines[p], running) is None:
                return "tensorrt", p
    return "onnxruntime", "fp32" if precision == "auto" else precision
