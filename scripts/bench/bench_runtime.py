#!/usr/bin/env python
"""Benchmark the torch-free runtime on an export artifact: cold start and embeddings/s.

    python scripts/bench/bench_runtime.py ARTIFACT_DIR [--json OUT] [--reps 5] [--threads N]

Cold start is measured in fresh subprocesses (import lame_runtime + Embedder(...) + the first
vector; torch and transformers are blocked there, so an accidental import fails loudly).
Throughput runs every (precision, modality, batch) configuration once per repetition, in a
rotating order, and reports the median: slow drift (thermal, other load) then hits every
configuration alike instead of whichever happened to run last.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from lame_runtime.timing import cold_start

TEXTS = [
    "the digits are 1 and 2",
    "the largest digit is 8",
    "the odd digits add up to 18",
    "the digits are in increasing order",
    "there are three digits above 4",
    "the digits span a range of 6",
    "the sum of the digits is 23",
    "the digits are 0 and 9",
]


def make_inputs(embedder, batch: int, modality: str) -> dict:
    if modality == "text":
        return {"texts": [TEXTS[i % len(TEXTS)] for i in range(batch)]}
    cfg = embedder.preprocessor.image
    rng = np.random.default_rng(0)
    return {
        "images": [rng.integers(0, 256, (cfg.height, cfg.width, 3), dtype=np.uint8) for _ in range(batch)]
    }


def calls_for(embedder, inputs: dict, min_seconds: float) -> int:
    """Warm up, then choose a call count so one measurement lasts about ``min_seconds``."""
    embedder.encode_queries(**inputs)
    start = time.perf_counter()
    embedder.encode_queries(**inputs)
    once = max(time.perf_counter() - start, 1e-6)
    return max(1, int(np.ceil(min_seconds / once)))


def measure(embedder, inputs: dict, calls: int, batch: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        embedder.encode_queries(**inputs, batch_size=batch)
    return calls * batch / (time.perf_counter() - start)


def throughput(
    artifact: Path,
    precisions: list[str],
    batches: list[int],
    reps: int,
    min_seconds: float,
    threads: int,
    image_batches: list[int] | None = None,
) -> list[dict]:
    from lame_runtime import Embedder, RuntimeOptions

    configs = []
    for precision in precisions:
        # spin=False: the precisions' sessions are interleaved in one process, and idle
        # spinning workers of one would steal the cores of the one being timed.
        embedder = Embedder(
            artifact, precision=precision, options=RuntimeOptions(threads=threads or None, spin=False)
        )
        for modality in ("text", "image"):
            for batch in batches if modality == "text" or image_batches is None else image_batches:
                inputs = make_inputs(embedder, batch, modality)
                configs.append(
                    {
                        "precision": precision,
                        "modality": modality,
                        "batch": batch,
                        "embedder": embedder,
                        "inputs": inputs,
                        "calls": calls_for(embedder, inputs, min_seconds),
                        "runs": [],
                    }
                )
    for rep in range(reps):
        shift = rep % len(configs)  # rotate the order each repetition
        for config in configs[shift:] + configs[:shift]:
            config["runs"].append(
                measure(config["embedder"], config["inputs"], config["calls"], config["batch"])
            )
    return [
        {
            "precision": c["precision"],
            "modality": c["modality"],
            "batch": c["batch"],
            "emb_per_s": statistics.median(c["runs"]),
            "runs": c["runs"],
        }
        for c in configs
    ]


def render(report: dict) -> str:
    cold = report["cold_start"]
    lines = [
        f"artifact: {report['artifact']}",
        f"machine: {report['env']['cpus']} CPUs, onnxruntime {report['env']['onnxruntime']}, "
        f"threads={report['env']['threads'] or 'ORT default'}",
        "",
    ]
    if cold is not None:
        lines += [
            f"cold start (fresh process, median of {cold['runs']}):",
            f"  import lame_runtime   {cold['import_s'] * 1000:8.1f} ms",
            f"  Embedder(...)        {cold['load_s'] * 1000:8.1f} ms",
            f"  first vector         {cold['first_vector_s'] * 1000:8.1f} ms",
            f"  total (in process)   {cold['total_s'] * 1000:8.1f} ms",
            f"  process wall time    {cold['process_wall_s'] * 1000:8.1f} ms (with interpreter start)",
            "",
        ]
    lines += [
        f"throughput (embeddings/s, median of {report['reps']} interleaved repetitions; "
        "x fp32: ratio to fp32's median, same modality and batch):",
        f"  {'precision':<10}{'modality':<10}{'batch':>6}{'emb/s':>12}{'min':>10}{'max':>10}{'x fp32':>8}",
    ]
    fp32 = {
        (r["modality"], r["batch"]): r["emb_per_s"] for r in report["throughput"] if r["precision"] == "fp32"
    }
    for row in report["throughput"]:
        base = fp32.get((row["modality"], row["batch"]))
        lines.append(
            f"  {row['precision']:<10}{row['modality']:<10}{row['batch']:>6}"
            f"{row['emb_per_s']:>12.1f}{min(row['runs']):>10.1f}{max(row['runs']):>10.1f}"
            + (f"{row['emb_per_s'] / base:>8.2f}" if base else f"{'':>8}")
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifact", type=Path, help="export artifact directory")
    parser.add_argument("--json", dest="json_out", type=Path, help="also write the report here")
    parser.add_argument("--reps", type=int, default=5, help="throughput repetitions (>= 5)")
    parser.add_argument("--cold-runs", type=int, default=3, help="0: skip (bench_cold_start.py has more)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument(
        "--image-batches", type=int, nargs="+", default=None, help="image rows' batches (default: --batches)"
    )
    parser.add_argument(
        "--precisions", nargs="+", default=None, help="default: every precision in the artifact"
    )
    parser.add_argument(
        "--min-seconds", type=float, default=0.2, help="minimum duration of one throughput measurement"
    )
    parser.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0: default)")
    args = parser.parse_args(argv)
    if args.reps < 5:
        parser.error("--reps must be at least 5")

    sys.modules.setdefault("torch", None)  # this script must never pull torch in
    import onnxruntime

    from lame_runtime import Artifact

    artifact = Artifact.open(args.artifact)
    precisions = args.precisions or artifact.precisions
    report = {
        "artifact": str(args.artifact),
        "env": {
            "cpus": os.cpu_count(),
            "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version(),
            "threads": args.threads,
        },
        "reps": args.reps,
        "cold_start": cold_start(args.artifact, args.cold_runs, args.threads) if args.cold_runs else None,
        "throughput": throughput(
            args.artifact,
            precisions,
            args.batches,
            args.reps,
            args.min_seconds,
            args.threads,
            args.image_batches,
        ),
    }
    print(render(report))
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
