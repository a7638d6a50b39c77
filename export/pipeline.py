"""``export_checkpoint``: checkpoint -> artifact directory, every step validated.

Everything is built in a staging directory (``.OUT.tmp``, via ``lame_runtime.persist``) and
swapped in at the end, so a failed gate or any error leaves no half-written artifact and no
staging folder behind (and an existing artifact untouched).

Models whose fp32 weights pass ``external_data_threshold`` bytes are written with external
data (``model.onnx`` + ``model.onnx.data``, likewise for fp16 and int8): protobuf cannot
serialise a message over 2 GB.
"""

from __future__ import annotations

import json
import platform
import shutil
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from lame.checkpoint import MODEL_FILE, resolve
from lame_export.graphs.routed import ROUTED_FILES
from lame_export.graphs.text import TEXT_FILES, build_text_graphs, check_text_parity, convert_text_graph
from lame_export.onnx_export import export_onnx, parameter_bytes, reason_token_initializer
from lame_export.precision import WIDE_BLOCK_SIZE, data_file
from lame_export.spec import ExportSpec, parity_feeds
from lame_export.trt_lint import int4_lint, lint
from lame_export.validate import THRESHOLDS, parity_suite
from lame_runtime.artifact.bounds import DEFAULT_MAX_BATCH, DEFAULT_MAX_SEQUENCE
from lame_runtime.artifact.contract import HASH_CACHE, MANIFEST, sha256
from lame_runtime.artifact.files import HashCache, external_data_locations
from lame_runtime.artifact.manifest import (
    PREPROCESSOR_FILE,
    TOKENIZER_FILE,
    FileRecord,
    GraphFiles,
    Manifest,
    TensorSpec,
)
from lame_runtime.errors import GateError, InputError
from lame_runtime.persist import atomic_write_dir, atomic_write_json, check_replaceable, read_json

FILES = {
    "fp32": "model.onnx",
    "fp16": "model_fp16.onnx",
    "int8": "model_int8.onnx",
    "int4": "model_int4.onnx",
}
EXPORTABLE_METHODS = ("lame", "discriminative")
MAX_HIT_DROP = 1.0  # points of hit@1 a reduced precision may lose against fp32
# int4 weight-only may lose 2: twice int8's budget for 16x its weight step, still under one
# query in fifty (a real regression, e.g. a wrong block axis, costs tens of points).
MAX_HIT_DROPS = {"int4": 2.0}
# Files a deployment may drop (listed and verified when present, not needed to serve).
OPTIONAL_FILES = ("calib.npz", "parity.json")
# 1 GiB, well under protobuf's 2 GB: the graph structure and inline constants need room too.
DEFAULT_EXTERNAL_DATA_THRESHOLD = 1 << 30


class ExportGateError(GateError):
    """A parity or retrieval gate failed; nothing was written (use force to write anyway).

    Kept under this name for compatibility; catch ``lame_runtime.errors.GateError``."""


@dataclass
class ExportOptions:
    fp16: bool = False
    int8: bool = False
    calib_data: str | None = None  # dataset dir: calibration samples + eval split for the gate
    calib_file: str | None = None  # a prepared calib.npz instead
    calib_size: int = 128
    int8_for_tensorrt: bool = False  # symmetric int8 activations (TensorRT Q/DQ needs them)
    int4: bool = False  # weight-only int4 (MatMulNBits), no calibration needed
    int4_block_size: int | None = None  # None: by width (see Int4Options.block_size)
    int4_accuracy_level: int = 4
    int4_embeddings: bool = True
    opset: int = 18
    max_batch: int = DEFAULT_MAX_BATCH
    max_sequence: int = DEFAULT_MAX_SEQUENCE  # the graph's sequence bound: the longest row must fit
    force: bool = False
    # fp32 weight bytes above which every graph is saved with external data (0: always).
    external_data_threshold: int = DEFAULT_EXTERNAL_DATA_THRESHOLD
    # Also export the text-only graph (no vision tower) that text-only rows are routed to.
    text_graph: bool = True

    def int4_options(self):
        from lame_export.precision import Int4Options

        return Int4Options(
            block_size=self.int4_block_size,
            accuracy_level=self.int4_accuracy_level,
            embeddings=self.int4_embeddings,
        )


def export_checkpoint(
    ckpt: str | Path,
    out: str | Path,
    options: ExportOptions,
    progress: Callable[[str], None] = lambda message: None,
) -> dict:
    """-> the parity report (also written as ``parity.json``)."""
    import lame

    if options.int8 and not (options.calib_data or options.calib_file):
        raise ValueError("--int8 needs a calibration set: --calib-data DIR or --calib FILE.npz")
    if options.external_data_threshold < 0:
        raise ValueError(f"external_data_threshold must be >= 0 bytes, got {options.external_data_threshold}")
    if options.int4:
        options.int4_options().check()
    check_replaceable(Path(out), MANIFEST)  # before minutes of work, not after
    ckpt = resolve(ckpt)
    model = lame.load(ckpt)
    if model.config.method not in EXPORTABLE_METHODS:
        raise ValueError(
            f"{ckpt} was trained with method {model.config.method!r}; ONNX export "
            f"covers the one-pass methods {EXPORTABLE_METHODS} (cot and latent "
            "decode step by step: benchmark them in PyTorch with lame-bench)"
        )
    spec = ExportSpec.for_model(
        model, opset=options.opset, max_batch=options.max_batch, max_sequence=options.max_sequence
    )
    spec.check_bounds(model.preprocessor)  # before tracing: the tracer's error names no flag
    weight_bytes = parameter_bytes(model)
    external = weight_bytes > options.external_data_threshold
    report: dict = {"gates": {}, "failures": [], "external_data": external, "fp32_weight_bytes": weight_bytes}

    source_sha256 = sha256(ckpt / MODEL_FILE)
    hashes: dict[str, str] = {}  # artifact file -> sha256, computed once per file

    def build(stage: Path) -> None:
        _copy_runtime_files(ckpt, stage)
        progress("exporting fp32 ONNX (dynamo)" + " with external data" * external)
        export_onnx(model, stage / FILES["fp32"], spec, external_data=external)
        _check_reason_tokens(model, stage / FILES["fp32"], report)
        report["tensorrt_lint"] = lint(stage / FILES["fp32"])
        if options.text_graph:
            progress("exporting the text-only graph (no vision tower)")
            build_text_graphs(model, stage, spec, external, report)
            _share(stage, "fp32", external, report, routed=not spec.native)
        precisions = ["fp32"] + ["fp16"] * options.fp16 + ["int8"] * options.int8 + ["int4"] * options.int4
        feeds = parity_feeds(model.preprocessor)
        dims = model.config.matryoshka_dims or ()  # gated at every served size
        progress("PyTorch reference embeddings")
        references = _references(model, feeds)
        _release_weights(model)

        def make(precision: str, opts: ExportOptions) -> None:
            if precision != "fp32":
                progress(f"converting to {precision}")
                _convert(precision, stage, model, opts, progress, external)
                if precision == "int4":
                    report["tensorrt_lint_int4"] = int4_lint(stage / FILES["int4"])
                if opts.text_graph:
                    convert_text_graph(precision, stage, opts, external, progress)
                    _share(stage, precision, external, report, routed=not spec.native)
            progress(f"parity check {precision}")
            report[precision] = _parity(references, feeds, stage / FILES[precision], precision, report, dims)
            if opts.text_graph:
                report.setdefault("text_graph", {})[precision] = check_text_parity(
                    references, feeds, stage / TEXT_FILES[precision], precision, report, dims
                )

        for precision in precisions:
            failed_before = len(report["failures"])
            make(precision, options)
            if precision == "int4":
                report["int4_blocks"] = _int4_block_sizes(stage / FILES["int4"])
            if (
                precision == "int4"
                and len(report["failures"]) > failed_before
                and _wide_int4(options, report)
            ):
                # The fast blocks cost too much here: the narrow ones, slower on a CPU, instead.
                missed = "; ".join(report["failures"][failed_before:])
                progress(f"int4 with blocks of {WIDE_BLOCK_SIZE} missed the gate ({missed}): blocks of 16")
                del report["failures"][failed_before:]
                make("int4", replace(options, int4_block_size=16))
                report["int4_blocks"] = _int4_block_sizes(stage / FILES["int4"])
                report["int4_wide_blocks_missed"] = missed
        # The retrieval gate opens the artifact through the runtime, so it needs a manifest;
        # the final one (with parity.json listed) replaces it below.
        progress("hashing the artifact's files")
        _write_manifest(stage, model, ckpt, precisions, spec, hashes, source_sha256, options.text_graph)
        if options.calib_data and (Path(options.calib_data) / "eval.jsonl").is_file():
            report["retrieval"] = _retrieval_gate(stage, options.calib_data, precisions, report, progress)
        if report["failures"] and not options.force:
            raise ExportGateError("; ".join(report["failures"]))
        atomic_write_json(stage / "parity.json", report)
        _write_manifest(stage, model, ckpt, precisions, spec, hashes, source_sha256, options.text_graph)

    atomic_write_dir(Path(out), build, marker=MANIFEST)
    return report


def _wide_int4(options: ExportOptions, report: dict) -> bool:
    """Whether the int4 graph used the default wide blocks (so narrow ones remain to try)."""
    return options.int4_block_size is None and WIDE_BLOCK_SIZE in report.get("int4_blocks", ())


def _int4_block_sizes(graph: Path) -> list[int]:
    import onnx

    nodes = onnx.load(str(graph), load_external_data=False).graph.node
    return sorted(
        {a.i for n in nodes if n.domain == "com.microsoft" for a in n.attribute if a.name == "block_size"}
    )


def _share(stage: Path, precision: str, external: bool, report: dict, routed: bool = True) -> None:
    """With external data, the text graph's weights become references into the full graph's
    ``.data`` (``lame_export.graphs.shared_weights``): one copy on disk and, at run time, in memory."""
    if external:
        from lame_export.graphs.shared_weights import share_text_weights

        report.setdefault("shared_weights", {})[precision] = share_text_weights(
            stage / FILES[precision], stage / TEXT_FILES[precision]
        )
        if not routed:
            # A native-resolution graph has no image_mask to branch on; its text rows are
            # routed by the runtime to the text graph as two sessions sharing the weights.
            return
        # Both graphs in one (lame_export.graphs.routed): one session, weights pre-packed once.
        from lame_export.graphs.routed import build_routed_graph

        report.setdefault("routed_graph", {})[precision] = build_routed_graph(
            stage / FILES[precision], stage / TEXT_FILES[precision], stage / ROUTED_FILES[precision]
        )


def _check_reason_tokens(model, onnx_path: Path, report: dict) -> None:
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initializers = {init.name for init in graph.initializer}
    names = [i.name for i in graph.input if i.name not in initializers]
    tokens = model.reason_tokens.detach().float().numpy()
    holder = reason_token_initializer(onnx_path, tokens)
    report["graph"] = {
        "inputs": names,
        "reason_tokens_initializer": holder,
        "num_reason_tokens": int(tokens.shape[0]),
    }
    if tokens.shape[0] and holder is None:
        report["failures"].append("no initializer holds the checkpoint's reason_tokens")


def _convert(precision: str, stage: Path, model, options: ExportOptions, progress, external: bool) -> None:
    from lame_export.precision import convert_graph

    def int8_reader() -> Any:
        from lame_calibration import CalibrationReader
        from lame_calibration import build as build_calibration

        calib: str | Path | None = options.calib_file
        if calib is None:
            if options.calib_data is None:
                raise ValueError("--int8 needs --calib-data DIR or --calib FILE.npz")
            progress(f"building a {options.calib_size}-sample calibration set")
            calib = build_calibration(options.calib_data, stage, stage / "calib.npz", size=options.calib_size)
        # MinMax ranges do not depend on how samples are batched; small batches keep the
        # calibration session's activations (and the export's peak memory) small.
        names = ExportSpec.for_model(model).input_names  # a native graph's inputs differ by family
        return CalibrationReader(calib, batch_size=2, input_names=list(names))

    convert_graph(
        precision, stage / FILES["fp32"], stage / FILES[precision], options, external, progress, int8_reader
    )


def _release_weights(model) -> None:
    """Free the PyTorch weights once the fp32 graph and the reference embeddings exist: the
    conversions only need the graph, and this keeps the export's peak near 3x the model, not
    4x. The storages are emptied in place because the exporter's traced program keeps
    references to the parameters alive (``model.to("meta")`` alone frees nothing)."""
    import gc
    import itertools

    for tensor in itertools.chain(model.parameters(), model.buffers()):
        try:
            tensor.detach().untyped_storage().resize_(0)
        except RuntimeError:
            pass  # a non-resizable storage (e.g. from NumPy): small buffers only
    model.to("meta")  # config, preprocessor and shapes stay usable for the manifest
    gc.collect()


def _references(model, feeds) -> dict[str, np.ndarray]:
    """PyTorch fp32 embeddings of every parity feed, by label (computed once per export)."""
    with torch.no_grad():
        return {
            label: model(**model.feed_to_tensors(feed)).embedding.float().numpy() for label, feed in feeds
        }


def _parity(references: dict, feeds, onnx_path: Path, precision: str, report: dict, dims=()) -> dict:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    labels = {id(feed): label for label, feed in feeds}

    def reference(feed):
        return references[labels[id(feed)]]

    def candidate(feed):
        return session.run(None, feed)[0]  # noqa: F821 (released below, after the suite)

    result = parity_suite(reference, candidate, feeds, THRESHOLDS[precision], dims)
    del session
    data = onnx_path.parent / data_file(onnx_path)
    result["bytes"] = onnx_path.stat().st_size + (data.stat().st_size if data.is_file() else 0)
    if not result["passed"]:
        report["failures"].append(
            f"{precision} parity: min cosine {result['min_cosine']:.6f} "
            f"< {THRESHOLDS[precision]} (finite={result['finite']})"
        )
    return result


def _copy_runtime_files(ckpt: Path, stage: Path) -> None:
    for name in (TOKENIZER_FILE, PREPROCESSOR_FILE):
        shutil.copy2(ckpt / name, stage / name)


def _instructions(ckpt: Path) -> dict:
    """The checkpoint's instructions per direction/task, validated (lame_runtime.inputs.instructions)."""
    from lame_runtime.inputs.instructions import check

    path = ckpt / "instructions.json"
    return check(read_json(path, InputError), str(path)) if path.is_file() else {}


def _file_table(stage: Path, hashes: dict[str, str]) -> dict[str, dict]:
    """Every file of the staged artifact (but the manifest and the hash cache), hashed once."""
    table = {}
    for path in sorted(p for p in stage.rglob("*") if p.is_file()):
        name = path.relative_to(stage).as_posix()
        if name in (MANIFEST, HASH_CACHE) or path.name.startswith("."):
            continue
        if name not in hashes:
            hashes[name] = sha256(path)
        table[name] = {"bytes": path.stat().st_size, "sha256": hashes[name]}
        if name in OPTIONAL_FILES:
            table[name]["required"] = False
    return table


def _write_manifest(
    stage: Path,
    model,
    ckpt: Path,
    precisions,
    spec: ExportSpec,
    hashes: dict[str, str],
    source_sha256: str,
    text_graph: bool = False,
) -> None:
    import onnx
    import onnxruntime

    pre = model.preprocessor
    io = spec.io_manifest(pre, model.config.embed_dim)

    def graph_files(path: str) -> GraphFiles:
        # One reader of external-data references for writer and reader: the runtime's.
        return GraphFiles(path, external_data_locations(stage / path))

    manifest = Manifest(
        embedding_dim=model.config.embed_dim,
        num_reason_tokens=model.config.num_reason_tokens,
        num_summary_tokens=model.config.num_summary_tokens,
        # Matryoshka: the sizes the model was trained to serve (Embedder.encode(dimensions=)).
        matryoshka_dims=list(model.config.matryoshka_dims) if model.config.matryoshka_dims else None,
        inputs=[TensorSpec(**t) for t in io["inputs"]],
        outputs=[TensorSpec(**t) for t in io["outputs"]],
        graph=(
            "one native-resolution graph: images and video steps as patch slices with their "
            "grid inputs (lame_runtime.inputs.grid); reason/summary tokens are constants"
            if spec.native
            else "one graph for text, image and text+image rows: image_mask zeroes the visual "
            "tokens of text-only rows; reason/summary tokens are constants"
        )
        + (
            "; models[p].text: the text-only graph (input_ids + attention_mask, no "
            "vision tower) that text-only rows are routed to"
            if text_graph
            else ""
        ),
        image=pre.image.to_dict(),
        num_image_tokens=pre.image.num_tokens,
        max_text_tokens=pre.text.max_text_tokens,
        special_tokens=pre.text.special,
        instructions=_instructions(ckpt),
        opset=spec.opset,
        # The graph's dynamic-axis bounds: TensorRT optimisation profiles are sized from them.
        max_batch=spec.max_batch,
        max_sequence=spec.max_sequence,
        max_patches=spec.max_patches or None,
        models={
            p: GraphFiles(
                FILES[p],
                external_data_locations(stage / FILES[p]),
                graph_files(TEXT_FILES[p]) if text_graph else None,
                graph_files(ROUTED_FILES[p]) if (stage / ROUTED_FILES[p]).is_file() else None,
            )
            for p in precisions
        },
        files={
            name: FileRecord(entry["bytes"], entry["sha256"], entry.get("required"))
            for name, entry in _file_table(stage, hashes).items()
        },
        source_checkpoint={
            "path": str(ckpt),
            "sha256": source_sha256,
            "meta": json.loads((ckpt / "meta.json").read_text()) if (ckpt / "meta.json").is_file() else {},
        },
        exported_with={
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version(),
        },
    )
    atomic_write_json(stage / MANIFEST, Manifest.from_json(manifest.to_json()).to_json())
    HashCache.write(stage, hashes)  # the first load need not hash 2 GB again


def _retrieval_gate(stage: Path, data_dir: str, precisions, report: dict, progress) -> dict:
    from lame.data.dataset import load_eval
    from lame.evaluation.evaluate import evaluate
    from lame_runtime import Embedder

    rows = load_eval(data_dir)
    results = {}
    for precision in precisions:
        progress(f"retrieval eval {precision} ({len(rows)} queries)")
        with warnings.catch_warnings():
            # The gate measures every precision on this machine's CPU on purpose.
            warnings.filterwarnings("ignore", "precision fp16 runs on", RuntimeWarning)
            embedder = Embedder(stage, precision=precision)
        results[precision] = evaluate(embedder.encode, rows)["hit@1"]
    for precision in precisions[1:]:
        drop = results["fp32"] - results[precision]
        limit = MAX_HIT_DROPS.get(precision, MAX_HIT_DROP)
        if drop > limit:
            report["failures"].append(f"{precision} loses {drop:.2f} points of hit@1 vs fp32 (limit {limit})")
    return {"hit@1": results, "max_drop": MAX_HIT_DROP, "max_drops": MAX_HIT_DROPS}
