"""Inference backends behind one interface: ``infer(feed) -> {output_name: ndarray}``:
ONNX Runtime (providers from :mod:`lame_runtime.engines.providers`) or a native TensorRT engine
(:mod:`lame_runtime.engines.tensorrt.backend`, imported only when one is used).

The feed is checked against the artifact's input specs *before* it reaches a backend, so a
wrong dtype or rank is reported by name instead of failing deep inside ONNX Runtime.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Sequence

import numpy as np

from lame_runtime.artifact.contract import Artifact, TensorSpec
from lame_runtime.engines.providers import (
    CACHE_DIR_NAME,
    CPU_EP,
    ProviderDefaults,
    check_fallback,
    normalize_providers,
    prepare_cache_dir,
    profile_shape_options,
    resolve_providers,
)
from lame_runtime.engines.tensorrt.backend import probe_device, running_device
from lame_runtime.engines.tensorrt.meta import (
    check_engine_compatible,
    engine_profiles,
    profile_shapes,
    rebuild_hint,
    select_backend,
    validate_engines_section,
)
from lame_runtime.errors import ArtifactError, BackendError, InputError, InputTypeError
from lame_runtime.persist import sha256

if TYPE_CHECKING:
    from lame_runtime.engines.shared_weights import SharedWeights
    from lame_runtime.engines.tensorrt.backend import TensorRTBackend


class Backend(Protocol):
    name: str

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def check_feed(feed: dict[str, np.ndarray], specs: Sequence[TensorSpec]) -> None:
    """``InputTypeError``/``InputError`` naming the input whose type, dtype or shape is wrong."""
    if not isinstance(feed, dict):
        raise InputTypeError(f"feed must be a dict of input name -> array, got {type(feed).__name__}")
    missing = [s.name for s in specs if s.name not in feed]
    if missing:
        raise InputError(f"feed lacks inputs {missing}")
    unexpected = sorted(set(feed) - {s.name for s in specs})
    if unexpected:
        raise InputError(f"feed has unknown inputs {unexpected}; the model takes {[s.name for s in specs]}")
    sizes: dict[str, int] = {}  # symbolic dim ("batch", "slices", ...) -> its size in this feed
    for spec in specs:
        value = feed[spec.name]
        if not isinstance(value, np.ndarray):
            raise InputTypeError(f"input {spec.name!r} must be a NumPy array, got {type(value).__name__}")
        if value.dtype != np.dtype(spec.dtype):
            raise InputTypeError(f"input {spec.name!r} must be {spec.dtype}, got {value.dtype}")
        if value.ndim != len(spec.shape):
            raise InputError(
                f"input {spec.name!r} must have {len(spec.shape)} dims {spec.shape}, got shape {value.shape}"
            )
        for axis, (want, got) in enumerate(zip(spec.shape, value.shape)):
            if isinstance(want, int) and want != got:
                raise InputError(
                    f"input {spec.name!r} dim {axis} must be {want}, got {got} (shape {value.shape})"
                )
            if isinstance(want, str):
                if want in sizes and sizes[want] != got:
                    raise InputError(f"input {spec.name!r} has {want} {got}, expected {sizes[want]}")
                sizes.setdefault(want, got)


class OnnxRuntimeBackend:
    """One ``InferenceSession`` over an artifact graph, on the providers resolved in
    :mod:`lame_runtime.engines.providers` (the one place that decides them)."""

    name = "onnxruntime"

    def __init__(
        self,
        model_path: Path,
        output_name: str,
        providers: Sequence[Any] | None = None,
        threads: int | None = None,
        spin: bool = True,
        strict: bool = False,
        defaults: ProviderDefaults | None = None,
        log_severity: int = 3,
        reported: Sequence[str] = (),
        expect: tuple[int, Sequence[TensorSpec]] | None = None,
        shared: SharedWeights | None = None,
        session_cache: tuple[Path, dict[str, str]] | None = None,
        prepack: bool = True,
    ) -> None:
        # expect: (embedding_dim, input specs) from the manifest, checked against the graph.
        # shared: a lame_runtime.engines.shared_weights.SharedWeights whose mapped initializers
        # this session uses in place (one copy for the full and the text graph).
        import onnxruntime as ort

        available = ort.get_available_providers()
        resolved, unavailable = resolve_providers(providers, available, Path(model_path).parent, defaults)
        prepare_cache_dir(resolved)
        options = ort.SessionOptions()
        # 3 = errors only: ORT's provider warnings must not reach stdout (`--json` output);
        # fallbacks are reported by check_fallback below instead, as a Python warning.
        options.log_severity_level = log_severity
        if threads:
            options.intra_op_num_threads = threads
        if not spin:
            # Idle ORT worker threads spin-wait by default: fastest back to back, but they steal
            # cores from anything else in the process (another session, torch, the app).
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.shared_initializers = shared.apply(options, model_path) if shared else 0
        if not prepack and not self.shared_initializers:  # sharing turns it off already
            options.add_session_config_entry("session.disable_prepacking", "1")
        # session_cache: (folder, the graph's files -> sha256), lame_runtime.engines.session_cache.
        staging, key, graph = None, "", Path(model_path)
        self.cached = False
        if (
            session_cache is not None
            and not self.shared_initializers
            and [n for n, _ in resolved] == [CPU_EP]
        ):
            from lame_runtime.engines import session_cache as cache

            folder, sources = session_cache
            key = cache.cache_key(sources)
            saved = cache.cached_graph(folder, key)
            if saved is not None:
                graph, self.cached = saved, True
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            else:
                shutil.rmtree(Path(folder) / key, ignore_errors=True)  # absent, or failed its check
                staging = cache.save_options(options, folder, key)
        try:
            self.session = ort.InferenceSession(str(graph), options, providers=resolved)
        except Exception as err:  # ORT raises its own exception types; name the file
            raise BackendError(
                f"ONNX Runtime could not load {model_path} with providers "
                f"{[name for name, _ in resolved]}: {err}"
            ) from err
        if staging is not None:
            cache.commit(staging, session_cache[0], key)  # type: ignore[index]
        self.output_name = output_name
        self.providers = self.session.get_providers()
        if expect is not None:
            check_graph(self.session, Path(model_path), output_name, *expect)
        # Everything asked for: an explicit list as given; the default list as resolved plus
        # whatever of it this build lacks (never silently dropped).
        requested = (
            [name for name, _ in normalize_providers(providers)]
            if providers is not None
            else [name for name, _ in resolved] + list(unavailable)
        )
        self.fallback = check_fallback(requested, self.providers, strict, unavailable, reported)

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # InferenceSession.run is thread-safe, so one session serves concurrent encode() calls.
        try:
            (out,) = self.session.run([self.output_name], feed)
        except Exception as err:  # ORT's errors name kernels, not the call; add the shapes
            shapes = {name: tuple(value.shape) for name, value in feed.items()}
            raise RuntimeError(f"ONNX Runtime inference failed for inputs {shapes}: {err}") from err
        return {self.output_name: out}


_ORT_TYPES = {
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(bool)": "bool",
}


def check_graph(session: Any, path: Path, output_name: str, dim: int, inputs: Sequence[Any]) -> None:
    """The manifest must describe the graph it ships: its output name and embedding width, and
    its inputs (names and dtypes). A mismatch would otherwise open fine and fail, or return
    vectors of another width than ``Embedder.dim``, at the first query."""
    outputs = {out.name: out for out in session.get_outputs()}
    if output_name not in outputs:
        raise ArtifactError(
            f"{path}: the manifest names output {output_name!r}, the graph's "
            f"outputs are {sorted(outputs)}: manifest and graph disagree"
        )
    width = (outputs[output_name].shape or [None])[-1]
    if isinstance(width, int) and width != dim:
        raise ArtifactError(
            f"{path}: the graph's {output_name!r} is {width}-dimensional, the "
            f"manifest's embedding_dim is {dim}: manifest and graph disagree"
        )
    specs = {spec.name: spec for spec in inputs}
    for graph_input in session.get_inputs():
        spec = specs.get(graph_input.name)
        if spec is None:
            raise ArtifactError(
                f"{path}: the graph takes input {graph_input.name!r}, which the "
                f"manifest does not list ({sorted(specs)})"
            )
        dtype = _ORT_TYPES.get(graph_input.type, graph_input.type)
        if dtype != spec.dtype:
            raise ArtifactError(
                f"{path}: input {graph_input.name!r} is {dtype} in the graph and {spec.dtype} in the manifest"
            )


# --------------------------------------------------------------------------- choosing a backend
def provider_defaults(
    artifact: Artifact, precision: str, device_id: int = 0, cache_dir: str | Path | None = None
) -> ProviderDefaults:
    """Defaults for the TensorRT/CUDA execution providers from the artifact: fp16 flag, cache
    folder (``<artifact>/trt_cache`` unless given) and the profile shapes of its inputs."""
    shapes = profile_shapes(artifact.manifest["inputs"], engine_profiles(artifact.manifest))
    return ProviderDefaults(
        device_id=device_id,
        precision=precision,
        cache_dir=Path(cache_dir) if cache_dir else artifact.path / CACHE_DIR_NAME,
        profile_shapes=profile_shape_options(shapes),
    )


def choose_backend(
    artifact: Artifact, backend: str, precision: str, device_id: int = 0
) -> tuple[str, str, dict[str, Any] | None]:
    """-> (backend, precision, engine record or None).

    ``tensorrt``: the recorded engine must exist and match this process's TensorRT release and
    GPU (checked before anything is deserialised). ``auto``: such an engine if there is one,
    else ONNX Runtime. TensorRT is imported only when the artifact records an engine.
    """
    engines = validate_engines_section(artifact.manifest)
    running = None
    if backend == "tensorrt":
        running = running_device(device_id)
    elif backend == "auto" and engines:
        running = probe_device(device_id)
    name, chosen = select_backend(artifact.manifest, backend, precision, running)
    if name != "tensorrt":
        return name, chosen, None
    record = engines.get(chosen)
    if record is None:
        have = ", ".join(engines) or "none"
        raise BackendError(
            f"{artifact.path} has no {chosen} TensorRT engine (it has {have}); "
            f"{rebuild_hint(str(artifact.path), chosen)}"
        )
    assert running is not None  # select_backend returns "tensorrt" only with a device
    check_engine_compatible(record, running, str(artifact.path), chosen)
    return name, chosen, record


def load_tensorrt(
    artifact: Artifact, record: dict[str, Any], output_name: str, device_id: int = 0, verify: bool = True
) -> TensorRTBackend:
    """The plan file, sha256-checked against its record, deserialised on ``device_id``."""
    from lame_runtime.engines.tensorrt.backend import TensorRTBackend

    plan = artifact.path / record["path"]
    if not plan.is_file():
        raise ArtifactError(
            f"{plan}, recorded in the manifest's engines, is missing; "
            f"{rebuild_hint(str(artifact.path), record['precision'])}"
        )
    if verify and sha256(plan) != record["sha256"]:
        raise ArtifactError(
            f"{plan} does not match the sha256 recorded for it: the engine is "
            f"corrupt or was replaced; {rebuild_hint(str(artifact.path), record['precision'])}"
        )
    return TensorRTBackend(plan, output_name, device_id)
