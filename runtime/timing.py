"""Timing helpers shared by the benchmarks (torch-free, so runtime-only installs can use them).

* :func:`cold_start` -- a fresh interpreter imports ``lame_runtime``, loads an artifact and
  embeds one text; torch and transformers are blocked there, so an accidental import fails.
* :func:`interleaved_medians` -- every candidate is timed once per round, in a rotating order,
  and the median over rounds is kept: slow drift (thermal, other load) then hits all alike.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

COLD_START = r"""
import sys, time, json
sys.modules["torch"] = None; sys.modules["transformers"] = None
t0 = time.perf_counter()
import lame_runtime
t1 = time.perf_counter()
embedder = lame_runtime.Embedder(sys.argv[1], precision=sys.argv[3],
    options=lame_runtime.RuntimeOptions(threads=int(sys.argv[2]) or None))
t2 = time.perf_counter()
vector = embedder.encode(texts=["the digits are 1 and 2"])
t3 = time.perf_counter()
assert vector.shape == (1, embedder.dim)
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_vector_s": t3 - t2,
                  "total_s": t3 - t0}))
"""


def cold_start(
    artifact: str | Path, runs: int = 3, threads: int = 0, precision: str = "auto"
) -> dict[str, Any]:
    """Median seconds of import / load / first vector over ``runs`` fresh processes."""
    results = []
    for _ in range(runs):
        start = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", COLD_START, str(artifact), str(threads), precision],
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - start
        if out.returncode != 0:
            raise RuntimeError(f"cold-start subprocess failed:\n{out.stderr}")
        result = json.loads(out.stdout.strip().splitlines()[-1])
        result["process_wall_s"] = wall
        results.append(result)
    keys = results[0].keys()
    return {"runs": len(results), **{k: statistics.median(r[k] for r in results) for k in keys}}


def interleaved_medians(
    candidates: dict[str, Callable[[], object]],
    reps: int,
    sync: Callable[[], None] = lambda: None,
    warmup: int = 1,
) -> dict[str, dict[str, Any]]:
    """-> {name: {"median_s", "runs_s"}}; ``sync`` waits for queued GPU work, if any."""
    if reps < 1:
        raise ValueError("reps must be >= 1")
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    sync()
    names = list(candidates)
    runs: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            candidates[name]()
            sync()
            runs[name].append(time.perf_counter() - start)
    return {name: {"median_s": statistics.median(r), "runs_s": r} for name, r in runs.items()}
