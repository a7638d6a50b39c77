"""``export_checkpoint``: checkpoint -> artifact directory, every step validated.

Everything is built in a staging directory and swapped in at the end, so a failed gate leaves
no half-written artifact behind (and an existing artifact untouched).
"""
from __future__ import annotations

import json
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from lame.checkpoint import MODEL_FILE, atomic_write_dir, check_replaceable, resolve
from lame_export.onnx_export import export_onnx, reason_token_initializer
from lame_export.spec import ExportSpec, parity_feeds
from lame_export.trt_lint import lint
from lame_export.validate import THRESHOLDS, parity_suite
from lame_runtime.artifact import FORMAT_VERSION, MANIFEST, sha256
from lame_runtime.preprocess import INPUT_NAMES, PREPROCESSOR_FILE, TOKENIZER_FILE

FILES = {"fp32": "model.onnx", "fp16": "model_fp16.onnx", "int8": "model_int8.onnx"}
EXPORTABLE_METHODS = ("lame", "discriminative")
MAX_HIT_DROP = 1.0  # points of hit@1 a reduced precision may lose against fp32


class ExportGateError(RuntimeError):
    """A parity or retrieval gate failed; nothing was written (use force to write anyway)."""


@dataclass
class ExportOptions:
    fp16: bool = False
    int8: bool = False
    calib_data: str | None = None      # dataset dir: calibration samples + eval split for the gate
    calib_file: str | None = None      # a prepared calib.npz instead
    calib_size: int = 128
    int8_for_tensorrt: bool = False    # symmetric int8 activations (TensorRT Q/DQ needs them)
    opset: int = 18
    max_batch: int = 64
    force: bool = False


def export_checkpoint(ckpt: str | Path, out: str | Path, options: ExportOptions,
                      progress: Callable[[str], None] = lambda message: None) -> dict:
    """-> the parity report (also written as ``parity.json``)."""
    import lame

    if options.int8 and not (options.calib_data or options.calib_file):
        raise ValueError("--int8 needs a calibration set: --calib-data DIR or --calib FILE.npz")
    check_replaceable(Path(out), MANIFEST)  # before minutes of work, not after
    ckpt = resolve(ckpt)
    model = lame.load(ckpt)
    if model.config.method not in EXPORTABLE_METHODS:
        raise ValueError(f"{ckpt} was trained with method {model.config.method!r}; ONNX export "
                         f"covers the one-pass methods {EXPORTABLE_METHODS} (cot and latent "
                         "decode step by step: benchmark them in PyTorch with lame-bench)")
    report: dict = {"gates": {}, "failures": []}

    def build(stage: Path) -> None:
        spec = ExportSpec(opset=options.opset, max_batch=options.max_batch)
        _copy_runtime_files(ckpt, stage)
        progress("exporting fp32 ONNX (dynamo)")
        export_onnx(model, stage / FILES["fp32"], spec)
        _check_reason_tokens(model, stage / FILES["fp32"], report)
        report["tensorrt_lint"] = lint(stage / FILES["fp32"])
        precisions = ["fp32"] + ["fp16"] * options.fp16 + ["int8"] * options.int8
        for precision in precisions:
            if precision != "fp32":
                progress(f"converting to {precision}")
                _convert(precision, stage, model, options, progress)
            progress(f"parity check {precision}")
            report[precision] = _parity(model, stage / FILES[precision], precision, report)
        _write_manifest(stage, model, ckpt, precisions, spec)
        if options.calib_data and (Path(options.calib_data) / "eval.jsonl").is_file():
            report["retrieval"] = _retrieval_gate(stage, options.calib_data, precisions,
                                                  report, progress)
        if report["failures"] and not options.force:
            raise ExportGateError("; ".join(report["failures"]))
        (stage / "parity.json").write_text(json.dumps(report, indent=2))

    atomic_write_dir(Path(out), build, marker=MANIFEST)
    return report


def _check_reason_tokens(model, onnx_path: Path, report: dict) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    tokens = model.reason_tokens.detach().float().numpy()
    holder = reason_token_initializer(onnx_path, tokens)
    report["graph"] = {"inputs": names, "reason_tokens_initializer": holder,
                       "num_reason_tokens": int(tokens.shape[0])}
    if tokens.shape[0] and holder is None:
        report["failures"].append("no initializer holds the checkpoint's reason_tokens")


def _convert(precision: str, stage: Path, model, options: ExportOptions, progress) -> None:
    from lame_export.precision import to_fp16, to_int8

    src = stage / FILES["fp32"]
    if precision == "fp16":
        to_fp16(src, stage / FILES["fp16"])
        return
    from lame_calibration import CalibrationReader, build as build_calibration

    calib = options.calib_file
    if calib is None:
        if options.calib_data is None:
            raise ValueError("--int8 needs --calib-data DIR or --calib FILE.npz")
        progress(f"building a {options.calib_size}-sample calibration set")
        calib = build_calibration(options.calib_data, stage, stage / "calib.npz",
                                  size=options.calib_size)
    reader = CalibrationReader(calib, batch_size=8, input_names=list(INPUT_NAMES))
    to_int8(src, stage / FILES["int8"], reader, for_tensorrt=options.int8_for_tensorrt)


def _parity(model, onnx_path: Path, precision: str, report: dict) -> dict:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])

    def reference(feed):
        with torch.no_grad():
            return model(**model.feed_to_tensors(feed)).embedding.float().numpy()

    def candidate(feed):
        return session.run(None, feed)[0]

    result = parity_suite(reference, candidate, parity_feeds(model.preprocessor),
                          THRESHOLDS[precision])
    result["bytes"] = onnx_path.stat().st_size
    if not result["passed"]:
        report["failures"].append(f"{precision} parity: min cosine {result['min_cosine']:.6f} "
                                  f"< {THRESHOLDS[precision]} (finite={result['finite']})")
    return result


def _copy_runtime_files(ckpt: Path, stage: Path) -> None:
    for name in (TOKENIZER_FILE, PREPROCESSOR_FILE):
        shutil.copy2(ckpt / name, stage / name)


def _instructions(ckpt: Path) -> dict:
    path = ckpt / "instructions.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_manifest(stage: Path, model, ckpt: Path, precisions, spec: ExportSpec) -> None:
    import onnx
    import onnxruntime

    pre = model.preprocessor
    manifest = {
        "format_version": FORMAT_VERSION,
        "embedding_dim": model.config.embed_dim,
        "num_reason_tokens": model.config.num_reason_tokens,
        "num_summary_tokens": model.config.num_summary_tokens,
        **spec.io_manifest(pre, model.config.embed_dim),
        "graph": "one graph for text, image and text+image rows: image_mask zeroes the visual "
                 "tokens of text-only rows; reason/summary tokens are constants",
        "image": pre.image.to_dict(),
        "num_image_tokens": pre.image.num_tokens,
        "max_text_tokens": pre.text.max_text_tokens,
        "special_tokens": pre.text.special,
        "instructions": _instructions(ckpt),
        "opset": spec.opset,
        "files": {p: {"path": FILES[p], "precision": p, "sha256": sha256(stage / FILES[p]),
                      "bytes": (stage / FILES[p]).stat().st_size} for p in precisions},
        "source_checkpoint": {"path": str(ckpt), "sha256": sha256(ckpt / MODEL_FILE),
                              "meta": json.loads((ckpt / "meta.json").read_text())
                              if (ckpt / "meta.json").is_file() else {}},
        "exported_with": {"torch": torch.__version__, "onnx": onnx.__version__,
                          "onnxruntime": onnxruntime.__version__,
                          "python": platform.python_version()},
    }
    (stage / MANIFEST).write_text(json.dumps(manifest, indent=2))


def _retrieval_gate(stage: Path, data_dir: str, precisions, report: dict, progress) -> dict:
    from lame.data.dataset import load_eval
    from lame.evaluate import evaluate
    from lame_runtime import Embedder

    rows = load_eval(data_dir)
    results = {}
    for precision in precisions:
        progress(f"retrieval eval {precision} ({len(rows)} queries)")
        embedder = Embedder(stage, precision=precision)
        results[precision] = evaluate(embedder.encode, rows)["hit@1"]
    for precision in precisions[1:]:
        drop = results["fp32"] - results[precision]
        if drop > MAX_HIT_DROP:
            report["failures"].append(f"{precision} loses {drop:.2f} points of hit@1 vs fp32 "
                                      f"(limit {MAX_HIT_DROP})")
    return {"hit@1": results, "max_drop": MAX_HIT_DROP}
