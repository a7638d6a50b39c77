"""Native resolution vs the fixed-size graph at the 2.4 GB probe's widths (Qwen2-VL-2B hidden
sizes, 2 text layers, 12 vision blocks, random weights): emb/s and peak RSS per image size and
for one video, fp32 and int8, through the runtime's Embedder.

Steps (each a process of its own, so each measurement's peak RSS is its own):

  build    one set of random weights -> two checkpoints that differ only in resolution
           (fixed 224x224, and native with max_pixels = 672x448)
  export   fp32 + int8 artifacts of both (parity gates enforced; int8 calibrated on the
           bundled digits, at their native sizes for the native graph)
  measure  one (artifact, precision, input) per process: Embedder load, a warm-up, then
           --rounds timed encodes of --batch rows; prints one JSON line
  table    runs every measurement (interleaved rounds: each configuration in turn, --repeats
           times) and writes docs/results/data/native_probe.csv with --data-out

    python scripts/bench/bench_native.py build --work /tmp/lame_native_probe
    python scripts/bench/bench_native.py export --work /tmp/lame_native_probe
    python scripts/bench/bench_native.py table --work /tmp/lame_native_probe --data-out docs/results/data
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "probes"))

LAYERS, VISION_DEPTH = 2, 12
NATIVE_MAX_PIXELS = 672 * 448
# (label, height, width): what each row's image is before preprocessing. The fixed graph
# squeezes every one to 224x224; the native graph keeps its size (within max_pixels).
IMAGES = [("224x224", 224, 224), ("448x336 (4:3)", 336, 448), ("672x448", 448, 672)]
VIDEO = ("video 8 frames 224x224", 8, 224, 224)


def build(work: Path) -> dict:
    from dataclasses import replace

    import torch
    from probe_2gb import build as probe_build

    from lame.checkpoint import save_checkpoint
    from lame.config import LameConfig, load_preset
    from lame.model import LameModel
    from lame.tokenizer import preprocessor_for

    probe_build(work)  # the digits data and the probe's fixed-size checkpoint (work/ckpt)
    raw = load_preset("2b")["model"]
    raw["backbone"].update(num_layers=LAYERS, vision_depth=VISION_DEPTH)
    config = LameConfig.from_dict(raw)
    native = replace(config, image=replace(config.image, resolution="native", max_pixels=NATIVE_MAX_PIXELS))
    torch.manual_seed(0)
    model = LameModel(native, preprocessor_for(work / "digits", native)).eval()
    from safetensors.torch import load_file

    # The probe's own weights: the two checkpoints differ only in how images are read.
    model.load_state_dict(load_file(str(work / "ckpt" / "model.safetensors")))
    save_checkpoint(
        work / "ckpt_native", model, {"probe": "random weights"}, {"step": 0, "stage": "probe"}, []
    )
    return {"step": "build", "checkpoints": ["ckpt", "ckpt_native"]}


def export(work: Path) -> dict:
    from lame_calibration import build as build_calibration
    from lame_export.pipeline import ExportOptions, export_checkpoint

    out: dict = {"step": "export"}
    for name in ("ckpt", "ckpt_native"):
        start = time.perf_counter()
        # A calibration file, not --calib-data: no retrieval gate (random weights rank at chance).
        calib = build_calibration(work / "digits", work / name, work / f"calib_{name}.npz", size=16)
        options = ExportOptions(int8=True, calib_file=str(calib))
        report = export_checkpoint(work / name, work / f"artifact_{name}", options)
        out[name] = {
            "seconds": round(time.perf_counter() - start, 1),
            "min_cosine": {p: report[p]["min_cosine"] for p in ("fp32", "int8")},
            "failures": report["failures"],
        }
    return out


def rows(kind: str, batch: int):
    import numpy as np

    rng = np.random.default_rng(0)
    if kind == VIDEO[0]:
        _, frames, height, width = VIDEO
        clip = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(frames)]
        return ["a clip"] * batch, None, [clip] * batch
    _, height, width = next(item for item in IMAGES if item[0] == kind)
    picture = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return ["a picture"] * batch, [picture] * batch, None


def peak_rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def measure(work: Path, artifact: str, precision: str, kind: str, batch: int, rounds: int) -> dict:
    from lame_runtime import Embedder, RuntimeOptions

    embedder = Embedder(work / artifact, precision=precision, options=RuntimeOptions(threads=2))
    texts, images, videos = rows(kind, batch)
    if videos is not None and not embedder.preprocessor.image.native:
        return {
            "artifact": artifact,
            "precision": precision,
            "input": kind,
            "skipped": "fixed-size: no video",
        }
    call = (
        (lambda: embedder.encode(texts, images, videos=videos))
        if videos
        else lambda: embedder.encode(texts, images)
    )
    call()  # warm-up
    start = time.perf_counter()
    for _ in range(rounds):
        call()
    seconds = time.perf_counter() - start
    feed = embedder.preprocessor(texts[:1], images[:1] if images else None, 0, videos[:1] if videos else None)
    return {
        "artifact": artifact,
        "precision": precision,
        "input": kind,
        "batch": batch,
        "emb_per_s": round(rounds * batch / seconds, 2),
        "peak_rss_mb": round(peak_rss_mb()),
        # A fixed-size graph gives every image the preset's tokens; a native one, its own.
        "visual_tokens": int((feed["visual_index"] >= 0).sum())
        if "visual_index" in feed
        else embedder.preprocessor.image.num_tokens,
        "sequence": int(feed["input_ids"].shape[1]),
    }


def table(work: Path, batch: int, rounds: int, repeats: int, data_out: str | None) -> dict:
    runs = []
    for _ in range(repeats):  # interleaved: every configuration once per repeat
        for artifact in ("artifact_ckpt", "artifact_ckpt_native"):
            for precision in ("fp32", "int8"):
                for kind in [item[0] for item in IMAGES] + [VIDEO[0]]:
                    args = [sys.executable, __file__, "measure", "--work", str(work), "--artifact", artifact]
                    args += ["--precision", precision, "--input", kind, "--batch", str(batch)]
                    args += ["--rounds", str(rounds)]
                    line = subprocess.run(args, check=True, capture_output=True, text=True).stdout.strip()
                    runs.append(json.loads(line.splitlines()[-1]))
                    print(line, file=sys.stderr, flush=True)
    grouped: dict[tuple, list[dict]] = {}
    for run in runs:
        if "skipped" not in run:
            grouped.setdefault((run["artifact"], run["precision"], run["input"]), []).append(run)
    header = [
        "graph",
        "precision",
        "input",
        "visual tokens / row",
        f"emb/s (batch {batch})",
        "peak RSS MiB",
    ]
    body = []
    for (artifact, precision, kind), items in grouped.items():
        rates = [r["emb_per_s"] for r in items]
        tokens = items[0]["visual_tokens"]
        body.append(
            [
                "native" if artifact.endswith("native") else "fixed 224x224",
                precision,
                kind,
                str(tokens),
                f"{sum(rates) / len(rates):.2f} (n={len(rates)})",
                str(max(r["peak_rss_mb"] for r in items)),
            ]
        )
    if data_out:
        from lame.evaluation.tables import provenance, write_table

        command = f"python scripts/bench/bench_native.py table --batch {batch} --rounds {rounds} --repeats {repeats}"
        write_table(Path(data_out) / "native_probe.csv", header, body, provenance(command))
    return {"step": "table", "rows": body}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("build", "export", "measure", "table"))
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--artifact", default="artifact_ckpt_native")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--input", default=IMAGES[0][0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--data-out", default=None, help="write native_probe.csv here (docs/results/data)")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    result = {
        "build": lambda: build(args.work),
        "export": lambda: export(args.work),
        "measure": lambda: measure(
            args.work, args.artifact, args.precision, args.input, args.batch, args.rounds
        ),
        "table": lambda: table(args.work, args.batch, args.rounds, args.repeats, args.data_out),
    }[args.step]()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    sys.exit(main())
