"""Speed of the four methods on one backbone, side by side in one run (``lame-bench``).

Every method gets the same backbone weights (one module shared by all four models), the same
preprocessed queries (text + image) and the same timing loop: rounds in which each candidate
runs once, in rotating order; the median over rounds is reported as embeddings per second.

* lame: one forward pass over input + K reason + M summary tokens.
* discriminative: one forward pass over input + [EMBED] (K=0, VLM2Vec style).
* latent: prefill, then K sequential one-token steps (KV cache), then [EMBED] (Coconut style).
* cot: prefill, then ``max_new_tokens`` greedy steps (KV cache), then [EMBED] (UME-R1 style).
  Random weights rarely emit EOS, so generation runs the full budget (``stop_at_eos=False``);
  a trained model that stops earlier is faster by about that factor -- the JSON says so.

Deployment rows (CPU only): PyTorch eager vs ONNX Runtime fp32/fp16/int8 on the LaME model --
an ``--artifact`` the user gives, or the benchmark's own model exported on the spot -- and the
runtime's cold start in a fresh process.
"""

from __future__ import annotations

import platform
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from lame.config import LameConfig, load_preset
from lame.methods import embedding_methods, get_method
from lame_runtime.timing import cold_start, interleaved_medians

BENCH_PRESETS = ("tiny", "small", "2b")
METHOD_ORDER = embedding_methods()  # lame first: the ratios are LaME's speed over the others
STATEMENTS = [
    "the digits add up to 12",
    "the largest digit is 7",
    "the odd digits add up to 9",
    "exactly 2 digits are greater than 6",
    "the digits are in increasing order",
    "the largest minus the smallest is 5",
    "the digits read 3 8 1 4",
]
INSTRUCTION = "Find the statement that is true for the image."


@dataclass
class BenchOptions:
    preset: str = "small"
    batches: tuple[int, ...] = (1, 16)
    reps: int = 5
    max_new_tokens: int = 128
    device: str = "cpu"
    dtype: str = "float32"
    artifact: str | None = None  # an export artifact for the deployment rows
    deploy: bool = True  # deployment rows (ONNX Runtime, CPU only)
    threads: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.reps < 5:
            raise ValueError("reps must be >= 5 (medians of fewer rounds are too noisy)")
        if not self.batches or min(self.batches) < 1:
            raise ValueError("batches must be positive batch sizes")


def bench_tokenizer():
    """A small BPE over benchmark-like text: the benchmark needs no dataset on disk."""
    from lame.tokenizer import train_tokenizer

    texts = STATEMENTS + [INSTRUCTION] + [" ".join(map(str, range(i, i + 9))) for i in range(9)]
    return train_tokenizer(texts * 4, vocab_size=256)


def method_config(base: LameConfig, method: str, max_new_tokens: int) -> LameConfig:
    return get_method(method).bench_config(base, max_new_tokens)


def build_models(options: BenchOptions) -> dict[str, Any]:
    """One LameModel per method, all sharing the first model's backbone (same weights)."""
    from lame.backbones.directory import resolve_model_spec
    from lame.model import LameModel
    from lame_runtime.inputs.preprocess import Preprocessor
    from lame_runtime.inputs.text import TextProcessor

    base = LameConfig.from_dict(resolve_model_spec(load_preset(options.preset)["model"]))
    preprocessor = Preprocessor(TextProcessor(bench_tokenizer(), base.max_text_tokens), base.image)
    dtype = getattr(torch, options.dtype)
    models: dict[str, Any] = {}
    shared = None
    for method in METHOD_ORDER:
        torch.manual_seed(options.seed)
        with torch.device(options.device):  # initialise in place: 2B parameters on a GPU
            model = LameModel(
                method_config(base, method, options.max_new_tokens), preprocessor, backbone=shared
            )
        shared = model.backbone
        models[method] = model.to(options.device, dtype).eval()
    return models


def query_feed(preprocessor, batch: int) -> dict[str, np.ndarray]:
    """``batch`` text+image queries (the instruction, a statement, a random image)."""
    h, w = preprocessor.image.height, preprocessor.image.width
    texts = [f"{INSTRUCTION} {STATEMENTS[i % len(STATEMENTS)]}" for i in range(batch)]
    images = [np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8) for i in range(batch)]
    return preprocessor(texts, images)


def embed_fn(model, tensors: dict[str, torch.Tensor], max_new_tokens: int) -> Callable[[], Any]:
    return model.method.bench_embed(model, tensors, max_new_tokens)


def time_methods(models: dict[str, Any], options: BenchOptions) -> dict[str, Any]:
    """-> {"batch{b}": {method: {"emb_per_s", "median_ms", "runs_ms"}}, "input_tokens": N}."""
    sync = torch.cuda.synchronize if options.device.startswith("cuda") else (lambda: None)
    results: dict[str, Any] = {}
    tokens = []
    preprocessor = models["lame"].preprocessor
    for batch in options.batches:
        feed = query_feed(preprocessor, batch)
        tokens.append(float(feed["attention_mask"].sum(1).mean()))
        tensors = {k: v.to(options.device) for k, v in models["lame"].feed_to_tensors(feed).items()}
        with torch.inference_mode():
            fns = {m: embed_fn(models[m], tensors, options.max_new_tokens) for m in METHOD_ORDER}
            timed = interleaved_medians(fns, options.reps, sync=sync)
        results[f"batch{batch}"] = {m: _rate(t, batch) for m, t in timed.items()}
    results["input_tokens"] = float(np.mean(tokens))
    return results


def _rate(timed: dict, batch: int) -> dict[str, Any]:
    return {
        "emb_per_s": batch / timed["median_s"],
        "median_ms": 1000 * timed["median_s"],
        "runs_ms": [1000 * s for s in timed["runs_s"]],
    }


def ratios(
    methods: dict[str, Any], deploy: dict[str, Any] | None, config: LameConfig
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Headline ratios (the *least* favourable over the batch sizes) and the per-batch ones."""
    per_batch: dict[str, dict[str, float]] = {}
    for key, rows in methods.items():
        if not key.startswith("batch"):
            continue
        lame = rows["lame"]["emb_per_s"]
        entry = {f"lame_vs_{m}": lame / rows[m]["emb_per_s"] for m in METHOD_ORDER if m != "lame"}
        if deploy and key in deploy.get("ms_per_batch", {}):
            ms = deploy["ms_per_batch"][key]
            for precision in ("fp32", "fp16", "int8"):
                if f"ort {precision}" in ms:
                    entry[f"ort_{precision}_vs_torch"] = ms["torch eager"] / ms[f"ort {precision}"]
        per_batch[key] = entry
    names = {name for entry in per_batch.values() for name in entry}
    headline = {name: min(e[name] for e in per_batch.values() if name in e) for name in names}
    n = methods["input_tokens"]
    k, m = config.num_reason_tokens, config.num_summary_tokens
    headline["bound_lame_vs_discriminative"] = n / (n + k + m)
    return dict(sorted(headline.items())), per_batch


def deployment(models: dict[str, Any], options: BenchOptions, workdir: Path) -> dict[str, Any]:
    """PyTorch eager vs ONNX Runtime on the LaME model, plus the runtime's cold start."""
    from lame_runtime import Embedder, RuntimeOptions

    artifact = Path(options.artifact) if options.artifact else export_for_bench(models["lame"], workdir)
    precisions = Embedder(artifact, options=RuntimeOptions(lazy=True)).artifact.precisions
    model = models["lame"] if not options.artifact else _artifact_model(artifact)
    ms: dict[str, dict[str, float]] = {}
    for batch in options.batches:
        feed = query_feed(model.preprocessor, batch)
        tensors = model.feed_to_tensors(feed)
        fns = {"torch eager": lambda t=tensors: _torch_embed(model, t)}
        for precision in precisions:
            embedder = Embedder(
                artifact,
                precision=precision,
                options=RuntimeOptions(threads=options.threads or None, spin=False),
            )
            fns[f"ort {precision}"] = lambda e=embedder, f=feed: e.infer(f)
        timed = interleaved_medians(fns, options.reps)
        ms[f"batch{batch}"] = {name: 1000 * t["median_s"] for name, t in timed.items()}
    return {
        "artifact": str(artifact) if options.artifact else "exported by lame-bench",
        "precisions": list(precisions),
        "ms_per_batch": ms,
        "cold_start": cold_start(artifact, runs=3, threads=options.threads or 0),
    }


def _torch_embed(model, tensors):
    with torch.inference_mode():
        return model(**tensors).embedding


def _artifact_model(artifact: Path):
    """The checkpoint an artifact was exported from (its manifest names it)."""
    import json

    import lame

    manifest = json.loads((artifact / "lame_artifact.json").read_text())
    ckpt = manifest.get("source_checkpoint", {}).get("path")
    if not ckpt or not Path(ckpt).is_dir():
        raise FileNotFoundError(
            f"{artifact}: the source checkpoint {ckpt!r} named in "
            "lame_artifact.json is not here; PyTorch eager needs it"
        )
    return lame.load(ckpt)


def export_for_bench(model, workdir: Path) -> Path:
    """Save the benchmark's (random) LaME model and export fp32/fp16/int8; gates are recorded
    but not enforced (random weights are not a model anyone serves)."""
    from lame.checkpoint import save_checkpoint
    from lame_calibration.build import pad_left
    from lame_export.pipeline import ExportOptions, export_checkpoint

    ckpt, calib = workdir / "ckpt", workdir / "calib.npz"
    model = model.to("cpu", torch.float32)
    save_checkpoint(ckpt, model, {}, {"stage": "bench", "step": 0, "done": True}, [])
    feed = query_feed(model.preprocessor, 32)
    feed = pad_left(feed, feed["input_ids"].shape[1], model.preprocessor.text.special["pad"])
    np.savez(calib, **feed)
    out = workdir / "artifact"
    export_checkpoint(ckpt, out, ExportOptions(fp16=True, int8=True, calib_file=str(calib), force=True))
    return out


def run_bench(options: BenchOptions, progress: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    if options.threads:
        torch.set_num_threads(options.threads)
    from lame.device import resolve_device

    options = replace(options, device=str(resolve_device(options.device)))  # BackendError if none
    progress(f"building the four methods on the {options.preset!r} backbone")
    models = build_models(options)
    config = models["lame"].config
    progress(f"timing batch sizes {list(options.batches)}, median of {options.reps} rounds")
    methods = time_methods(models, options)
    deploy = None
    if options.deploy and options.device == "cpu":
        progress("deployment rows: export + ONNX Runtime + cold start")
        with tempfile.TemporaryDirectory(prefix="lame-bench-") as tmp:
            deploy = deployment(models, options, Path(tmp))
    headline, per_batch = ratios(methods, deploy, config)
    return {
        "preset": options.preset,
        "ratios": headline,
        "ratios_by_batch": per_batch,
        "methods": methods,
        "deployment": deploy,
        "environment": _environment(options),
        "settings": {
            "K": config.num_reason_tokens,
            "M": config.num_summary_tokens,
            "cot_new_tokens": options.max_new_tokens,
            "cot_stops_at_eos": False,
            "batches": list(options.batches),
            "reps": options.reps,
            "parameters": sum(p.numel() for p in models["lame"].parameters()),
        },
    }


def _environment(options: BenchOptions) -> dict[str, Any]:
    import os

    env = {
        "device": options.device,
        "dtype": options.dtype,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
    }
    if options.device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name()
    return env
