"""Training throughput and memory of real LaME training steps, one mode at a time.

Each mode builds the preset's model with random weights (no hub, no dataset download: a
synthetic image/text dataset is written first) and times ``Trainer._step`` -- the real step:
CPU-built batch moved once to the device, autocast, GradCache chunks, clipping, AdamW -- over
``--steps`` steps after ``--warmup-steps`` untimed ones. Modes are ``+``-joined switches:
``full`` (plain full fine-tuning), ``gc`` (gradient checkpointing), ``chunk`` (GradCache with
``--chunk-size``), ``lora`` (rank ``--lora-rank`` on q/v projections), e.g. ``gc,lora``.

    python scripts/bench/train_throughput.py --preset tiny --device cpu --modes full,gc --steps 2
    python scripts/bench/train_throughput.py --preset 2b --device cuda --precision bf16 \\
        --modes gc,lora --out runs/device          (what scripts/device/device_train.sh runs)

Writes ``train_throughput.json`` (+ ``.png``) under ``--out``: steps/s, samples/s, peak GPU
memory (torch's allocator peak, reset per mode) and the process's peak RSS (monotonic over a
process: compare RSS across separate runs, one mode each).
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SWITCHES = ("full", "gc", "chunk", "lora")


def synthetic_dataset(directory: Path, image_size: tuple[int, int], rows: int = 96) -> Path:
    """Random RGB images with one caption each and one hard negative: enough for throughput."""
    import json

    from PIL import Image

    (directory / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(rows):
        name = f"images/{i:04d}.png"
        pixels = rng.integers(0, 256, (*image_size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(directory / name)
        caption = f"pattern {i % 7} with {i % 5} marks and shade {i % 3}"
        lines.append(
            {
                "query": {"image": name},
                "target": {"text": caption},
                "answer": caption,
                "negatives": [{"text": f"pattern {(i + 1) % 7} with {i % 5} marks"}],
                "instruction": "Find the caption of the image.",
                "task": "synthetic",
            }
        )
    (directory / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in lines))
    return directory


def run_mode(mode: str, args, data_dir: Path, device: torch.device) -> dict:
    from lame.backbones.directory import resolve_model_spec
    from lame.config import LameConfig, load_preset
    from lame.model import LameModel
    from lame.tokenizer import preprocessor_for
    from lame.training.train import TrainConfig, Trainer, _optimizer, set_trainable

    switches = set(mode.split("+"))
    unknown = switches - set(SWITCHES)
    if unknown:
        raise SystemExit(f"unknown mode switches {sorted(unknown)}; use {SWITCHES}")
    config = LameConfig.from_dict(resolve_model_spec(load_preset(args.preset)["model"]))
    preprocessor = preprocessor_for(data_dir, config)
    torch.manual_seed(0)
    with torch.device(device):  # initialise in place: 2B parameters straight on the GPU
        model = LameModel(config, preprocessor)
    cfg = TrainConfig(
        stage="joint",
        max_steps=args.warmup_steps + args.steps,
        batch_size=args.batch_size,
        precision=args.precision,
        grad_checkpointing="gc" in switches,
        chunk_size=args.chunk_size if "chunk" in switches else None,
        lora_rank=args.lora_rank if "lora" in switches else 0,
        hard_negatives=1,
        eval_every=0,
        save_every=0,
        final_eval=False,
    )
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(model, cfg, data_dir, Path(out), show_progress=False, device=device)
        params = set_trainable(model, "joint")
        optimizer = _optimizer(model, params, cfg)
        model.train()
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times, losses = [], []
        for step in range(cfg.max_steps):
            sync()
            start = time.perf_counter()
            loss = trainer._step(step, params, optimizer)
            sync()
            if step >= args.warmup_steps:
                times.append(time.perf_counter() - start)
                losses.append(loss["total"])
            print(
                f"[{mode}] step {step + 1}/{cfg.max_steps}: {time.perf_counter() - start:.2f} s"
                f" loss {loss['total']:.4f}",
                file=sys.stderr,
                flush=True,
            )
    seconds = float(np.sum(times))
    result = {
        "mode": mode,
        "steps": len(times),
        "batch_size": args.batch_size,
        "chunk_size": cfg.chunk_size,
        "lora_rank": cfg.lora_rank,
        "grad_checkpointing": cfg.grad_checkpointing,
        "precision": args.precision,
        "steps_per_s": round(len(times) / seconds, 4),
        "samples_per_s": round(len(times) * args.batch_size / seconds, 3),
        "median_step_s": round(float(np.median(times)), 4),
        "trainable_params": sum(p.numel() for p in params),
        "total_params": sum(p.numel() for p in model.parameters()),
        "final_loss": round(float(losses[-1]), 5),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
    }
    if device.type == "cuda":
        result["peak_gpu_mem_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    del trainer, optimizer, params, model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["modes"]
    names = [r["mode"] for r in rows]
    memory_key = "peak_gpu_mem_gb" if "peak_gpu_mem_gb" in rows[0] else "peak_rss_gb"
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.bar(names, [r["samples_per_s"] for r in rows], color="tab:blue")
    left.set(title="training samples/s", ylabel="samples/s")
    right.bar(names, [r[memory_key] for r in rows], color="tab:orange")
    right.set(
        title="peak GPU memory (per mode)"
        if memory_key == "peak_gpu_mem_gb"
        else "peak RSS of the process so far (run one mode per process)",
        ylabel="GB",
    )
    fig.suptitle(
        f"lame training, preset {report['preset']}, {report['device_name']}, "
        f"{report['precision']}, batch {rows[0]['batch_size']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument(
        "--modes", default="full,gc", help=f"comma-separated modes, each a +-joined set of {SWITCHES}"
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--chunk-size", type=int, default=4)
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup-steps", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="runs/train_throughput")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from lame.config import LameConfig, load_preset
    from lame.device import resolve_device
    from lame_runtime.persist import atomic_write_json

    device = resolve_device(args.device)
    image = LameConfig.from_dict(load_preset(args.preset)["model"]).image
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "preset": args.preset,
        "device": str(device),
        "precision": args.precision,
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.processor() or 'CPU'} x{torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "modes": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = synthetic_dataset(Path(tmp) / "data", (image.height, image.width))
        for mode in args.modes.split(","):
            try:
                report["modes"].append(run_mode(mode.strip(), args, data_dir, device))
            except Exception as err:  # noqa: BLE001 -- record it; the other modes still run
                print(f"[{mode}] failed: {type(err).__name__}: {err}", file=sys.stderr)
                report.setdefault("failed", {})[mode] = f"{type(err).__name__}: {err}"
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            atomic_write_json(out / "train_throughput.json", report)  # partial results survive
    if not report["modes"]:
        return 1
    try:
        plot(report, out / "train_throughput.png")
    except ImportError as err:  # matplotlib is optional on a bare device image
        print(f"no PNG: {err}", file=sys.stderr)
    for row in report["modes"]:
        memory = row.get("peak_gpu_mem_gb", row["peak_rss_gb"])
        print(
            f"{row['mode']:<12} {row['steps_per_s']:>8.3f} steps/s {row['samples_per_s']:>9.2f} "
            f"samples/s  peak {'GPU' if 'peak_gpu_mem_gb' in row else 'RSS'} {memory:.2f} GB  "
            f"trainable {row['trainable_params'] / 1e6:.1f} M / "
            f"{row['total_params'] / 1e6:.1f} M"
        )
    return 1 if report.get("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
