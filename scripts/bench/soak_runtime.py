"""Soak the torch-free runtime: one Embedder and one Index shared by N threads mixing
``encode``, ``search`` and ``add`` (default 8 threads x 1,000 calls).

Checks (exit code 1 if any fails):
* no call raises;
* every ``encode`` equals the single-threaded result for the same batch;
* every ``search`` of a fixed query set equals the single-threaded result (the vectors the
  threads add are chosen to score below every expected hit, so they never change the answer);
* after the run the index holds exactly the base rows plus every added row;
* resident memory (VmRSS) grows by less than 10 % between the end of a warm-up (the first
  ``--warmup`` calls of every thread) and the end of the run.

Not a timed test: it prints its figures as JSON. Without ``--model`` it builds a tiny trained
artifact first (needs the training extras: torch).

    python scripts/bench/soak_runtime.py [--model ARTIFACT --images DIR] [--threads 8] [--calls 1000]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def build_tiny_artifact(root: Path) -> tuple[Path, Path]:
    from lame.cli.data import main as data_main
    from lame.cli.train import main as train_main
    from lame_export.pipeline import ExportOptions, export_checkpoint

    data, ckpt, artifact = root / "digits", root / "ckpt", root / "artifact"
    assert (
        data_main(
            ["digits", str(data), "--train-images", "160", "--eval-per-task", "3", "--vocab-size", "300"]
        )
        == 0
    )
    assert (
        train_main(
            [
                "--data",
                str(data),
                "--out",
                str(ckpt),
                "--preset",
                "tiny",
                "--max-steps",
                "8",
                "--batch-size",
                "8",
                "--no-progress",
            ]
        )
        == 0
    )
    export_checkpoint(ckpt, artifact, ExportOptions(force=True))
    return artifact, data / "images"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="export artifact (default: build a tiny one)")
    parser.add_argument("--images", help="folder of images for the documents and queries")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--calls", type=int, default=1000, help="calls per thread")
    parser.add_argument(
        "--warmup", type=int, default=100, help="calls per thread before the first memory reading"
    )
    parser.add_argument("--ort-threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", default="4,4,2", help="relative frequency of encode,search,add calls")
    parser.add_argument("--backend", default="auto", help="Index backend (auto, numpy, faiss)")
    args = parser.parse_args(argv)

    from lame_runtime import Embedder, Index, RuntimeOptions

    workdir = tempfile.TemporaryDirectory(prefix="lame_soak_")
    if args.model:
        artifact, images_dir = Path(args.model), Path(args.images)
    else:
        print("building a tiny trained artifact ...", file=sys.stderr)
        artifact, images_dir = build_tiny_artifact(Path(workdir.name))
    images = [str(p) for p in sorted(images_dir.glob("*.png"))[:240]]
    embedder = Embedder(artifact, options=RuntimeOptions(threads=args.ort_threads))
    rng = np.random.default_rng(args.seed)

    # Single-threaded references.
    texts = [f"the digits are {i % 10} and {(i * 7) % 10}" for i in range(24)]
    batches = []
    for b in range(24):
        size = 1 + b % 4
        picks = rng.choice(len(texts), size=size, replace=False)
        if b % 3 == 0:
            batches.append({"texts": [texts[i] for i in picks]})
        elif b % 3 == 1:
            batches.append({"images": [images[200 + i] for i in picks]})
        else:
            batches.append({"texts": [texts[i] for i in picks], "images": [images[200 + i] for i in picks]})
    expected_encode = [embedder.encode(**batch) for batch in batches]
    docs = embedder.encode(images=images[:200], batch_size=32)
    index = Index(embedder.dim, backend=args.backend)
    index.add(docs, [f"doc{i}" for i in range(200)])
    queries = embedder.encode(texts=texts[:16])
    want_scores, want_ids = index.search(queries, k=5)
    floor = float(want_scores[:, -1].min())
    # Vectors to add: every one scores below every expected hit for every query.
    pool = rng.normal(size=(20000, embedder.dim)).astype(np.float32)
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    pool = pool[(pool @ queries.T).max(axis=1) < floor - 0.05]
    if len(pool) < 2:
        print(json.dumps({"error": "could not draw vectors that stay out of the top 5"}))
        return 1

    weights = [float(w) for w in args.weights.split(",")]
    lock = threading.Lock()
    errors: list[str] = []
    counts = {"encode": 0, "search": 0, "add": 0}
    mismatches: list[str] = []
    added: list[str] = []
    readings: dict[str, float] = {}
    barrier = threading.Barrier(args.threads, action=lambda: readings.setdefault("before", rss_mb()))

    def worker(thread: int) -> None:
        local = random.Random(args.seed * 1000 + thread)
        for call in range(args.calls):
            if call == args.warmup:
                barrier.wait()
            op = local.choices(("encode", "search", "add"), weights=weights)[0]
            try:
                if op == "encode":
                    b = local.randrange(len(batches))
                    got = embedder.encode(**batches[b])
                    if not np.array_equal(got, expected_encode[b]):
                        diff = float(np.abs(got - expected_encode[b]).max())
                        with lock:
                            mismatches.append(f"encode batch {b}: max diff {diff:.2e}")
                elif op == "search":
                    scores, found = index.search(queries, k=5)
                    if found != want_ids or not np.allclose(scores, want_scores, atol=1e-6):
                        with lock:
                            mismatches.append(f"search in thread {thread} call {call}")
                else:
                    rows = pool[local.sample(range(len(pool)), k=min(2, len(pool)))]
                    ids = [f"t{thread}.{call}.{j}" for j in range(len(rows))]
                    index.add(rows, ids)
                    with lock:
                        added.extend(ids)
            except Exception as err:  # noqa: BLE001  (a soak reports every failure)
                with lock:
                    errors.append(f"{op} in thread {thread} call {call}: {type(err).__name__}: {err}")
            with lock:
                counts[op] += 1

    start_rss = rss_mb()
    began = time.monotonic()
    workers = [threading.Thread(target=worker, args=(t,)) for t in range(args.threads)]
    for w in workers:
        w.start()
    series = []
    while any(w.is_alive() for w in workers):  # memory over time: a plateau or a leak?
        series.append(round(rss_mb(), 1))
        workers[0].join(timeout=0.5)
    for w in workers:
        w.join()
    wall = time.monotonic() - began
    after = rss_mb()
    before = readings.get("before", start_rss)
    consistent = (
        len(index) == 200 + len(added) == len(set(index.ids))
        and index.vectors().shape == (len(index), embedder.dim)
        and all(i in index for i in added)
    )
    final_ok = index.search(queries, k=5)[1] == want_ids
    growth = (after - before) / before * 100
    summary = {
        "threads": args.threads,
        "calls_per_thread": args.calls,
        "total_calls": sum(counts.values()),
        "calls": counts,
        "errors": len(errors),
        "mismatches": len(mismatches),
        "index_rows": len(index),
        "index_consistent": consistent,
        "final_search_equal": final_ok,
        "rss_mb_start": round(start_rss, 1),
        "rss_mb_after_warmup": round(before, 1),
        "rss_mb_end": round(after, 1),
        "rss_growth_percent": round(growth, 2),
        "rss_mb_every_0.5s": series,
        "wall_s": round(wall, 1),
    }
    print(json.dumps(summary, indent=2))
    for line in (errors + mismatches)[:10]:
        print("  " + line, file=sys.stderr)
    ok = not errors and not mismatches and consistent and final_ok and growth < 10
    workdir.cleanup()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
