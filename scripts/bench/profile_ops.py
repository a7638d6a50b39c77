"""Per-operator time of one graph at several precisions, side by side (ONNX Runtime's profiler).

    python scripts/bench/profile_ops.py --model ART [--precisions fp32,int8] [--rows image]
        [--batch 2] [--runs 5] [--threads 2] [--top 15] [--json OUT]

Where the time of a precision's graph goes: each precision's session (the graph the default
``Embedder`` runs for these rows) is profiled over ``--runs`` calls after a warm-up; kernel
time is summed per operator type and divided by the runs. Printed: ms per call per operator
type for each precision, and the ratio to the first precision. Calls alternate between the
precisions, so load from other processes hits them alike. Torch-free.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np


def feed_for(embedder, rows: str, batch: int) -> dict[str, np.ndarray]:
    if rows == "text":
        return embedder.preprocessor([f"the digits add up to {i}" for i in range(batch)], [None] * batch, 0)
    cfg = embedder.preprocessor.image
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (cfg.height, cfg.width, 3), dtype=np.uint8) for _ in range(batch)]
    return embedder.preprocessor([None] * batch, images, 0)


def session_for(model: str, precision: str, threads: int, folder: str):
    import onnxruntime as ort

    from lame_runtime import Embedder, RuntimeOptions

    embedder = Embedder(model, precision=precision, options=RuntimeOptions(lazy=True))
    graph = "routed" if embedder.uses_routed_graph else "full"
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(folder, precision)
    path = embedder.artifact.file_for(precision, graph=graph)
    return embedder, ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def per_op(profile: Path) -> dict[str, float]:
    """ms per call by operator type, the first (warm-up) call left out."""
    events = json.loads(profile.read_text())
    calls = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")
    warm_end = calls[0][1]
    totals: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            # An If's time is its branch's nodes, which are profiled one by one too.
            if event["ts"] >= warm_end and event["args"].get("op_name") != "If":
                totals[event["args"].get("op_name", "?")] += event["dur"] / 1000 / (len(calls) - 1)
    return dict(totals)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--precisions", default="fp32,int8")
    parser.add_argument("--rows", choices=("image", "text"), default="image")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--json", type=Path, help="also write {precision: {operator: ms per call}} here")
    args = parser.parse_args(argv)
    precisions = [p for p in args.precisions.split(",") if p]
    with tempfile.TemporaryDirectory() as folder:
        sessions = {p: session_for(args.model, p, args.threads, folder) for p in precisions}
        feeds = {}
        for p, (embedder, session) in sessions.items():
            feed = feed_for(embedder, args.rows, args.batch)
            feeds[p] = {i.name: feed[i.name] for i in session.get_inputs()}
        for _ in range(args.runs + 1):  # the first call is the warm-up, left out by per_op
            for p, (_, session) in sessions.items():
                session.run(None, feeds[p])
        tables = {p: per_op(Path(session.end_profiling())) for p, (_, session) in sessions.items()}
    if args.json:
        args.json.write_text(
            json.dumps({"rows": args.rows, "batch": args.batch, "ms_per_call": tables}, indent=1)
        )
    first = precisions[0]
    ops = sorted(
        {op for t in tables.values() for op in t}, key=lambda op: -max(t.get(op, 0) for t in tables.values())
    )
    print(
        f"{args.model}: ms per call by operator type, {args.rows} rows, batch {args.batch}, {args.threads} threads"
    )
    print(
        f"{'operator':<28}"
        + "".join(f"{p:>10}" for p in precisions)
        + "".join(f"{p + '/' + first:>14}" for p in precisions[1:])
    )
    for op in [*ops[: args.top], "total"]:
        values = [sum(t.values()) if op == "total" else t.get(op, 0.0) for t in tables.values()]
        ratios = [f"{v / values[0]:>14.2f}" if values[0] else f"{'-':>14}" for v in values[1:]]
        print(f"{op:<28}" + "".join(f"{v:>10.1f}" for v in values) + "".join(ratios))
    return 0


if __name__ == "__main__":
    sys.exit(main())
