"""lame_export -- ONNX export of LaME checkpoints: one graph per precision (fp32, fp16, int8
Q/DQ, int4 weight-only) plus a text-only graph, reason tokens baked in as constants, every
precision parity-gated against PyTorch (``lame_export.pipeline.export_checkpoint``, the
``lame-export`` command). TensorRT engines are built by ``lame_runtime.engines.tensorrt``.

Importing this package is cheap: torch and onnx are imported by the modules that need them.
"""
