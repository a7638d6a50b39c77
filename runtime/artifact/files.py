"""The files of an export artifact: safe paths, ONNX external-data references, cached hashes.

No ``onnx`` package here (the runtime does not depend on it): the external-data references of
a graph are read with a small protobuf wire-format walker that skips tensor payloads by length,
so a 2 GB graph is never parsed or copied; only its structure is visited.
"""

from __future__ import annotations

import json
import mmap
import os
import threading
from pathlib import Path
from typing import Any, Iterator

from lame_runtime.artifact.paths import contained_path
from lame_runtime.errors import ArtifactError
from lame_runtime.persist import atomic_write_json, sha256

HASH_CACHE = ".lame_hashes.json"


# ------------------------------------------------------------------------------ safe paths
def member_path(root: Path, relative: object, what: str) -> Path:
    """``root / relative`` if ``relative`` plainly names a file inside ``root`` (no ``..``);
    ArtifactError if not."""
    return contained_path(root, relative, what, folder="artifact", error=ArtifactError, allow_dotdot=False)


# ------------------------------------------------------------- ONNX external-data references
# Field numbers from onnx.proto (checked against onnx's descriptors in the tests).
_MODEL_GRAPH, _MODEL_FUNCTIONS = 7, 25
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_SPARSE_INITIALIZER = 1, 5, 15
_NODE_ATTRIBUTE, _FUNCTION_NODE = 5, 7
_ATTR_TENSOR, _ATTR_GRAPH, _ATTR_TENSORS, _ATTR_GRAPHS = 5, 6, 10, 11
_ATTR_SPARSE_TENSOR, _ATTR_SPARSE_TENSORS = 22, 23
_SPARSE_VALUES, _SPARSE_INDICES = 1, 2
_TENSOR_EXTERNAL_DATA, _ENTRY_KEY, _ENTRY_VALUE = 13, 1, 2


class _Wire:
    def __init__(self, buffer: mmap.mmap, path: Path) -> None:
        self.buffer, self.path = buffer, path

    def _varint(self, pos: int, end: int) -> tuple[int, int]:
        result = shift = 0
        while True:
            if pos >= end or shift > 63:
                raise ArtifactError(f"{self.path} is not a valid ONNX file (truncated varint)")
            byte = self.buffer[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result, pos
            shift += 7

    def fields(self, start: int, end: int) -> Iterator[tuple[int, int, int]]:
        """(field number, start, end) of each length-delimited field in [start, end)."""
        pos = start
        while pos < end:
            key, pos = self._varint(pos, end)
            number, wire = key >> 3, key & 7
            if wire == 0:
                _, pos = self._varint(pos, end)
            elif wire == 1:
                pos += 8
            elif wire == 5:
                pos += 4
            elif wire == 2:
                length, pos = self._varint(pos, end)
                if pos + length > end:
                    raise ArtifactError(f"{self.path} is not a valid ONNX file (truncated)")
                yield number, pos, pos + length
                pos += length
            else:
                raise ArtifactError(f"{self.path} is not a valid ONNX file (wire type {wire})")
        if pos != end:
            raise ArtifactError(f"{self.path} is not a valid ONNX file (truncated field)")

    def text(self, start: int, end: int) -> str:
        return bytes(self.buffer[start:end]).decode("utf-8", errors="replace")


def _tensor_locations(wire: _Wire, start: int, end: int) -> Iterator[str]:
    for number, s, e in wire.fields(start, end):
        if number == _TENSOR_EXTERNAL_DATA:
            entry = {k: wire.text(a, b) for k, a, b in wire.fields(s, e)}
            if entry.get(_ENTRY_KEY) == "location" and _ENTRY_VALUE in entry:
                yield entry[_ENTRY_VALUE]


def _sparse_locations(wire: _Wire, start: int, end: int) -> Iterator[str]:
    for number, s, e in wire.fields(start, end):
        if number in (_SPARSE_VALUES, _SPARSE_INDICES):
            yield from _tensor_locations(wire, s, e)


def _node_locations(wire: _Wire, start: int, end: int) -> Iterator[str]:
    for number, s, e in wire.fields(start, end):
        if number != _NODE_ATTRIBUTE:
            continue
        for field, a, b in wire.fields(s, e):
            if field in (_ATTR_TENSOR, _ATTR_TENSORS):
                yield from _tensor_locations(wire, a, b)
            elif field in (_ATTR_GRAPH, _ATTR_GRAPHS):
                yield from _graph_locations(wire, a, b)
            elif field in (_ATTR_SPARSE_TENSOR, _ATTR_SPARSE_TENSORS):
                yield from _sparse_locations(wire, a, b)


def _graph_locations(wire: _Wire, start: int, end: int) -> Iterator[str]:
    for number, s, e in wire.fields(start, end):
        if number == _GRAPH_INITIALIZER:
            yield from _tensor_locations(wire, s, e)
        elif number == _GRAPH_SPARSE_INITIALIZER:
            yield from _sparse_locations(wire, s, e)
        elif number == _GRAPH_NODE:
            yield from _node_locations(wire, s, e)


def external_data_locations(path: str | Path) -> list[str]:
    """Every distinct external-data ``location`` the ONNX graph at ``path`` refers to, in order
    of first appearance (initializers, Constant/attribute tensors, subgraphs, functions)."""
    path = Path(path)
    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            raise ArtifactError(f"{path} is empty, not an ONNX graph")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
            wire = _Wire(buffer, path)
            found: dict[str, None] = {}
            for number, s, e in wire.fields(0, len(buffer)):
                if number == _MODEL_GRAPH:
                    locations = _graph_locations(wire, s, e)
                elif number == _MODEL_FUNCTIONS:
                    locations = (
                        loc
                        for field, a, b in wire.fields(s, e)
                        if field == _FUNCTION_NODE
                        for loc in _node_locations(wire, a, b)
                    )
                else:
                    continue
                for location in locations:
                    found.setdefault(location)
    return list(found)


# ------------------------------------------------------------------------------ hash cache
class HashCache:
    """sha256 of artifact files, computed once per file version.

    An entry (size, mtime_ns, ctime_ns, inode, sha256) is trusted only while all four are
    unchanged; anything else is re-hashed. ``ctime`` is what makes a rewrite visible: the kernel
    sets it on every write or metadata change and, unlike mtime, no user call (``touch -d``,
    ``os.utime``, ``cp -p``, ``rsync -t``) can set it back, so a file rewritten in place with
    its size and mtime restored is re-hashed. What the cache does not protect against: anyone
    who can write the artifact folder can also edit ``.lame_hashes.json`` itself (verify what
    you did not write yourself by deleting that file, or with a fresh copy), and a system
    clock set back by root. Entries live in ``.lame_hashes.json``
    beside the manifest (written atomically); where the folder is read-only they are kept in
    this process only. ``hashed`` counts the files actually read, for tests and benchmarks.
    """

    _memory: dict[str, dict[str, Any]] = {}  # read-only folders: absolute path -> entry, per process
    _lock = threading.Lock()
    hashed = 0

    def __init__(self, root: Path):
        self.root = root
        self.file = root / HASH_CACHE
        self.entries = self._read()
        self.dirty = False

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.file.read_text())
        except (OSError, ValueError, RecursionError):
            return {}  # absent or unreadable: it is only a cache
        entries = data.get("files") if isinstance(data, dict) else None
        return entries if isinstance(entries, dict) else {}

    @staticmethod
    def _stamp(path: Path) -> dict[str, int]:
        stat = path.stat()
        return {
            "bytes": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "ctime_ns": stat.st_ctime_ns,
            "inode": stat.st_ino,
        }

    def digest(self, relative: str) -> str:
        path = self.root / relative
        stamp = self._stamp(path)
        for entry in (self.entries.get(relative), HashCache._memory.get(str(path.resolve()))):
            if (
                isinstance(entry, dict)
                and all(entry.get(k) == v for k, v in stamp.items())
                and isinstance(entry.get("sha256"), str)
            ):
                return str(entry["sha256"])
        digest = sha256(path)
        with HashCache._lock:
            HashCache.hashed += 1
        if self._stamp(path) == stamp:  # unchanged while we read it: safe to remember
            entry = {**stamp, "sha256": digest}
            self.entries[relative] = entry
            HashCache._memory[str(path.resolve())] = entry
            self.dirty = True
        return digest

    def save(self) -> None:
        if not self.dirty:
            return
        try:
            atomic_write_json(self.file, {"version": 1, "files": self.entries}, indent=None)
        except OSError:
            pass  # read-only artifact folder: the in-process entries still avoid re-hashing
        self.dirty = False

    @staticmethod
    def write(root: Path, hashes: dict[str, str]) -> None:
        """Seed the cache with hashes the exporter computed (so the first load is free too)."""
        entries = {rel: {**HashCache._stamp(root / rel), "sha256": digest} for rel, digest in hashes.items()}
        atomic_write_json(root / HASH_CACHE, {"version": 1, "files": entries}, indent=None)
