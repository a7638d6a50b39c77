"""lame_export — ONNX export of LaME checkpoints (reason tokens baked in as constants), parity checks,
FP16 / INT8 (Q/DQ) variants, TensorRT engines and Triton repositories.

Not implemented yet: it lands with the export issue. Importing it is cheap and safe.
"""
