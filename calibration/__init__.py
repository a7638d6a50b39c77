"""lame_calibration — calibration sets for INT8 quantization as ``.npz`` feed dicts.

A calibration set is a dict keyed by the ONNX input names (``input_ids``, ``attention_mask``,
``pixel_values``, ``image_mask``), every sample padded to the same shape: entropy/percentile
calibrators fail on ragged shapes. The same file is the documented input for ONNX Runtime's
``quantize_static`` (through :class:`CalibrationReader`) and for NVIDIA ModelOpt / TensorRT
Q/DQ calibration (``np.load(path)`` gives the feed dict directly).

Depends only on ``lame_runtime`` and NumPy — never on torch.
"""

from lame_calibration.build import build, load, pad_left, sample_items
from lame_calibration.reader import CalibrationReader

__all__ = ["build", "load", "pad_left", "sample_items", "CalibrationReader"]
