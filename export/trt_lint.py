"""TensorRT readiness lint: a graph's operators vs the TensorRT ONNX parser's support table.

The table (``trt_onnx_ops.json``) is transcribed from onnx/onnx-tensorrt ``docs/operators.md``;
its ``source``/``versions.*.ref`` fields say which revision. The "10.3" entry is the nearest
stored 10.x table (10.8) with the ops added after 10.3 removed, per the parser's changelog.
"""

from __future__ import annotations

import json
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any

TABLE = Path(__file__).with_name("trt_onnx_ops.json")


@lru_cache(maxsize=1)
def support_table() -> dict:
    return json.loads(TABLE.read_text())


def _supported(version: dict) -> set[str]:
    return set(version.get("supported_estimated_for_10_3") or version["supported"])


def lint(onnx_path: str | Path) -> dict:
    """-> {"ops": {op: count}, "versions": {v: {"unsupported": [...], "restricted": {...}}},
    "data_dependent_shape_ops": [...], "ok": bool}"""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    ops = Counter(node.op_type for node in model.graph.node if node.domain in ("", "ai.onnx"))
    custom = sorted({f"{n.domain}::{n.op_type}" for n in model.graph.node if n.domain not in ("", "ai.onnx")})
    table = support_table()
    report: dict[str, Any] = {"ops": dict(sorted(ops.items())), "custom_domain_ops": custom, "versions": {}}
    for name, version in table["versions"].items():
        supported = _supported(version)
        restrictions = version.get("restrictions", {})
        report["versions"][name] = {
            "table": version.get("file_trt_version", name),
            "unsupported": sorted(op for op in ops if op not in supported),
            "restricted": {op: restrictions[op] for op in sorted(ops) if op in restrictions},
        }
    report["data_dependent_shape_ops"] = sorted(set(ops) & set(table["data_dependent_shape_ops"]))
    report["ok"] = (
        not custom
        and not report["data_dependent_shape_ops"]
        and all(not v["unsupported"] for v in report["versions"].values())
    )
    return report


# What TensorRT does with weight-only int4 (TensorRT 10 docs, "Weight-only quantization" /
# "INT4 block quantization"): it runs INT4 weights only as an ONNX DequantizeLinear with an
# INT4 initializer and a ``block_size`` attribute (opset 21) feeding a MatMul/Gemm, in a
# strongly typed network; ORT's ``MatMulNBits``/``GatherBlockQuantized`` are com.microsoft
# contrib ops that the TensorRT ONNX parser does not know. Block-quantised Gather (the
# embedding table) is not supported by TensorRT at all.
INT4_NOTE = (
    "the int4 graph uses ONNX Runtime's com.microsoft MatMulNBits / "
    "GatherBlockQuantized, which TensorRT cannot parse: serve int4 with ONNX Runtime "
    "(CPU or CUDA EP); TensorRT takes INT4 weight-only only as opset-21 blocked "
    "DequantizeLinear(INT4) -> MatMul in a strongly typed network, and has no "
    "block-quantised Gather, so a TensorRT int4 needs the embedding table in fp16"
)


def int4_lint(onnx_path: str | Path) -> dict:
    """``lint`` of the int4 graph plus the note on what TensorRT supports of it."""
    report = lint(onnx_path)
    report["note"] = INT4_NOTE
    return report
