"""ONNX Runtime CalibrationDataReader over a calibration ``.npz``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from lame_calibration.build import load


class CalibrationReader(CalibrationDataReader):
    """``text_only``: just the text-only rows (``image_mask == 0``; every row if there are
    none), for the text-only graph, which sees no images."""

    def __init__(self, path: str | Path, batch_size: int = 8, input_names=None, text_only: bool = False):
        self.data = load(path)
        if text_only and "image_mask" in self.data:
            rows = np.flatnonzero(self.data["image_mask"] == 0)
            if len(rows):
                self.data = {name: value[rows] for name, value in self.data.items()}
        if input_names is not None:
            missing = [n for n in input_names if n not in self.data]
            if missing:
                raise ValueError(f"{path} lacks model inputs {missing}")
            self.data = {n: self.data[n] for n in input_names}
        self.batch_size = batch_size
        self.count = len(next(iter(self.data.values())))
        self.rewind()

    def __len__(self) -> int:
        return -(-self.count // self.batch_size)

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= self.count:
            return None
        part = slice(self.position, self.position + self.batch_size)
        self.position += self.batch_size
        return {name: value[part] for name, value in self.data.items()}

    def rewind(self) -> None:
        self.position = 0
