"""ONNX Runtime CalibrationDataReader over a calibration ``.npz``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from lame_calibration.build import BATCH_SEPARATOR, load


class CalibrationReader(CalibrationDataReader):
    """``text_only``: just the text-only rows (``image_mask == 0``; every row if there are
    none), for the text-only graph, which sees no images."""

    def __init__(self, path: str | Path, batch_size: int = 8, input_names=None, text_only: bool = False):
        self.data = load(path)
        self.batches: list[dict[str, np.ndarray]] | None = None
        if any(BATCH_SEPARATOR in name for name in self.data):
            self._native(path, input_names, text_only)
            return
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

    def _native(self, path, input_names, text_only: bool) -> None:
        """A native-resolution set: its stored batches, as they are (``text_only``: the text
        rows' ids and masks of each batch that has some)."""
        grouped: dict[str, dict[str, np.ndarray]] = {}
        for key, value in self.data.items():
            batch, _, name = key.partition(BATCH_SEPARATOR)
            grouped.setdefault(batch, {})[name] = value
        batches = [grouped[key] for key in sorted(grouped)]
        if text_only:
            batches = [
                {n: b[n][rows] for n in ("input_ids", "attention_mask")}
                for b in batches
                if len(rows := np.flatnonzero((b["visual_index"] < 0).all(axis=1)))
            ] or [{n: b[n] for n in ("input_ids", "attention_mask")} for b in batches]
        if input_names is not None:
            missing = sorted({n for b in batches for n in input_names if n not in b})
            if missing:
                raise ValueError(f"{path} lacks model inputs {missing}")
            batches = [{n: b[n] for n in input_names} for b in batches]
        self.batches = batches
        self.count = len(batches)
        self.batch_size = 1
        self.rewind()

    def __len__(self) -> int:
        return -(-self.count // self.batch_size)

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.batches is not None:
            if self.position >= self.count:
                return None
            self.position += 1
            return self.batches[self.position - 1]
        if self.position >= self.count:
            return None
        part = slice(self.position, self.position + self.batch_size)
        self.position += self.batch_size
        return {name: value[part] for name, value in self.data.items()}

    def rewind(self) -> None:
        self.position = 0
