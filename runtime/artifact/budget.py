"""What an artifact costs in memory, per precision: file sizes, the weights a routed Embedder
keeps resident (shared files counted once), and optionally the measured peak RSS of a first
text and image query in a fresh process, with the seconds to load and to the first vector
(``lame-search info --measure``,
``scripts/bench/bench_memory.py``).

"Resident weights" is an upper bound from the files: ONNX Runtime maps external data, so only
the pages a query touches become resident (a 150k-row token table is mostly never read); the
measured peak is what a device sees.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lame_runtime.artifact.contract import Artifact
from lame_runtime.errors import BackendError

# A fresh interpreter per measurement: ru_maxrss is a per-process high-water mark.
_CHILD = r"""
import json, resource, sys, time
import numpy as np
from lame_runtime import Embedder, RuntimeOptions

model, precision, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
start = time.perf_counter()
emb = Embedder(model, precision=precision, options=RuntimeOptions(verify=False, **options))
opened = time.perf_counter() - start
emb.encode(texts=["a first query"])
first = time.time()
first_s = time.perf_counter() - start - opened
rng = np.random.default_rng(0)
texts = [f"the digits add up to {i}" for i in range(8)]
images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(2)]
start = time.perf_counter()
emb.encode(texts=texts)
emb.encode(images=images)
encoded = time.perf_counter() - start
with open("/proc/self/status") as status:
    rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
print(json.dumps({"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                  "end_rss_mb": round(rss / 1024, 1), "open_s": round(opened, 3),
                  "encode_s": round(encoded, 2), "first_vector_s": round(first_s, 4),
                  "first_vector_at": first, "routes_text": emb.routes_text,
                  "routed_graph": emb.uses_routed_graph}))
"""


def measure_peak_rss(artifact: str | Path, precision: str, **options: Any) -> dict[str, Any]:
    """Open ``Embedder(artifact, precision, **options)`` in a fresh process, embed 8 texts and
    2 images, and return its peak and final RSS (MiB) and the seconds to open and to embed.
    Also: ``open_s`` (``Embedder(...)``: verification, tokenizer, sessions), ``first_vector_s``
    (then one text) and ``cold_start_s`` (process start -> that first vector). Linux only
    (reads ``/proc``)."""
    started = time.time()
    run = subprocess.run(
        [sys.executable, "-c", _CHILD, str(artifact), precision, json.dumps(options)],
        capture_output=True,
        text=True,
    )
    if run.returncode != 0:
        last = (run.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise BackendError(f"measuring {precision} of {artifact} failed: {last}")
    measured: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
    measured["cold_start_s"] = round(measured.pop("first_vector_at") - started, 3)
    return measured


def memory_budget(path: str | Path, measure: bool = False) -> list[dict[str, Any]]:
    """One row per precision: full-graph and text-graph file bytes, the unique bytes a routed
    Embedder maps (text weights that live in the full graph's ``.data`` count once), and with
    ``measure`` the peak RSS of a first text and image query."""
    artifact = Artifact.open(path, verify=False)
    files = artifact.spec.files
    rows = []
    for precision in artifact.precisions:
        entry = artifact.models[precision]
        full = [entry["path"], *entry["external_data"]]
        text = (
            [entry["text"]["path"], *entry["text"]["external_data"]]
            if artifact.has_text_graph(precision)
            else []
        )

        # The routed graph (both in one) is structure only: its data is the two graphs'.
        routed = (
            [entry["routed"]["path"], *entry["routed"]["external_data"]]
            if artifact.has_routed_graph(precision)
            else []
        )

        def size(names: list[str]) -> int:
            return sum(files[name].bytes for name in names)

        row: dict[str, Any] = {
            "precision": precision,
            "full_graph_bytes": size(full),
            "text_graph_bytes": size(text),
            "routed_graph_bytes": size(routed[:1]),
            "text_weights_shared": bool(text[1:]) and set(text[1:]) <= set(full[1:]),
            "resident_weights_bytes": size(sorted(set(full) | set(text) | set(routed))),
        }
        if measure:
            row["measured"] = measure_peak_rss(artifact.path, precision)
        rows.append(row)
    return rows
