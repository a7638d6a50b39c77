"""One copy of the weights on disk: the text graph's tensors point into the full graph's data.

The text-only graph is the full graph minus the vision tower, so every language-model weight
it holds is also in the full graph, byte for byte (same conversion: fp16 casts and int8
per-channel symmetric weights do not depend on the calibration rows). The exporter names
folded constants itself (``val_18`` in one graph, ``val_23`` in the other), so tensors are
matched by content (dtype, shape, sha256 of the bytes), not by name.

After ``share_text_weights`` a text-graph initializer that matches a full-graph one has
``location = model.onnx.data`` with that tensor's offset and length; what is the text graph's
own (activation scales of its calibration, a few folded shapes) stays in its own ``.data`` file,
rewritten compact, or inline when that file would be empty. The manifest then lists both data
files for the text graph, so the artifact contract hashes the shared file before the text graph
loads, and the runtime (``lame_runtime.engines.shared_weights``) maps it once for both sessions.
"""

from __future__ import annotations

import hashlib
import mmap
from pathlib import Path
from typing import Any

from lame_export.precision import data_file

ALIGN = 4096  # ONNX Runtime memory-maps external data at page-aligned offsets


def _entries(tensor) -> dict[str, str]:
    return {e.key: e.value for e in tensor.external_data}


def _set_entries(tensor, entries: dict[str, str]) -> None:
    del tensor.external_data[:]
    for key, value in entries.items():
        item = tensor.external_data.add()
        item.key, item.value = key, value


def _external(graph) -> list:
    from onnx import TensorProto

    return [t for t in graph.initializer if t.data_location == TensorProto.EXTERNAL]


def _key(tensor, blob: bytes) -> tuple:
    return (tensor.data_type, tuple(tensor.dims), len(blob), hashlib.sha256(blob).digest())


def share_text_weights(full: Path, text: Path) -> dict:
    """Point the text graph's weights that the full graph also holds at the full graph's data.

    Both graphs must use external data (a single ``<graph>.data`` each). Returns
    ``{"shared_bytes", "own_bytes", "shared_tensors", "own_tensors"}``.
    """
    import onnx

    full, text = Path(full), Path(text)
    folder = full.parent
    full_data, text_data = folder / data_file(full), folder / data_file(text)
    full_proto = onnx.load(str(full), load_external_data=False)
    text_proto = onnx.load(str(text), load_external_data=False)
    with open(full_data, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as full_map:
        index: dict[Any, dict[str, str]] = {}
        for tensor in _external(full_proto.graph):
            entries = _entries(tensor)
            if entries.get("location") != full_data.name:
                continue
            start, length = int(entries.get("offset", 0)), int(entries["length"])
            index.setdefault(
                _key(tensor, full_map[start : start + length]),
                {"location": full_data.name, "offset": str(start), "length": str(length)},
            )
    report = {"shared_bytes": 0, "own_bytes": 0, "shared_tensors": 0, "own_tensors": 0}
    own: list[tuple] = []
    with open(text_data, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as text_map:
        for tensor in _external(text_proto.graph):
            entries = _entries(tensor)
            start, length = int(entries.get("offset", 0)), int(entries["length"])
            blob = text_map[start : start + length]
            match = index.get(_key(tensor, blob))
            if match is not None:
                _set_entries(tensor, match)
                report["shared_bytes"] += length
                report["shared_tensors"] += 1
            else:
                own.append((tensor, bytes(blob)))
                report["own_bytes"] += length
                report["own_tensors"] += 1
    _rewrite_own(text_proto, own, text_data)
    onnx.save(text_proto, str(text))  # structure only: the tensors keep their references
    return report


def _rewrite_own(proto, own: list[tuple], text_data: Path) -> None:
    """The text graph's own tensors into a fresh compact ``.data`` (none left: the file goes)."""
    from onnx import TensorProto

    if not own:
        text_data.unlink()
        return
    staged = text_data.with_name(f".{text_data.name}.tmp")
    with open(staged, "wb") as handle:
        for tensor, blob in own:
            offset = -(-handle.tell() // ALIGN) * ALIGN
            handle.write(b"\0" * (offset - handle.tell()))
            handle.write(blob)
            _set_entries(
                tensor, {"location": text_data.name, "offset": str(offset), "length": str(len(blob))}
            )
            tensor.data_location = TensorProto.EXTERNAL
    staged.replace(text_data)
