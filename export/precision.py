"""FP16 and INT8 (Q/DQ) variants of an fp32 ONNX graph, with maintained converters only.

* FP16: ``onnxruntime.transformers.float16``; inputs/outputs stay fp32 and the ops where fp16
  overflows or loses the most (normalisations, softmax, the L2 norm, rotary angles) stay fp32.
* INT8: ``onnxruntime.quantization`` — ``quant_pre_process``, MinMax calibration (ORT's
  method, run here on a structure-only augmented graph to keep memory low; the ranges go to
  ``quantize_static`` as its calibration cache), then ``quantize_static`` in QDQ format, per-channel int8 weights and uint8 activations (U8S8), on the weight MatMul/Gemm
  nodes only. Activation-activation MatMuls (attention scores) stay fp32: quantising them cost
  accuracy for no speed here (see the export tables in docs/results/0.2.0.md).
* INT4 (weight-only): ``onnxruntime.quantization.matmul_nbits_quantizer`` — block-wise
  symmetric 4-bit weights for every weight MatMul (ORT's ``MatMulNBits`` contrib op; the
  quantiser handles MatMul only, and the exported linears are MatMul) and, optionally, the
  token-embedding table (``GatherBlockQuantized``). No calibration: activations stay float.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from lame_runtime.errors import InputError

# RMSNorm decomposes to Pow/ReduceMean/Sqrt/Reciprocal; keep the whole chain in fp32.
FP16_KEEP_FP32 = [
    "Pow",
    "ReduceMean",
    "Sqrt",
    "Reciprocal",
    "LayerNormalization",
    "Softmax",
    "ReduceL2",
    "CumSum",
    "Range",
    "Sin",
    "Cos",
    "Erf",
]
INT8_OP_TYPES = ("MatMul", "Gemm")


def data_file(graph: Path) -> str:
    """The external-data file name of a graph: ``model.onnx`` -> ``model.onnx.data``."""
    return f"{Path(graph).name}.data"


def save_graph(model, dst: Path, external_data: bool) -> Path:
    """Save a ModelProto; with ``external_data`` every tensor over 1 KiB goes to one
    ``<dst>.data`` file (the only way past protobuf's 2 GB limit)."""
    import onnx

    if external_data:
        Path(dst.parent / data_file(dst)).unlink(missing_ok=True)  # onnx appends to it
        onnx.save(
            model,
            str(dst),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data_file(dst),
            size_threshold=1024,
        )
    else:
        onnx.save(model, str(dst))
    return dst


def to_fp16(src: Path, dst: Path, external_data: bool = False) -> Path:
    import gc

    from onnxruntime.transformers.float16 import convert_float_to_float16

    # A path (not a ModelProto): the converter then runs shape inference with
    # infer_shapes_path, which works past 2 GB (infer_shapes serialises the proto and fails).
    converted = convert_float_to_float16(str(src), keep_io_types=True, op_block_list=FP16_KEEP_FP32)
    gc.collect()  # the fp32 copy the converter loaded is garbage now: free it before saving
    save_graph(converted, Path(dst), external_data)
    return dst


# Where ONNX Runtime's int4 kernel beats fp32 on a CPU: MLAS's int8-activation MatMulNBits path
# runs at fp32's speed with 16-64 weights per scale and 1.4-1.75x (M 400-128) with 128
# (scripts/bench/bench_matmulnbits.py, docs/runtime.md), so weights whose quantised axis is
# long enough for 8+ blocks of 128 get 128 (group 128 is also what GPTQ/AWQ 4-bit releases of
# 2B-8B VLMs use); narrower ones keep 16, which small models need for accuracy.
WIDE_BLOCK_SIZE = 128
WIDE_FROM = 1024


@dataclass
class Int4Options:
    # Weights per scale along the quantised axis. None: 16 below WIDE_FROM weights, 128 from
    # there. 16, not ORT's usual 32, below: on the main job's digits model (width 128) block
    # 32 lost 2.26 points of hit@1 (fails the 2-point gate), block 16 lost 1.43; with fp32
    # scales and 4-bit zero points that is 6.25 bits a weight instead of 5.125.
    block_size: int | None = None
    accuracy_level: int = 4  # MatMulNBits compute type: 4 = int8 activations (fastest on CPU);
    # 0 = fp32 compute (slower, a little closer to fp32)
    embeddings: bool = True  # 4-bit token-embedding table too (the biggest tensor at 2B)

    def check(self) -> None:
        size = self.block_size
        if size is not None and (size < 16 or size & (size - 1)):
            raise InputError(f"int4 block size must be a power of two >= 16, got {size}")
        if self.accuracy_level not in (0, 1, 2, 3, 4):
            raise InputError(f"int4 accuracy level must be 0-4, got {self.accuracy_level}")

    def block_for(self, length: int) -> int:
        """Weights per scale for a weight whose quantised axis has ``length`` entries."""
        if self.block_size is not None:
            return self.block_size
        return WIDE_BLOCK_SIZE if length >= WIDE_FROM else 16


def int4_blocks(model, options: Int4Options) -> dict[str, int]:
    """Node name -> block size for every node the int4 quantiser would take: weight MatMuls
    (quantised along K, the weight's first axis) and, with ``options.embeddings``, constant
    Gathers (along the row)."""
    weights = {init.name: list(init.dims) for init in model.graph.initializer}
    blocks: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type == "MatMul" and len(weights.get(node.input[1], ())) == 2:
            blocks[node.name] = options.block_for(weights[node.input[1]][0])
        elif options.embeddings and node.op_type == "Gather" and len(weights.get(node.input[0], ())) == 2:
            blocks[node.name] = options.block_for(weights[node.input[0]][1])
    return blocks


def to_int4(src: Path, dst: Path, options: Int4Options | None = None, external_data: bool = False) -> Path:
    """Weight-only int4 of an fp32 graph (``MatMulNBits``; TensorRT cannot parse it: see
    ``lame_export.trt_lint.INT4_NOTE``). One quantiser pass per block size (ORT's quantiser
    takes one size a pass), each leaving the other sizes' nodes for its own pass."""
    import gc

    import onnx
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    options = options or Int4Options()
    options.check()
    model = onnx.load(str(src))  # with its external data: the quantiser reads the weights
    blocks = int4_blocks(model, options)
    for size in sorted(set(blocks.values())):
        quantizer = MatMulNBitsQuantizer(
            model,
            bits=4,
            block_size=size,
            is_symmetric=True,
            accuracy_level=options.accuracy_level,
            nodes_to_exclude=[name for name, other in blocks.items() if other != size],
            quant_format=QuantFormat.QOperator,
            op_types_to_quantize=("MatMul", "Gather") if options.embeddings else ("MatMul",),
            quant_axes=(("MatMul", 0), ("Gather", 1)),
        )
        quantizer.process()
        model = quantizer.model.model
        del quantizer
        gc.collect()
    save_graph(model, Path(dst), external_data)
    return dst


def convert_graph(
    precision: str,
    src: Path,
    dst: Path,
    options: Any,
    external: bool,
    progress: Callable[[str], None],
    int8_reader: Callable[[], Any],
) -> Path:
    """fp16, int4 or int8 of one fp32 graph, as ``lame-export`` makes them for the full and the
    text graph alike. ``options``: the export's options (``int4_options()``,
    ``int8_for_tensorrt``); ``int8_reader``: makes the graph's calibration reader, called for
    int8 only."""
    if precision == "fp16":
        return to_fp16(src, dst, external_data=external)
    if precision == "int4":
        return to_int4(src, dst, options.int4_options(), external_data=external)
    if precision != "int8":
        raise ValueError(f"no conversion to {precision!r}")
    return to_int8(
        src,
        dst,
        int8_reader(),
        for_tensorrt=options.int8_for_tensorrt,
        external_data=external,
        progress=progress,
    )


def weight_nodes(model, op_types=INT8_OP_TYPES) -> list[str]:
    """Names of op_types nodes with a constant (initializer) operand: the weight matmuls."""
    initializers = {i.name for i in model.graph.initializer}
    constants = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [
        n.name
        for n in model.graph.node
        if n.op_type in op_types and any(i in initializers | constants for i in n.input)
    ]


def minmax_ranges(prepared: Path, reader, op_types=INT8_OP_TYPES):
    """MinMax activation ranges of the op_types nodes' float inputs/outputs, as ORT's
    ``MinMaxCalibrater`` computes them (per-batch ReduceMin/ReduceMax, min/max over batches).

    Why not ORT's calibrator: it loads the whole model into Python, a second copy for the
    quantiser, and its session pre-packs every weight again (16 GB peak on the 2.4 GB probe).
    Here the augmented graph is written structure-only beside ``prepared`` (it reuses its
    external data) and the session runs without weight pre-packing.
    """
    import itertools

    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData

    model = onnx.load(str(prepared), load_external_data=False)
    graph = model.graph
    infos = {vi.name: vi for vi in itertools.chain(graph.value_info, graph.output, graph.input)}
    constants = {init.name for init in graph.initializer}
    floats = (TensorProto.FLOAT, TensorProto.FLOAT16)
    tensors = sorted(
        {
            name
            for node in graph.node
            if node.op_type in op_types
            for name in itertools.chain(node.input, node.output)
            if name in infos
            and name not in constants
            and infos[name].type.HasField("tensor_type")
            and infos[name].type.tensor_type.elem_type in floats
        }
    )
    outputs: list[str] = []
    reducers: dict[str, list[Any]] = {}
    for i, name in enumerate(tensors):
        for op in ("ReduceMin", "ReduceMax"):
            out = f"lame_calib_{i}_{op}"
            reducers.setdefault(name, []).append(helper.make_node(op, [name], [out], keepdims=1, name=out))
            outputs.append(out)
            graph.output.append(
                helper.make_tensor_value_info(out, infos[name].type.tensor_type.elem_type, None)
            )
    # Each reduction right after its tensor's producer: appended at the end instead, ORT would
    # keep every calibrated activation alive until the end of the run (GBs at 2B scale).
    nodes = [n for name in tensors if name in {i.name for i in graph.input} for n in reducers[name]]
    for node in graph.node:
        nodes.append(node)
        nodes += [n for name in node.output for n in reducers.get(name, [])]
    del graph.node[:]
    graph.node.extend(nodes)
    augmented = Path(prepared).parent / "augmented.onnx"
    onnx.save(model, str(augmented))  # structure only: the weights stay in prepared's .data
    del model, graph
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.add_session_config_entry("session.disable_prepacking", "1")
    options.enable_cpu_mem_arena = False  # give activation memory back between batches
    session = ort.InferenceSession(str(augmented), options, providers=["CPUExecutionProvider"])
    lows = np.full(len(tensors), np.inf, dtype=np.float32)
    highs = np.full(len(tensors), -np.inf, dtype=np.float32)
    reader.rewind()
    for batch in iter(reader.get_next, None):
        values = session.run(outputs, batch)
        lows = np.fmin(lows, [float(np.min(v)) for v in values[0::2]])
        highs = np.fmax(highs, [float(np.max(v)) for v in values[1::2]])
    del session
    augmented.unlink()
    return TensorsData(
        CalibrationMethod.MinMax,
        {
            name: TensorData(lowest=np.array([lo], np.float32), highest=np.array([hi], np.float32))
            for name, lo, hi in zip(tensors, lows, highs)
        },
    )


def to_int8(
    src: Path,
    dst: Path,
    reader,
    per_channel: bool = True,
    op_types=INT8_OP_TYPES,
    for_tensorrt: bool = False,
    external_data: bool = False,
    progress=lambda message: None,
) -> Path:
    """``for_tensorrt``: symmetric int8 activations (zero point 0), which TensorRT's Q/DQ
    parser requires; the default U8S8 runs fastest on ONNX Runtime's CPU kernels."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data
    from onnxruntime.quantization.shape_inference import quant_pre_process

    dst = Path(dst)
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        progress(f"int8 {dst.name}: pre-processing (shape inference, ORT basic optimisations)")
        quant_pre_process(
            str(src),
            str(prepared),
            skip_symbolic_shape=True,
            save_as_external_data=external_data,
            all_tensors_to_one_file=True,
            external_data_location=data_file(prepared),
        )
        progress(f"int8 {dst.name}: calibrating activation ranges (MinMax)")
        ranges = Path(tmp) / "ranges.json"
        save_tensors_data(minmax_ranges(prepared, reader, op_types), ranges)
        # Graph structure only: the node list does not need 2 GB of weights in memory.
        nodes = weight_nodes(onnx.load(str(prepared), load_external_data=False), op_types)
        partial = Path(tmp) / dst.name
        progress(f"int8 {dst.name}: quantising weights (Q/DQ)")
        quantize_static(
            str(prepared),
            str(partial),
            None,
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8 if for_tensorrt else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            op_types_to_quantize=list(op_types),
            nodes_to_quantize=nodes,
            use_external_data_format=external_data,
            extra_options={"ActivationSymmetric": for_tensorrt, "WeightSymmetric": True},
            calibration_cache_path=str(ranges),
        )
        if external_data:
            os.replace(Path(tmp) / data_file(partial), dst.parent / data_file(dst))
        os.replace(partial, dst)
    return dst
