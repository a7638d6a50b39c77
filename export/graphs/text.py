"""The text-only graph exported beside the full one: no vision tower, no ``pixel_values``.

The full graph runs the vision tower on every row and masks text-only rows with
``image_mask`` (static shapes, one graph for every kind of row), so a text query paid for a
blank image. This graph is the same model with ``_image_features`` returning nothing: inputs
``input_ids`` + ``attention_mask`` only, the same reason/summary constants and heads. The
runtime routes text-only rows to it (``lame_runtime.inputs.routing``); rows with an image still go
to the full graph.

It gets its own parity gate against PyTorch on the text rows of the parity feeds, with the
same thresholds per precision as the full graph, its own TensorRT lint, and fp16/int8
variants built with the same conversions (int8 calibrated on the calibration set's text-only
rows). The manifest lists it under each precision's ``models`` entry as ``"text"``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lame_export.onnx_export import quiet_exporter
from lame_export.spec import ExportSpec, dummy_feed
from lame_runtime.inputs.routing import TEXT_INPUTS, text_row_mask  # what routing sends it

TEXT_FILES = {
    "fp32": "model_text.onnx",
    "fp16": "model_text_fp16.onnx",
    "int8": "model_text_int8.onnx",
    "int4": "model_text_int4.onnx",
}


@contextlib.contextmanager
def text_only(model):
    """No visual tokens at all: ``_merge_images`` then leaves the token embeddings as they are
    (exactly what a text-only row gets in the full graph, where its image features are
    multiplied by 0 and never gathered)."""
    model._image_features = lambda pixel_values, image_mask, is_image: None
    try:
        yield model
    finally:
        del model._image_features


class TextEmbeddingGraph(nn.Module):
    """``input_ids``, ``attention_mask`` -> the unit-norm embedding."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, attention_mask, None, None).embedding


def text_feed(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: feed[name] for name in TEXT_INPUTS}


def export_text_onnx(model, path: Path, spec: ExportSpec, external_data: bool) -> Path:
    model = model.eval()
    feed = dummy_feed(model.preprocessor)
    rows = np.flatnonzero(text_row_mask(feed))
    args = tuple(torch.from_numpy(feed[name][rows]) for name in TEXT_INPUTS)
    dynamic = {name: spec.dynamic_shapes()[name] for name in TEXT_INPUTS}
    with text_only(model), torch.no_grad(), quiet_exporter():
        program = torch.onnx.export(
            TextEmbeddingGraph(model),
            args,
            dynamo=True,
            dynamic_shapes=dynamic,
            input_names=list(TEXT_INPUTS),
            output_names=list(spec.output_names),
            opset_version=spec.opset,
            verbose=False,
        )
    if program is None:  # the dynamo exporter always returns a program; None is the legacy path
        raise RuntimeError("torch.onnx.export returned no ONNX program")
    program.save(str(path), external_data=external_data)
    return path


def text_parity_feeds(feeds) -> list[tuple[str, dict]]:
    """The text-only parity feeds (label ``b<N>/text``), as the text graph takes them."""
    return [(label, feed) for label, feed in feeds if label.endswith("/text")]


def check_text_parity(
    references: dict, feeds, onnx_path: Path, precision: str, report: dict, dims=()
) -> dict:
    """The text graph's gate: every text parity feed against the PyTorch reference rows."""
    import onnxruntime as ort

    from lame_export.validate import THRESHOLDS, parity_suite

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    text_feeds = text_parity_feeds(feeds)
    labels = {id(feed): label for label, feed in text_feeds}
    result = parity_suite(
        lambda feed: references[labels[id(feed)]],
        lambda feed: session.run(None, text_feed(feed))[0],  # noqa: F821
        text_feeds,
        THRESHOLDS[precision],
        dims,
    )
    del session
    if not result["passed"]:
        report["failures"].append(
            f"{precision} text graph parity: min cosine {result['min_cosine']:.6f} < {THRESHOLDS[precision]}"
        )
    return result


def build_text_graphs(model, stage: Path, spec: ExportSpec, external: bool, report: dict) -> None:
    """Export the fp32 text graph (before the weights are released) and lint it."""
    from lame_export.trt_lint import lint

    export_text_onnx(model, stage / TEXT_FILES["fp32"], spec, external)
    report["tensorrt_lint_text"] = lint(stage / TEXT_FILES["fp32"])


def convert_text_graph(precision: str, stage: Path, options, external: bool, progress) -> None:
    """fp16/int8/int4 of the text graph with the same conversions as the full graph (int8
    calibrated on the text rows of the full graph's calibration set)."""
    from lame_export.precision import convert_graph

    def int8_reader():
        from lame_calibration import CalibrationReader

        calib = options.calib_file or stage / "calib.npz"
        return CalibrationReader(calib, batch_size=2, input_names=list(TEXT_INPUTS), text_only=True)

    src, dst = stage / TEXT_FILES["fp32"], stage / TEXT_FILES[precision]
    convert_graph(precision, src, dst, options, external, progress, int8_reader)


def text_io_manifest(embed_dim: int) -> dict:
    return {
        "inputs": [
            {"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"]},
            {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "sequence"]},
        ],
        "outputs_dim": embed_dim,
    }
