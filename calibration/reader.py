"""ONNX Runtime CalibrationDataReader over a calibration ``.npz``."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from lame_calibration.build import load


class CalibrationReader(CalibrationDataReader):
    def __init__(self, path: str | Path, batch_size: int = 8, input_names=None):
        self.data = load(path)
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
