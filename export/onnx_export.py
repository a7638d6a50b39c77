"""PyTorch -> ONNX with the dynamo exporter; reason tokens become graph constants."""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from lame_export.patches import EmbeddingGraph, NativeEmbeddingGraph, export_patches
from lame_export.spec import ExportSpec, dummy_feed

TWO_GIB = 2 * 1024**3


def parameter_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


# The dynamo exporter logs "torchvision is not installed. Skipping torchvision::..." once per
# torchvision op in its registry whenever torchvision is absent (eight lines per export). Our
# graphs use no torchvision op, and installing torchvision would pull a CUDA torch: silence
# that logger for the export only, along with the exporter's deprecation warnings.
REGISTRY_LOGGER = "torch.onnx._internal.exporter._registration"


@contextlib.contextmanager
def quiet_exporter():
    logger = logging.getLogger(REGISTRY_LOGGER)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def export_onnx(model, path: Path, spec: ExportSpec, external_data: bool | None = None) -> Path:
    """``external_data``: weights in ``<path>.data`` (None: only when the weights pass 2 GiB)."""
    model = model.eval()
    feed = dummy_feed(model.preprocessor)
    tensors = {name: torch.from_numpy(feed[name]) for name in spec.input_names}
    graph = NativeEmbeddingGraph(model) if spec.native else EmbeddingGraph(model)
    # Keyword inputs for a native graph: its family leaves some of the forward's inputs out.
    args, kwargs = ((), tensors) if spec.native else (tuple(tensors.values()), None)
    with export_patches(model), torch.no_grad(), quiet_exporter():
        program = torch.onnx.export(
            graph,
            args,
            kwargs=kwargs,
            dynamo=True,
            dynamic_shapes=spec.dynamic_shapes(),
            input_names=list(spec.input_names),
            output_names=list(spec.output_names),
            opset_version=spec.opset,
            verbose=False,
        )
    if external_data is None:
        external_data = parameter_bytes(model) > TWO_GIB
    if program is None:  # the dynamo exporter always returns a program; None is the legacy path
        raise RuntimeError("torch.onnx.export returned no ONNX program")
    program.save(str(path), external_data=external_data)
    return path


# The exporter folds the reason tokens (with the summary tokens) into one constant whose name
# it picks itself; it has K..K+MAX_EXTRA_ROWS rows of the hidden width.
MAX_EXTRA_ROWS = 64


def reason_token_initializer(onnx_path: Path, reason_tokens: np.ndarray) -> str | None:
    """Name of the initializer that holds the checkpoint's reason-token rows, if any.

    Reads the graph structure only (``load_external_data=False``) and then the values of the
    few initializers whose name and shape can hold the tokens, one by one (a name with
    ``reason_tokens`` first): a 2 GB graph is never loaded whole and no session is opened.
    """
    import onnx
    from onnx import numpy_helper

    if reason_tokens.size == 0:
        return None
    count, width = reason_tokens.shape
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    candidates = []
    for init in graph.initializer:
        size = int(np.prod(init.dims)) if init.dims else 1
        rows = size // width
        if init.dims and init.dims[-1] == width and count <= rows <= count + MAX_EXTRA_ROWS:
            candidates.append(init)
    candidates.sort(key=lambda init: ("reason_tokens" not in init.name, init.name))
    for init in candidates:
        values = numpy_helper.to_array(init, base_dir=str(Path(onnx_path).parent))
        rows = values.reshape(-1, width).astype(np.float32)
        for start in range(rows.shape[0] - count + 1):
            if np.allclose(rows[start : start + count], reason_tokens, atol=1e-3):
                return init.name
    return None
