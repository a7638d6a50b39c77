"""Native TensorRT inference: a serialized engine (``model_*.plan``) on an NVIDIA GPU.

TensorRT and ``cuda-python`` are imported lazily (only when this backend is asked for). Device
memory, copies and the stream go through ``cuda.bindings.runtime`` (no torch, no pycuda).

TensorRT Python API used here (checked in NVIDIA/TensorRT python/src/infer/pyCore.cpp at tags
v10.0.0, v10.3.0, v10.16, v11.0, v11.1; present in all): ``trt.__version__``, ``trt.Logger``,
``trt.Runtime``, ``Runtime.deserialize_cuda_engine(bytes)``, ``ICudaEngine.num_io_tensors``,
``.get_tensor_name(i)``, ``.get_tensor_mode(name)`` / ``trt.TensorIOMode.INPUT``,
``.get_tensor_dtype(name)`` + ``trt.nptype``, ``.get_tensor_profile_shape(name, 0)``,
``.create_execution_context()``, ``IExecutionContext.set_input_shape``, ``.get_tensor_shape``,
``.set_tensor_address(name, int)``, ``.execute_async_v3(stream_handle=int)``.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from lame_runtime.engines.tensorrt.meta import INSTALL_HINT, DeviceInfo, check_in_profile
from lame_runtime.errors import BackendError


def import_tensorrt() -> Any:
    """-> the ``tensorrt`` module, or one ``BackendError`` saying how to install it."""
    try:
        import tensorrt
    except ImportError as err:
        raise BackendError(
            f"TensorRT is not installed (the Python package 'tensorrt'): {INSTALL_HINT}"
        ) from err
    return tensorrt


def import_cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError as err:
        raise BackendError(
            "the TensorRT backend needs cuda-python for device memory: pip install 'cuda-python>=12.6'"
        ) from err
    return cudart


def cuda_call(result: tuple[Any, ...], what: str) -> Any:
    """cuda.bindings returns (error, value...): raise on error, return the value(s)."""
    cudart = import_cudart()
    err, *values = result
    if err != cudart.cudaError_t.cudaSuccess:
        message = cudart.cudaGetErrorString(err)[1]
        message = message.decode() if isinstance(message, bytes) else message
        raise BackendError(f"CUDA {what} failed: {message} ({err.name})")
    return values[0] if len(values) == 1 else (tuple(values) or None)


def gpu_info(device_id: int = 0) -> tuple[str, str]:
    """-> (GPU name, compute capability "major.minor"); BackendError without a usable GPU."""
    cudart = import_cudart()
    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess or not count:
        reason = (
            cudart.cudaGetErrorString(err)[1] if err != cudart.cudaError_t.cudaSuccess else b"no CUDA device"
        )
        reason = reason.decode() if isinstance(reason, bytes) else reason
        raise BackendError(f"TensorRT needs an NVIDIA GPU and its driver; none is usable here ({reason})")
    if not 0 <= device_id < count:
        raise BackendError(f"device_id {device_id} does not exist: this machine has {count} CUDA device(s)")
    prop = cuda_call(cudart.cudaGetDeviceProperties(device_id), "cudaGetDeviceProperties")
    name = prop.name.split(b"\0", 1)[0].decode() if isinstance(prop.name, bytes) else str(prop.name)
    return name, f"{prop.major}.{prop.minor}"


def running_device(device_id: int = 0) -> DeviceInfo:
    """TensorRT version + GPU of this process; BackendError naming what is missing."""
    trt = import_tensorrt()
    name, cc = gpu_info(device_id)
    return DeviceInfo(tensorrt_version=trt.__version__, gpu_name=name, compute_capability=cc)


def probe_device(device_id: int = 0) -> DeviceInfo | None:
    """Like :func:`running_device`, but None when TensorRT or a GPU is absent (for auto)."""
    try:
        return running_device(device_id)
    except BackendError:
        return None


class _DeviceBuffer:
    """One cudaMalloc'd block, grown on demand (never shrunk: batches repeat their sizes)."""

    def __init__(self) -> None:
        self.ptr, self.nbytes = 0, 0

    def ensure(self, nbytes: int) -> int:
        if nbytes > self.nbytes:
            cudart = import_cudart()
            self.free()
            self.ptr = int(cuda_call(cudart.cudaMalloc(max(nbytes, 1)), "cudaMalloc"))
            self.nbytes = nbytes
        return self.ptr

    def free(self) -> None:
        if self.ptr:
            import_cudart().cudaFree(self.ptr)
            self.ptr, self.nbytes = 0, 0


class TensorRTBackend:
    """``infer(feed)`` over a deserialised engine with one optimisation profile.

    Input shapes are set per batch; a batch larger than the profile's max batch is split and
    the outputs concatenated. Calls are serialised with a lock (one execution context).
    """

    name = "tensorrt"

    def __init__(self, plan_path: Path, output_name: str, device_id: int = 0):
        trt = import_tensorrt()
        cudart = import_cudart()
        cuda_call(cudart.cudaSetDevice(device_id), "cudaSetDevice")
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        engine = self._runtime.deserialize_cuda_engine(Path(plan_path).read_bytes())
        if engine is None:
            raise BackendError(
                f"TensorRT could not deserialise {plan_path} (see the TensorRT "
                "log above); rebuild it with lame-search build-engine"
            )
        self.engine = engine
        self.context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        if output_name not in self.outputs:
            raise BackendError(
                f"the engine {plan_path} has outputs {self.outputs}, not "
                f"{output_name!r}: it was built from another model"
            )
        self.output_name = output_name
        self.dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        # get_tensor_profile_shape(name, profile) -> [min, opt, max]; dim 0 is the batch.
        self.max_batch = min(int(engine.get_tensor_profile_shape(n, 0)[2][0]) for n in self.inputs)
        self.stream = cuda_call(cudart.cudaStreamCreate(), "cudaStreamCreate")
        self.buffers = {n: _DeviceBuffer() for n in names}
        self._lock = threading.Lock()

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if "visual_index" in feed:
            # A native-resolution feed: its slices are shared by the rows, so it is not split;
            # a request outside the profile is refused naming the dimension.
            for name in self.inputs:
                low, _, high = self.engine.get_tensor_profile_shape(name, 0)
                check_in_profile(name, tuple(feed[name].shape), list(low), list(high))
            return {self.output_name: self._run(feed)}
        batch = len(next(iter(feed.values())))
        chunks = [
            self._run({k: v[i : i + self.max_batch] for k, v in feed.items()})
            for i in range(0, batch, self.max_batch)
        ]
        return {self.output_name: np.concatenate(chunks) if len(chunks) > 1 else chunks[0]}

    def _run(self, feed: Mapping[str, np.ndarray]) -> np.ndarray:
        cudart = import_cudart()
        to_device = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        to_host = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        with self._lock:
            hosts = []  # keep host arrays alive until the stream is synchronised
            for name in self.inputs:
                host = np.ascontiguousarray(feed[name], dtype=self.dtypes[name])
                hosts.append(host)
                if not self.context.set_input_shape(name, host.shape):
                    raise BackendError(
                        f"TensorRT rejected shape {host.shape} for {name!r}: "
                        "outside the engine's optimisation profile"
                    )
                ptr = self.buffers[name].ensure(host.nbytes)
                cuda_call(
                    cudart.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes, to_device, self.stream),
                    "copy to device",
                )
                self.context.set_tensor_address(name, ptr)
            results = {}
            for name in self.outputs:
                shape = tuple(self.context.get_tensor_shape(name))
                results[name] = np.empty(shape, dtype=self.dtypes[name])
                self.context.set_tensor_address(name, self.buffers[name].ensure(results[name].nbytes))
            if not self.context.execute_async_v3(stream_handle=int(self.stream)):
                raise BackendError("TensorRT execute_async_v3 failed (see the TensorRT log)")
            out = results[self.output_name]
            cuda_call(
                cudart.cudaMemcpyAsync(
                    out.ctypes.data, self.buffers[self.output_name].ptr, out.nbytes, to_host, self.stream
                ),
                "copy to host",
            )
            cuda_call(cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        return out.astype(np.float32, copy=False)

    def __del__(self) -> None:
        for buffer in getattr(self, "buffers", {}).values():
            try:
                buffer.free()
            except Exception:  # interpreter shutdown: the driver may already be gone
                pass
