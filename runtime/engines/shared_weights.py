"""One copy of the weights in memory for the full and the text-only graph of a precision.

The exporter writes the text graph's weights as references into the full graph's ``.data``
file (``lame_export.graphs.shared_weights``). Two ONNX Runtime sessions would still each load those
bytes into their own buffers; here the shared file is memory-mapped once, read-only, and every
initializer that lives in it becomes an ``OrtValue`` over that mapping (no copy on the CPU, as
``OrtValue.ortvalue_from_numpy`` documents), handed to both sessions with
``SessionOptions.add_initializer``: ORT then uses the supplied buffer in place
(``initializers_to_share_map`` in ``session_state_utils.cc``).

Pre-packing (MLAS re-lays MatMul weights into its own copy at session creation) would make a
second, private copy per session: sharing pre-packed buffers across sessions needs
``CreateSessionWithPrepackedWeightsContainer``, which ORT's Python API does not expose. So the
sessions that share weights turn it off (``session.disable_prepacking``); the price is measured
by ``scripts/bench/bench_memory.py``. The mapping is file-backed: pages are read on first use
and the kernel may drop and re-read them under memory pressure, as it does for any mmap.

Only tensors of the top-level graph's initializers are shared (where the weights are); a
tensor of a dtype NumPy lacks, or at an offset not aligned for its dtype, is left to ORT.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from lame_runtime.errors import ArtifactError

# onnx TensorProto.DataType -> NumPy (the types ORT's weights come in; others are left to ORT)
NUMPY_TYPES = {
    1: np.float32,
    2: np.uint8,
    3: np.int8,
    4: np.uint16,
    5: np.int16,
    6: np.int32,
    7: np.int64,
    9: np.bool_,
    10: np.float16,
    11: np.float64,
    12: np.uint32,
    13: np.uint64,
    16: np.uint16,
}  # 16 = bfloat16, same-size view
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
# Field numbers from onnx.proto: ModelProto.graph, GraphProto.initializer, TensorProto fields.
_MODEL_GRAPH, _GRAPH_INITIALIZER = 7, 5
_T_DIMS, _T_TYPE, _T_NAME, _T_EXTERNAL, _T_LOCATION = 1, 2, 8, 13, 14
Buffer = mmap.mmap | bytes  # a mapped graph file, read by index and slice


@dataclass(frozen=True)
class ExternalTensor:
    name: str
    data_type: int
    dims: tuple[int, ...]
    location: str
    offset: int
    length: int


def _varint(buf: Buffer, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: Buffer, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field, wire type, value or start, end) of each field in [start, end)."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield number, 0, value, pos
        elif wire == 2:
            length, pos = _varint(buf, pos)
            yield number, 2, pos, pos + length
            pos += length
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise ValueError(f"wire type {wire}")


def _tensor(buf: Buffer, start: int, end: int) -> ExternalTensor | None:
    dims, data_type, name, entries, location = [], 0, "", {}, 0
    for number, wire, a, b in _fields(buf, start, end):
        if number == _T_DIMS:
            if wire == 0:
                dims.append(a)
            else:  # packed
                pos = a
                while pos < b:
                    value, pos = _varint(buf, pos)
                    dims.append(value)
        elif number == _T_TYPE and wire == 0:
            data_type = a
        elif number == _T_NAME and wire == 2:
            name = bytes(buf[a:b]).decode("utf-8")
        elif number == _T_LOCATION and wire == 0:
            location = a
        elif number == _T_EXTERNAL and wire == 2:
            entry = {n: bytes(buf[x:y]).decode("utf-8") for n, w, x, y in _fields(buf, a, b) if w == 2}
            if 1 in entry and 2 in entry:
                entries[entry[1]] = entry[2]
    if location != _EXTERNAL or "location" not in entries or "length" not in entries:
        return None
    return ExternalTensor(
        name,
        data_type,
        tuple(dims),
        entries["location"],
        int(entries.get("offset", 0)),
        int(entries["length"]),
    )


def external_tensors(graph: str | Path) -> list[ExternalTensor]:
    """The top-level initializers of an ONNX graph that live in external data."""
    graph = Path(graph)
    found = []
    try:
        with open(graph, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            for number, wire, a, b in _fields(buf, 0, len(buf)):
                if number == _MODEL_GRAPH and wire == 2:
                    for field, w, x, y in _fields(buf, a, b):
                        if field == _GRAPH_INITIALIZER and w == 2:
                            tensor = _tensor(buf, x, y)
                            if tensor is not None:
                                found.append(tensor)
    except (ValueError, IndexError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{graph} is not a valid ONNX file ({err})") from err
    return found


class SharedWeights:
    """Read-only mappings of data files, and ``OrtValue``s over them, reused by every session
    an ``Embedder`` opens for one precision. Keep it alive as long as those sessions."""

    def __init__(self, folder: str | Path, locations: set[str]):
        self.folder, self.locations = Path(folder), set(locations)
        self._maps: dict[str, np.memmap] = {}
        self._values: dict[tuple[Any, ...], Any] = {}
        self.shared_bytes = 0  # bytes of distinct tensors handed out

    def _map(self, location: str) -> np.memmap:
        if location not in self._maps:
            self._maps[location] = np.memmap(self.folder / location, dtype=np.uint8, mode="r")
        return self._maps[location]

    def _value(self, tensor: ExternalTensor) -> Any:
        import onnxruntime as ort

        key = (tensor.location, tensor.offset, tensor.length, tensor.data_type, tensor.dims)
        if key not in self._values:
            dtype = np.dtype(NUMPY_TYPES[tensor.data_type])
            raw = self._map(tensor.location)[tensor.offset : tensor.offset + tensor.length]
            array = raw.view(dtype).reshape(tensor.dims)
            if tensor.data_type == 16:
                value = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(array, 16)
            else:
                value = ort.OrtValue.ortvalue_from_numpy(array)
            self._values[key] = value
            self.shared_bytes += tensor.length
        return self._values[key]

    def initializers(self, graph: str | Path) -> list[tuple[str, object]]:
        """(name, OrtValue) for each of ``graph``'s initializers stored in a shared file."""
        out = []
        for tensor in external_tensors(graph):
            if tensor.location not in self.locations or tensor.data_type not in NUMPY_TYPES:
                continue
            itemsize = np.dtype(NUMPY_TYPES[tensor.data_type]).itemsize
            count = int(np.prod(tensor.dims)) if tensor.dims else 1
            if tensor.offset % max(itemsize, 1) or count * itemsize != tensor.length:
                continue  # misaligned or packed sub-byte type: ORT loads it itself
            out.append((tensor.name, self._value(tensor)))
        return out

    def apply(self, options: Any, graph: str | Path) -> int:
        """Add the shared initializers of ``graph`` to ``options``; -> how many."""
        pairs = self.initializers(graph)
        for name, value in pairs:
            options.add_initializer(name, value)
        if pairs:
            options.add_session_config_entry("session.disable_prepacking", "1")
        return len(pairs)
