"""Cold start per precision: process start -> ``Embedder(...)`` -> first text and image vector.

    python scripts/bench/bench_cold_start.py --model ART [--precisions fp32,int8,int4]
        [--rounds 3] [--threads 2] [--evict] [--options '{"share_weights": false}'] [--json OUT]

What an edge device, a serverless function or a restarted service pays on every start. Each
measurement is a fresh interpreter; rounds interleave the precisions (and the page-cache
states), so load from other processes on the machine hits every column alike. Per process:

* ``python+import``   process start -> ``import lame_runtime`` done (interpreter, NumPy, ORT)
* ``open``            ``Embedder(lazy=True)``: manifest, file checks and hashes (cached per
                      file version), tokenizer
* ``session``         the ONNX Runtime session(s): graph load, optimisation, weight pre-packing
* ``first text``      the first text vector (one row)
* ``first image``     then the first image vector (one row)
* ``total``           process start -> first text vector

``--evict``: also measure with the artifact's own pages dropped from the page cache before each
process (``posix_fadvise(DONTNEED)`` on its files: no root needed and nothing else on the
machine is evicted; pages another process holds mapped stay). Medians are printed; ``--json``
keeps every round. With ``"session_cache"`` in ``--options``, one untimed start per precision
first fills the cache. Torch-free.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CHILD = r"""
import json, sys, time
started = time.time()
import numpy as np
import lame_runtime
from lame_runtime import Embedder, RuntimeOptions
imported = time.time()
model, precision, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
embedder = Embedder(model, precision=precision, options=RuntimeOptions(lazy=True, **options))
opened = time.time()
embedder._load_backend()
if embedder.routes_text and not embedder.uses_routed_graph:
    embedder._load_text_backend()
loaded = time.time()
embedder.encode(["a first query after a cold start"])
text = time.time()
embedder.encode([None], [np.zeros((224, 224, 3), dtype=np.uint8)])
image = time.time()
print(json.dumps({"started": started, "imported": imported, "opened": opened, "loaded": loaded,
                  "text": text, "image": image}))
"""
COLUMNS = ("python+import", "open", "session", "first text", "first image", "total")


def evict(folder: Path) -> None:
    """Drop the artifact's files from the page cache (Linux; a no-op where unsupported)."""
    for path in folder.iterdir():
        if path.is_file() and hasattr(os, "posix_fadvise"):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def measure(model: str, precision: str, threads: int, options: dict, cold: bool) -> dict[str, float]:
    if cold:
        evict(Path(model))
    start = time.time()
    run = subprocess.run(
        [sys.executable, "-c", CHILD, model, precision, json.dumps({"threads": threads, **options})],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": str(threads)},
    )
    if run.returncode != 0:
        raise SystemExit(f"{precision}: {run.stderr.strip().splitlines()[-1:]}")
    t = json.loads(run.stdout.strip().splitlines()[-1])
    return {
        "python+import": t["imported"] - start,
        "open": t["opened"] - t["imported"],
        "session": t["loaded"] - t["opened"],
        "first text": t["text"] - t["loaded"],
        "first image": t["image"] - t["text"],
        "total": t["text"] - start,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="artifact folder")
    parser.add_argument("--precisions", default="fp32,int8,int4")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--evict", action="store_true", help="also with the artifact's pages evicted")
    parser.add_argument("--options", default="{}", help="RuntimeOptions fields as JSON")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    precisions = [p for p in args.precisions.split(",") if p]
    states = ["warm", "evicted"] if args.evict else ["warm"]
    options = json.loads(args.options)
    runs: dict[str, list[dict[str, float]]] = {}
    if options.get("session_cache"):
        for precision in precisions:  # the first start fills the cache; later ones are timed
            measure(args.model, precision, args.threads, options, False)
    for _ in range(args.rounds):
        for precision in precisions:
            for state in states:
                row = measure(args.model, precision, args.threads, options, state == "evicted")
                runs.setdefault(f"{precision} {state}", []).append(row)
                print(f"[cold start] {precision} {state}: total {row['total']:.2f} s", file=sys.stderr)
    print(
        f"{args.model}: cold start, seconds (median of {args.rounds} fresh processes, {args.threads} threads)"
    )
    print(f"{'precision':<16}" + "".join(f"{c:>14}" for c in COLUMNS))
    for name, rows in runs.items():
        medians = {c: statistics.median(r[c] for r in rows) for c in COLUMNS}
        print(f"{name:<16}" + "".join(f"{medians[c]:>14.2f}" for c in COLUMNS))
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "options": options, "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
