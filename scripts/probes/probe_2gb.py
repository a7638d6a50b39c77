"""The 2.4 GB export probe: Qwen2-VL-2B widths with fewer blocks, random weights.

Text 1536 x 2 layers (vocab 151,936), vision 1280 x 12 blocks: about 2.4 GB of fp32 weights,
past protobuf's 2 GB limit, so every graph needs external data. Steps (each its own process,
run by scripts/probes/probe_2gb.sh, so each one's peak RSS is its own):

  build   random weights -> checkpoint (no training: export does not depend on weight values)
  export  fp32 + fp16 + int8 + int4 through lame_export, all gates enforced; per stage: seconds, peak
          RSS (VmHWM, reset between stages through /proc/self/clear_refs), file sizes, cosine
  load    Artifact.open + the fp32 graph's verification: without the hash cache (hashes 2.4 GB),
          with it, and with verify=False; then one Embedder encode per precision

Each step prints one JSON line; the shell script collects them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import sys
import time
from pathlib import Path

LAYERS, VISION_DEPTH = 2, 12
# --preset qwen3-vl-2b: Qwen3-VL-2B widths; 3 text layers and 18 vision blocks, the fewest that
# keep all three DeepStack levels (after vision blocks 5, 11, 17 into text layers 0, 1, 2).
BLOCKS = {"2b": (LAYERS, VISION_DEPTH), "qwen3-vl-2b": (3, 18)}


def peak_rss_mb() -> float:
    """VmHWM of this process in MiB (falls back to ru_maxrss where /proc is absent)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def sizes_mb(folder: Path) -> dict[str, float]:
    return {
        p.name: round(p.stat().st_size / 2**20, 1)
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.name.startswith(".")
    }


def build(work: Path, preset: str = "2b") -> dict:
    import torch

    from lame.checkpoint import save_checkpoint
    from lame.cli.data import main as data_main
    from lame.config import LameConfig, load_preset
    from lame.model import LameModel
    from lame.tokenizer import preprocessor_for

    start = time.perf_counter()
    data = work / "digits"
    if not (data / "train.jsonl").is_file():
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries this step's JSON only
            assert (
                data_main(
                    [
                        "digits",
                        str(data),
                        "--train-images",
                        "160",
                        "--eval-per-task",
                        "3",
                        "--vocab-size",
                        "300",
                    ]
                )
                == 0
            )
    raw = load_preset(preset)["model"]
    layers, depth = BLOCKS[preset]
    raw["backbone"].update(num_layers=layers, vision_depth=depth)
    config = LameConfig.from_dict(raw)
    torch.manual_seed(0)
    model = LameModel(config, preprocessor_for(data, config)).eval()
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    save_checkpoint(work / "ckpt", model, {"probe": "random weights"}, {"step": 0, "stage": "probe"}, [])
    return {
        "step": "build",
        "seconds": round(time.perf_counter() - start, 1),
        "fp32_weight_gb": round(weight_bytes / 1e9, 3),
        "peak_rss_mb": round(peak_rss_mb()),
        "checkpoint_mb": sizes_mb(work / "ckpt").get("model.safetensors"),
    }


def export(work: Path, calib_size: int, precisions: tuple[str, ...] = ("fp16", "int8", "int4")) -> dict:
    from lame_calibration import build as build_calibration
    from lame_export.pipeline import ExportOptions, export_checkpoint

    calib = work / "calib.npz"
    build_calibration(work / "digits", work / "ckpt", calib, size=calib_size)
    stages: list[dict] = []
    clock = {"name": "load checkpoint", "start": time.perf_counter()}
    reset_peak()

    def close_stage() -> None:
        stages.append(
            {
                "stage": clock["name"],
                "seconds": round(time.perf_counter() - clock["start"], 1),
                "peak_rss_mb": round(peak_rss_mb()),
            }
        )

    def progress(message: str) -> None:
        close_stage()
        print(f"[probe] {stages[-1]}", file=sys.stderr, flush=True)
        reset_peak()
        clock.update(name=message, start=time.perf_counter())

    start = time.perf_counter()
    # Retrieval gate off (random weights rank at chance); the parity gates are enforced.
    report = export_checkpoint(
        work / "ckpt",
        work / "artifact",
        ExportOptions(
            fp16="fp16" in precisions,
            int8="int8" in precisions,
            int4="int4" in precisions,
            calib_file=str(calib),
        ),
        progress=progress,
    )
    close_stage()
    return {
        "step": "export",
        "seconds": round(time.perf_counter() - start, 1),
        "peak_rss_mb": max(s["peak_rss_mb"] for s in stages),
        "fp32_weight_gb": round(report["fp32_weight_bytes"] / 1e9, 3),
        "external_data": report["external_data"],
        "calib_size": calib_size,
        "min_cosine": {p: report[p]["min_cosine"] for p in ("fp32", *precisions)},
        "shared_weights": report.get("shared_weights"),
        "failures": report["failures"],
        "stages": stages,
        "files_mb": sizes_mb(work / "artifact"),
    }


def load(work: Path) -> dict:
    import numpy as np

    from lame_runtime import Embedder, RuntimeOptions
    from lame_runtime.artifact.contract import HASH_CACHE, Artifact

    folder = work / "artifact"

    def timed_open(verify: bool) -> float:
        start = time.perf_counter()
        artifact = Artifact.open(folder, verify=verify)
        artifact.file_for("fp32")
        return round(time.perf_counter() - start, 2)

    (folder / HASH_CACHE).unlink(missing_ok=True)
    no_cache = timed_open(True)  # hashes tokenizer, config, model.onnx and 2.4 GB of data
    cached = timed_open(True)  # the cache written by the first open
    unverified = timed_open(False)
    encode = {}
    for precision in ("fp32", "fp16", "int8", "int4"):
        start = time.perf_counter()
        embedder = Embedder(folder, precision=precision, options=RuntimeOptions(threads=2))
        vectors = embedder.encode(texts=["a probe query"], images=[np.zeros((224, 224, 3), dtype=np.uint8)])
        encode[precision] = {
            "load_and_encode_s": round(time.perf_counter() - start, 1),
            "finite": bool(np.isfinite(vectors).all()),
        }
        del embedder
    return {
        "step": "load",
        "open_s_without_hash_cache": no_cache,
        "open_s_with_hash_cache": cached,
        "open_s_verify_false": unverified,
        "encode": encode,
        "peak_rss_mb": round(peak_rss_mb()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("build", "export", "load"))
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument(
        "--preset", choices=sorted(BLOCKS), default="2b", help="the widths to probe (build step)"
    )
    parser.add_argument(
        "--precisions", default="fp16,int8,int4", help="comma-separated precisions beside fp32 (export step)"
    )
    parser.add_argument(
        "--calib-size",
        type=int,
        default=16,
        help="int8 calibration samples (16: 2 ORT batches keep the probe short "
        "on a CPU; the default export uses 128)",
    )
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    precisions = tuple(p for p in args.precisions.split(",") if p)
    result = {
        "build": lambda: build(args.work, args.preset),
        "export": lambda: export(args.work, args.calib_size, precisions),
        "load": lambda: load(args.work),
    }[args.step]()
    print(json.dumps(result), flush=True)
    return 0 if not result.get("failures") else 1


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    sys.exit(main())
