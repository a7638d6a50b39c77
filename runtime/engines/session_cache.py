"""ONNX Runtime's optimized graph, with its pre-packed weights, kept per machine for the next start.

Creating a session optimises the graph (fusions, constant folding, layout) and pre-packs every
weight (MLAS re-lays MatMul weights into its own copy): at 2B widths that is most of a cold
start, and it is the same work on every start. With ``RuntimeOptions(session_cache=DIR)`` the
first session saves what ORT built (``session.optimized_model_filepath`` with
``session.save_external_prepacked_constant_initializers``: the pre-packed blobs go into the
saved graph's ``.data`` file, and ORT memory-maps them back instead of packing again), and later
starts load that file with optimisation off.

Why per machine, not written at export: the saved graph is specific to the CPU it was built on
(ORT warns that NCHWc layouts and pre-packed MLAS formats are hardware specific), so the key
of an entry is the source graph's files (their sha256 from the manifest), the onnxruntime
version, the machine type and the CPU's feature flags. Integrity: an entry records the sha256
of the two files it saved, and they are checked at every load, through the same per-file-version
hash cache as the artifact (``HashCache``: hashed once per file version); an entry that does
not match is ignored and rebuilt. Only for sessions on the CPU provider alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any

from lame_runtime.artifact.files import HashCache
from lame_runtime.persist import atomic_write_json, read_json

ENTRY = "entry.json"
GRAPH = "model.onnx"


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith(("flags", "Features")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def cache_key(sources: dict[str, str]) -> str:
    """``sources``: file name -> sha256 of the graph and its data files (from the manifest)."""
    import onnxruntime as ort

    parts = {
        "sources": dict(sorted(sources.items())),
        "onnxruntime": ort.__version__,
        "machine": platform.machine(),
        "cpu": hashlib.sha256(_cpu_flags().encode()).hexdigest(),
        "format": 1,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def cached_graph(cache_dir: str | Path, key: str) -> Path | None:
    """The saved graph of ``key`` if its files are there and match their recorded sha256."""
    folder = Path(cache_dir) / key
    try:
        entry = read_json(folder / ENTRY)
        hashes = HashCache(folder)
        ok = all(hashes.digest(name) == digest for name, digest in entry["files"].items())
        hashes.save()
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return folder / GRAPH if ok else None


def save_options(options: Any, cache_dir: str | Path, key: str) -> Path:
    """Set ``options`` so that the session it creates saves its optimized graph into a staging
    folder; -> that folder (hand it to :func:`commit` once the session exists)."""
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=cache_dir))
    options.optimized_model_filepath = str(staging / GRAPH)
    options.add_session_config_entry(
        "session.optimized_model_external_initializers_file_name", f"{GRAPH}.data"
    )
    options.add_session_config_entry(
        "session.optimized_model_external_initializers_min_size_in_bytes", "1024"
    )
    options.add_session_config_entry("session.save_external_prepacked_constant_initializers", "1")
    return staging


def commit(staging: Path, cache_dir: str | Path, key: str) -> None:
    """Record the staged files' sha256 and move the entry in place (a concurrent process that
    got there first wins; this one's copy is dropped)."""
    from lame_runtime.persist import sha256

    try:
        files = {p.name: sha256(p) for p in sorted(staging.iterdir()) if p.is_file()}
        if GRAPH not in files:
            raise OSError(f"ONNX Runtime saved no {GRAPH}")
        atomic_write_json(staging / ENTRY, {"files": files})
        HashCache.write(staging, files)
        os.replace(staging, Path(cache_dir) / key)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
