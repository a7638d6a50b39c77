"""lame_calibration — calibration sets for INT8 quantization, stored as ``.npz`` feed dicts keyed by
ONNX input names. Depends only on ``lame_runtime`` (never on torch).

Not implemented yet: it lands with the export issue.
"""
