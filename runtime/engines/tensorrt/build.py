"""Build a TensorRT engine from an artifact's fp16 or int8 ONNX graph, on (or for) the device.

Torch-free and onnx-free (needs only ``tensorrt``, ``cuda-python`` and NumPy), so a Jetson with
the base install can run it: ``lame-search build-engine ART --precision fp16``; ``lame-export
--trt fp16`` calls the same function after exporting.

One code path for TensorRT 10.x and 11.x: a strongly typed network (TensorRT 11 only has those;
10.3 on JetPack 6 has them too). No BuilderFlag.FP16/INT8 and no calibrator: precision comes
from the graph itself, fp16 from ``model_fp16.onnx``, int8 from the Q/DQ nodes of
``model_int8.onnx`` (exported with ``--int8-for-tensorrt``: zero points of 0).

TensorRT Python API used (checked in NVIDIA/TensorRT python/src at tags v10.0.0, v10.3.0,
v10.16, v11.0 and v11.1, and the Python API docs for 10.x and 11.0): ``trt.Logger``,
``trt.Builder(logger)``, ``Builder.create_network(flags)`` with
``1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)`` (11.0: deprecated, kept and
ignored since strong typing is always on), ``trt.OnnxParser(network, logger)``,
``OnnxParser.parse_from_file(path)`` (resolves external data beside the file),
``.num_errors``/``.get_error(i).desc()``, ``INetworkDefinition.num_inputs``/``.get_input(i).name``,
``Builder.create_builder_config()``, ``IBuilderConfig.set_memory_pool_limit(
trt.MemoryPoolType.WORKSPACE, bytes)``, ``Builder.create_optimization_profile()``,
``IOptimizationProfile.set_shape(name, min, opt, max)``, ``IBuilderConfig.add_optimization_profile``,
``.create_timing_cache(bytes)``, ``.set_timing_cache(cache, ignore_mismatch)``,
``.get_timing_cache()`` + ``ITimingCache.serialize()``, ``Builder.build_serialized_network(
network, config)`` (-> IHostMemory or None).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lame_runtime.artifact.contract import MANIFEST, Artifact
from lame_runtime.artifact.manifest import Manifest
from lame_runtime.engines.tensorrt.backend import import_tensorrt, running_device
from lame_runtime.engines.tensorrt.meta import (
    ENGINE_PRECISIONS,
    PLAN_FILES,
    DeviceInfo,
    EngineProfile,
    engine_profiles,
    profile_shapes,
    trtexec_command,
    validate_engines_section,
)
from lame_runtime.errors import ArtifactError, BackendError, InputError
from lame_runtime.persist import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    read_json,
    sha256,
)

README_FILE = "README_TENSORRT.txt"
TIMING_CACHE = "trt_cache/timing.cache"


@dataclass
class EngineBuildOptions:
    precision: str = "fp16"
    profile: dict[str, int | None] = field(default_factory=dict)  # engine_profiles overrides
    workspace_mb: int | None = None  # TensorRT's workspace pool limit; None: its default
    timing_cache: str | None = None  # default: <artifact>/trt_cache/timing.cache
    device_id: int = 0


def check_build_environment(device_id: int = 0) -> DeviceInfo:
    """Fail fast (before any export or write): TensorRT importable and a GPU usable."""
    return running_device(device_id)


def build_engine(
    artifact_dir: str | Path,
    options: EngineBuildOptions,
    progress: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Build ``model_<precision>.plan`` and record it in the manifest; -> the engine record.

    Everything that can fail (TensorRT missing, no GPU, parse or build errors) happens before
    the first write; the plan and the manifest are then each replaced atomically.
    """
    if options.precision not in ENGINE_PRECISIONS:
        raise InputError(f"engine precision must be one of {ENGINE_PRECISIONS}, got {options.precision!r}")
    if options.workspace_mb is not None and options.workspace_mb < 1:
        raise InputError(f"workspace_mb must be a positive number of MiB, got {options.workspace_mb}")
    # First, before opening (and hash-checking) anything: TensorRT and a GPU are here.
    device = running_device(options.device_id)
    artifact = Artifact.open(artifact_dir)
    validate_engines_section(artifact.manifest)
    onnx_path = artifact.file_for(options.precision)  # sha256-verified against the manifest
    model = artifact.models[options.precision]
    profile = engine_profiles(artifact.manifest, options.profile)
    shapes = profile_shapes(artifact.manifest["inputs"], profile)
    cache_path = Path(options.timing_cache) if options.timing_cache else artifact.path / TIMING_CACHE

    progress(
        f"building the {options.precision} TensorRT engine for {device.gpu_name} "
        f"(TensorRT {device.tensorrt_version}); this takes minutes"
    )
    started = time.perf_counter()
    plan, timing_cache = _build(onnx_path, shapes, options, cache_path)
    progress(f"built in {time.perf_counter() - started:.0f} s")

    plan_path = artifact.path / PLAN_FILES[options.precision]
    record = {
        "path": plan_path.name,
        "precision": options.precision,
        "bytes": len(plan),
        "source_onnx": {
            "path": model["path"],
            "external_data": model["external_data"],
            "sha256": artifact.manifest["files"][model["path"]]["sha256"],
        },
        "tensorrt_version": device.tensorrt_version,
        "gpu": {"name": device.gpu_name, "compute_capability": device.compute_capability},
        "profile": profile.to_dict(),
        "shapes": shapes,
        "workspace_mb": options.workspace_mb,
        "trtexec": trtexec_command(
            onnx_path.name, plan_path.name, shapes, options.workspace_mb, _relative(cache_path, artifact.path)
        ),
    }
    existed = plan_path.exists()
    atomic_write_bytes(plan_path, plan)
    record["sha256"] = sha256(plan_path)
    try:
        where = str(artifact.path / MANIFEST)
        manifest = Manifest.from_json(
            read_json(artifact.path / MANIFEST, ArtifactError, dict, "manifest"), where
        )
        manifest.engines = {**(manifest.engines or {}), options.precision: record}
        # Validated as a whole (engines included) before it replaces the old one.
        atomic_write_json(artifact.path / MANIFEST, Manifest.from_json(manifest.to_json(), where).to_json())
    except BaseException:
        if not existed:  # a plan the manifest does not list must not be left behind
            plan_path.unlink(missing_ok=True)
        raise
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(cache_path, timing_cache)
    atomic_write_text(artifact.path / README_FILE, engines_readme(manifest.engines))
    return record


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def _build(
    onnx_path: Path, shapes: dict[str, list[list[int]]], options: EngineBuildOptions, cache_path: Path
) -> tuple[bytes, bytes]:
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(parser.get_error(i).desc() for i in range(parser.num_errors))
        hint = (
            " (an int8 graph must have zero points of 0: re-export with --int8 --int8-for-tensorrt)"
            if options.precision == "int8"
            else ""
        )
        raise BackendError(f"TensorRT could not parse {onnx_path.name}: {errors}{hint}")
    config = builder.create_builder_config()
    if options.workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mb << 20)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        name = network.get_input(i).name
        if name not in shapes:
            raise BackendError(
                f"{onnx_path.name} has an input {name!r} the artifact manifest "
                "does not describe; re-export the artifact"
            )
        low, opt, high = shapes[name]
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    # A persistent timing cache makes rebuilds (other precision, new profile) much faster.
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(
            f"TensorRT failed to build an engine from {onnx_path.name} (see "
            "the TensorRT log above); try a larger --workspace-mb"
        )
    return bytes(serialized), bytes(config.get_timing_cache().serialize())


def engines_readme(engines: dict[str, dict[str, Any]]) -> str:
    """The artifact's README_TENSORRT.txt: what was built, for what, and how to rebuild."""
    lines = [
        "TensorRT engines of this LaME artifact",
        "",
        "Engines only run on the TensorRT release and GPU architecture they were built for.",
        "Rebuild on the target device with:  lame-search build-engine <artifact> --precision fp16|int8",
        "or by hand with trtexec (run inside the artifact folder):",
        "",
    ]
    for precision, record in sorted(engines.items()):
        profile = EngineProfile.from_dict(record["profile"])
        lines += [
            f"[{precision}] {record['path']}  TensorRT {record['tensorrt_version']}, "
            f"{record['gpu']['name']} (compute capability "
            f"{record['gpu']['compute_capability']})",
            f"  batch min/opt/max {profile.batch.as_list()}, sequence min/opt/max "
            f"{profile.sequence.as_list()}"
            + (
                f", slices {profile.slices.as_list()}, patches {profile.patches.as_list()}"
                if profile.slices and profile.patches
                else ""
            ),
            f"  {record['trtexec']}",
            "",
        ]
    return "\n".join(lines)
