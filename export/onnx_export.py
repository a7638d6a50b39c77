"""PyTorch -> ONNX with the dynamo exporter; reason tokens become graph constants."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from lame_export.patches import EmbeddingGraph, export_patches
from lame_export.spec import ExportSpec, dummy_feed

TWO_GIB = 2 * 1024 ** 3


def export_onnx(model, path: Path, spec: ExportSpec) -> Path:
    model = model.eval()
    feed = dummy_feed(model.preprocessor)
    args = tuple(torch.from_numpy(feed[name]) for name in spec.input_names)
    with export_patches(model), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            EmbeddingGraph(model), args, dynamo=True, dynamic_shapes=spec.dynamic_shapes(),
            input_names=list(spec.input_names), output_names=list(spec.output_names),
            opset_version=spec.opset, verbose=False)
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    program.save(str(path), external_data=size > TWO_GIB)
    return path


def reason_token_initializer(onnx_path: Path, reason_tokens: np.ndarray) -> str | None:
    """Name of an initializer that contains the checkpoint's reason-token rows, if any."""
    import onnx
    from onnx import numpy_helper

    if reason_tokens.size == 0:
        return None
    width = reason_tokens.shape[1]
    model = onnx.load(str(onnx_path))
    for init in model.graph.initializer:
        values = numpy_helper.to_array(init)
        if values.size < reason_tokens.size or values.size % width:
            continue
        rows = values.reshape(-1, width).astype(np.float32)
        for start in range(rows.shape[0] - reason_tokens.shape[0] + 1):
            if np.allclose(rows[start:start + reason_tokens.shape[0]], reason_tokens, atol=1e-3):
                return init.name
    return None
