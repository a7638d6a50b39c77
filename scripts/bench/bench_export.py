"""Latency of the exported artifact vs PyTorch eager, side by side in one run.

    python scripts/bench/bench_export.py --ckpt runs/lame --artifact runs/lame-onnx [--json out.json]

Interleaved repetitions (each round times every backend once), median of --reps rounds, for
batch 1 and 8 of text+image queries. Prints a table of milliseconds per batch and the ratio
to PyTorch eager. Numbers depend on the machine: quote them with its core count.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import lame
from lame_export.spec import PARITY_TEXTS, sample_image
from lame_runtime import Embedder, RuntimeOptions


def feeds(preprocessor, batch: int):
    h, w = preprocessor.image.height, preprocessor.image.width
    texts = [PARITY_TEXTS[i % len(PARITY_TEXTS)] for i in range(batch)]
    images = [sample_image(i, h, w) for i in range(batch)]
    return preprocessor(texts, images)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--artifact", required=True)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--json", dest="json_out")
    args = parser.parse_args(argv)

    model = lame.load(args.ckpt)
    backends = {"torch eager": lambda feed: _torch(model, feed)}
    for precision in Embedder(args.artifact, options=RuntimeOptions(lazy=True)).artifact.precisions:
        # No idle spinning: several sessions and torch share 2 cores in this one process.
        embedder = Embedder(args.artifact, precision=precision, options=RuntimeOptions(spin=False))
        backends[f"ort {precision}"] = embedder.infer
    results = {}
    for batch in (1, 8):
        feed = feeds(model.preprocessor, batch)
        times = {name: [] for name in backends}
        for fn in backends.values():
            fn(feed)  # warm-up
        for _ in range(args.reps):
            for name, fn in backends.items():
                start = time.perf_counter()
                fn(feed)
                times[name].append(time.perf_counter() - start)
        results[f"batch{batch}"] = {n: 1000 * statistics.median(t) for n, t in times.items()}
    _print(results)
    if args.json_out:
        with open(args.json_out, "w") as handle:
            json.dump({"ms_per_batch": results, "threads": torch.get_num_threads()}, handle, indent=2)
    return results


def _torch(model, feed):
    with torch.no_grad():
        return model(**model.feed_to_tensors(feed)).embedding.numpy()


def _print(results: dict) -> None:
    names = list(next(iter(results.values())))
    print(f"{'backend':<14}" + "".join(f"{b + ' ms':>12}{'vs torch':>10}" for b in results))
    for name in names:
        row = f"{name:<14}"
        for ms in results.values():
            row += f"{ms[name]:>12.2f}{ms['torch eager'] / ms[name]:>9.2f}x"
        print(row)


if __name__ == "__main__":
    main()
