"""FP16 and INT8 (Q/DQ) variants of an fp32 ONNX graph, with maintained converters only.

* FP16: ``onnxruntime.transformers.float16``; inputs/outputs stay fp32 and the ops where fp16
  overflows or loses the most (normalisations, softmax, the L2 norm, rotary angles) stay fp32.
* INT8: ``onnxruntime.quantization`` — ``quant_pre_process`` then ``quantize_static`` in QDQ
  format, per-channel int8 weights and uint8 activations (U8S8), on the weight MatMul/Gemm
  nodes only. Activation-activation MatMuls (attention scores) stay fp32: quantising them cost
  accuracy for no speed here (see the README's export table).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

# RMSNorm decomposes to Pow/ReduceMean/Sqrt/Reciprocal; keep the whole chain in fp32.
FP16_KEEP_FP32 = ["Pow", "ReduceMean", "Sqrt", "Reciprocal", "LayerNormalization", "Softmax",
                  "ReduceL2", "CumSum", "Range", "Sin", "Cos", "Erf"]
INT8_OP_TYPES = ("MatMul", "Gemm")


def to_fp16(src: Path, dst: Path) -> Path:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    converted = convert_float_to_float16(model, keep_io_types=True,
                                         op_block_list=FP16_KEEP_FP32)
    onnx.save(converted, str(dst))
    return dst


def weight_nodes(model, op_types=INT8_OP_TYPES) -> list[str]:
    """Names of op_types nodes with a constant (initializer) operand: the weight matmuls."""
    initializers = {i.name for i in model.graph.initializer}
    constants = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in model.graph.node
            if n.op_type in op_types and any(i in initializers | constants for i in n.input)]


def to_int8(src: Path, dst: Path, reader, per_channel: bool = True,
            op_types=INT8_OP_TYPES, for_tensorrt: bool = False) -> Path:
    """``for_tensorrt``: symmetric int8 activations (zero point 0), which TensorRT's Q/DQ
    parser requires; the default U8S8 runs fastest on ONNX Runtime's CPU kernels."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(dir=Path(dst).parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        nodes = weight_nodes(onnx.load(str(prepared)), op_types)
        partial = Path(tmp) / "int8.onnx"
        quantize_static(str(prepared), str(partial), reader, quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8 if for_tensorrt else QuantType.QUInt8,
                        weight_type=QuantType.QInt8, per_channel=per_channel,
                        op_types_to_quantize=list(op_types), nodes_to_quantize=nodes,
                        extra_options={"ActivationSymmetric": for_tensorrt,
                                       "WeightSymmetric": True})
        os.replace(partial, dst)
    return dst
