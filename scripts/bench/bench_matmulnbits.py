"""One weight MatMul at the probe's widths: fp32 against int4 ``MatMulNBits`` per block size and
accuracy level, one run side by side (rounds interleaved).

    python scripts/bench/bench_matmulnbits.py [--k 1536] [--n 8960] [--m 400] [--threads 2] [--rounds 5] [--json OUT]

What the int4 kernels give on this CPU, apart from the model: ``--m`` is the rows of one call
(a text batch of 8 is a few hundred token rows; an image batch more), K x N the Qwen2-VL-2B
MLP's up projection. Prints ms per call and the speed relative to fp32's MLAS SGEMM.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=1536)
    parser.add_argument("--n", type=int, default=8960)
    parser.add_argument("--m", type=int, default=400)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write {name: median seconds} here")
    args = parser.parse_args(argv)
    logging.disable(logging.INFO)  # the quantiser logs every node
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((args.k, args.n)) * 0.02).astype(np.float32)

    def model():
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["X", "W"], ["Y"])],
            "g",
            [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["m", args.k])],
            [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["m", args.n])],
            [numpy_helper.from_array(weight, "W")],
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    sessions = {"fp32 MatMul": ort.InferenceSession(model().SerializeToString(), options)}
    for block in (16, 32, 64, 128):
        for level in (4, 0):
            quantizer = MatMulNBitsQuantizer(
                model(),
                bits=4,
                block_size=block,
                is_symmetric=True,
                accuracy_level=level,
                quant_format=QuantFormat.QOperator,
                op_types_to_quantize=("MatMul",),
                quant_axes=(("MatMul", 0),),
            )
            quantizer.process()
            sessions[f"int4 block {block}, level {level}"] = ort.InferenceSession(
                quantizer.model.model.SerializeToString(), options
            )
    x = rng.standard_normal((args.m, args.k)).astype(np.float32)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for session in sessions.values():
        session.run(None, {"X": x})
    for _ in range(args.rounds):
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run(None, {"X": x})
            times[name].append(time.perf_counter() - start)
    base = float(np.median(times["fp32 MatMul"]))
    if args.json:
        medians = {name: float(np.median(values)) for name, values in times.items()}
        args.json.write_text(
            json.dumps({"m": args.m, "k": args.k, "n": args.n, "seconds": medians}, indent=1)
        )
    print(f"M={args.m} K={args.k} N={args.n}, {args.threads} threads, onnxruntime {ort.__version__}")
    for name, values in times.items():
        median = float(np.median(values))
        print(f"{name:<24} {median * 1000:9.1f} ms   x{base / median:.2f} fp32's speed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
