"""Corpus-scale measurements (text-row cost, routing, throughput): ratios printed side by side, JSON on request.

    # text-only row cost / image row cost, with and without routing to the text graph
    python scripts/bench/bench_corpus.py text-cost ARTIFACT [--batches 1 8] [--threads 2]
    # same on raw sessions: a full graph vs a text graph exported separately (big probes)
    python scripts/bench/bench_corpus.py text-cost ARTIFACT --text-graph model_text.onnx
    # Embedder.encode / raw session throughput, image files at batch 32, ORT on one thread
    python scripts/bench/bench_corpus.py throughput ARTIFACT [--images 2048] [--batch 32]
    # only the text graph of a checkpoint (then text-cost --text-graph on its old artifact)
    python scripts/bench/bench_corpus.py export-text-graph CKPT OUT/model_text.onnx
    # lame-search index over N synthetic images: items/s, peak RSS, kill + --resume equality
    python scripts/bench/bench_corpus.py index ARTIFACT --count 100000 --work DIR

Timings are medians over repetitions (no timed asserts anywhere: this is a script).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TEXT = "find the image where the digits add up to 9"


def _median_seconds(call, reps: int) -> float:
    call()  # warm-up: session creation, first-run allocations
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _image(cfg, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (cfg.height, cfg.width, 3), np.uint8)


# ----------------------------------------------------------------------------- text-cost
def text_cost(args) -> dict:
    from lame_runtime import Embedder, RuntimeOptions

    results = {}
    if args.text_graph:  # raw sessions: the artifact's full graph vs a separate text graph
        import onnxruntime as ort

        embedder = Embedder(
            args.artifact, options=RuntimeOptions(threads=args.threads, lazy=True, route_text=False)
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        full = ort.InferenceSession(
            str(embedder.artifact.file_for("fp32")), options, providers=["CPUExecutionProvider"]
        )
        text = ort.InferenceSession(str(args.text_graph), options, providers=["CPUExecutionProvider"])
        cfg = embedder.preprocessor.image
        for batch in args.batches:
            text_feed = embedder.preprocessor([TEXT] * batch, None)
            image_feed = embedder.preprocessor([TEXT] * batch, [_image(cfg, i) for i in range(batch)])
            slim = {k: text_feed[k] for k in ("input_ids", "attention_mask")}
            image_s = _median_seconds(lambda: full.run(None, image_feed), args.reps)
            full_text_s = _median_seconds(lambda: full.run(None, text_feed), args.reps)
            routed_s = _median_seconds(lambda: text.run(None, slim), args.reps)
            results[f"b{batch}"] = _ratios(image_s, full_text_s, routed_s)
        return {
            "mode": "sessions",
            "artifact": str(args.artifact),
            "threads": args.threads,
            "text_graph": str(args.text_graph),
            "results": results,
        }
    routed = Embedder(args.artifact, options=RuntimeOptions(threads=args.threads))
    unrouted = Embedder(args.artifact, options=RuntimeOptions(threads=args.threads, route_text=False))
    if not routed.routes_text:
        raise SystemExit("error: the artifact has no text graph (re-export it, or pass --text-graph)")
    cfg = routed.preprocessor.image
    for batch in args.batches:
        texts = [TEXT] * batch
        images = [_image(cfg, i) for i in range(batch)]
        image_s = _median_seconds(lambda: unrouted.encode(texts, images), args.reps)
        full_text_s = _median_seconds(lambda: unrouted.encode(texts), args.reps)
        routed_s = _median_seconds(lambda: routed.encode(texts), args.reps)
        results[f"b{batch}"] = _ratios(image_s, full_text_s, routed_s)
    return {
        "mode": "Embedder.encode",
        "artifact": str(args.artifact),
        "threads": args.threads,
        "results": results,
    }


def _ratios(image_s: float, full_text_s: float, routed_s: float) -> dict:
    return {
        "image_ms": round(image_s * 1e3, 3),
        "text_full_graph_ms": round(full_text_s * 1e3, 3),
        "text_routed_ms": round(routed_s * 1e3, 3),
        "ratio_before": round(full_text_s / image_s, 3),
        "ratio_routed": round(routed_s / image_s, 3),
    }


# ----------------------------------------------------------------------------- throughput
def write_images(
    folder: Path, count: int, height: int, width: int, suffix: str = ".png", start: int = 0
) -> list[Path]:
    """Synthetic photos (smooth colour fields + noise) at the given size."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(start)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    paths = []
    for i in range(start, start + count):
        phase = rng.uniform(0, 6, 3)
        base = (
            np.stack([np.sin(6 * x + phase[0]), np.cos(9 * y + phase[1]), np.sin(4 * (x + y) + phase[2])], -1)
            * 0.5
            + 0.5
        )
        noisy = base * 255 + rng.normal(0, 10, (height, width, 3))
        path = folder / f"{i // 1000:04d}" / f"img_{i:07d}{suffix}"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def throughput(args) -> dict:
    import onnxruntime as ort

    from lame_runtime import Embedder, RuntimeOptions
    from lame_runtime.inputs.pipeline import PipelineOptions

    embedder = Embedder(
        args.artifact, options=RuntimeOptions(threads=1, pipeline=PipelineOptions(workers=args.workers))
    )
    cfg = embedder.preprocessor.image
    with tempfile.TemporaryDirectory() as tmp:
        if args.arrays:  # decoded arrays at the model resolution (scripts/bench/bench_runtime.py's)
            paths = [_image(cfg, i) for i in range(args.images)]
        else:
            paths = [
                str(p)
                for p in write_images(Path(tmp), args.images, cfg.height * args.scale, cfg.width * args.scale)
            ]
        batch = args.batch
        feeds = [embedder.preprocessor(None, paths[i : i + batch]) for i in range(0, len(paths), batch)]
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(
            str(embedder.artifact.file_for("fp32")), options, providers=["CPUExecutionProvider"]
        )

        def raw():
            for feed in feeds:
                session.run(None, feed)

        def serial():  # the pre-pipeline path: decode, then infer, one batch after the other
            for i in range(0, len(paths), batch):
                embedder.infer(embedder.preprocessor(None, paths[i : i + batch], i))

        def pipelined():
            embedder.encode(images=paths, batch_size=batch)

        raw_s = _median_seconds(raw, args.reps)
        serial_s = _median_seconds(serial, args.reps)
        pipelined_s = _median_seconds(pipelined, args.reps)
    count = len(paths)
    return {
        "artifact": str(args.artifact),
        "images": count,
        "batch": batch,
        "inputs": "uint8 arrays at the model resolution" if args.arrays else "PNG files",
        "image_size": [cfg.height, cfg.width]
        if args.arrays
        else [cfg.height * args.scale, cfg.width * args.scale],
        "decode_workers": embedder.pipeline.workers,
        "ort_threads": 1,
        "raw_images_per_s": round(count / raw_s, 1),
        "serial_encode_images_per_s": round(count / serial_s, 1),
        "pipelined_encode_images_per_s": round(count / pipelined_s, 1),
        "ratio_serial": round(raw_s / serial_s, 3),
        "ratio_pipelined": round(raw_s / pipelined_s, 3),
    }


# ----------------------------------------------------------------------------- index
def _run_index(args, images: Path, out: Path, extra: list[str], kill_at: int | None = None) -> dict:
    command = [
        sys.executable,
        "-m",
        "lame_runtime.cli.search",
        "index",
        "--model",
        str(args.artifact),
        "--images",
        str(images),
        "--out",
        str(out),
        "--batch-size",
        str(args.batch),
        "--checkpoint-every",
        str(args.checkpoint_every),
        "--no-progress",
        *extra,
    ]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    peak_kb = 0
    killed = False
    while process.poll() is None:
        peak_kb = max(peak_kb, _rss_kb(process.pid))
        if kill_at is not None and _done(out) >= kill_at:
            process.send_signal(signal.SIGKILL)
            killed = True
            break
        time.sleep(0.2)
    stdout, stderr = process.communicate()
    seconds = time.perf_counter() - start
    if not killed and process.returncode != 0:
        raise SystemExit(f"error: lame-search index failed: {stderr.decode()[-2000:]}")
    return {
        "seconds": round(seconds, 1),
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "killed_at": _done(out) if killed else None,
        "summary": json.loads(stdout.decode().strip().splitlines()[-1]) if not killed else None,
    }


def _rss_kb(pid: int) -> int:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _done(out: Path) -> int:
    from lame_runtime.retrieval.index import index_files

    try:
        meta = json.loads(index_files(out)[1].read_text())
        return int(meta["info"]["build"]["next"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def index_run(args) -> dict:
    from lame_runtime.retrieval.index import Index

    work = Path(args.work)
    images = work / "images"
    existing = sorted(images.rglob("*.png")) if images.is_dir() else []
    if len(existing) < args.count:
        start = time.perf_counter()
        write_images(images, args.count - len(existing), args.height, args.width, start=len(existing))
        print(f"wrote {args.count} images in {time.perf_counter() - start:.0f}s", file=sys.stderr)
    full = _run_index(args, images, work / "full", ["--force"])
    items_per_s = args.count / full["seconds"]
    resumed = work / "resumed"
    killed = _run_index(args, images, resumed, ["--force"], kill_at=args.count // 2)
    finished = _run_index(args, images, resumed, ["--resume"])
    a, b = Index.load(work / "full"), Index.load(resumed)
    same_ids = a.ids == b.ids
    same_vectors = bool(np.array_equal(a.vectors(), b.vectors()))
    return {
        "count": args.count,
        "image_size": [args.height, args.width],
        "batch": args.batch,
        "ort_threads": args.threads,
        "uninterrupted": {**full, "items_per_s": round(items_per_s, 1)},
        "killed": killed,
        "resumed": finished,
        "resumed_equals_uninterrupted": {"ids": same_ids, "vectors": same_vectors},
    }


def export_text_graph(args) -> dict:
    """Only the fp32 text graph of a checkpoint (for measuring a big probe whose artifact was
    exported before text graphs existed, without re-exporting all of it)."""
    import lame
    from lame_export.graphs.text import export_text_onnx
    from lame_export.spec import ExportSpec

    start = time.perf_counter()
    model = lame.load(args.ckpt)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    export_text_onnx(model, args.out, ExportSpec(), external_data=True)
    return {
        "ckpt": str(args.ckpt),
        "text_graph": str(args.out),
        "seconds": round(time.perf_counter() - start, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    cost = sub.add_parser("text-cost")
    cost.add_argument("artifact", type=Path)
    cost.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    cost.add_argument("--threads", type=int, default=2)
    cost.add_argument("--reps", type=int, default=20)
    cost.add_argument("--text-graph", type=Path, default=None)
    thr = sub.add_parser("throughput")
    thr.add_argument("artifact", type=Path)
    thr.add_argument("--images", type=int, default=2048)
    thr.add_argument("--batch", type=int, default=32)
    thr.add_argument(
        "--scale", type=int, default=2, help="Image files at this multiple of the model resolution (resized)."
    )
    thr.add_argument("--workers", type=int, default=None)
    thr.add_argument(
        "--arrays",
        action="store_true",
        help="Feed uint8 arrays at the model resolution instead of PNG files.",
    )
    thr.add_argument("--reps", type=int, default=3)
    idx = sub.add_parser("index")
    idx.add_argument("artifact", type=Path)
    idx.add_argument("--count", type=int, default=100_000)
    idx.add_argument("--work", type=Path, required=True)
    idx.add_argument("--height", type=int, default=32)
    idx.add_argument("--width", type=int, default=128)
    idx.add_argument("--batch", type=int, default=64)
    idx.add_argument("--checkpoint-every", type=int, default=8192)
    idx.add_argument("--threads", type=int, default=1)
    txt = sub.add_parser("export-text-graph")
    txt.add_argument("ckpt", type=Path)
    txt.add_argument("out", type=Path)
    for p in (cost, thr, idx, txt):
        p.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    report = {
        "text-cost": text_cost,
        "throughput": throughput,
        "index": index_run,
        "export-text-graph": export_text_graph,
    }[args.mode](args)
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
