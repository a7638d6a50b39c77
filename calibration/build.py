"""Sample, preprocess (with the runtime's own code) and save a calibration set."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from lame_runtime.errors import InputError
from lame_runtime.inputs.preprocess import Preprocessor, format_query
from lame_runtime.persist import atomic_write_file, parse_json

# (text, absolute image path or list of them, absolute video path)
Item = tuple[str | None, Any, str | None]
# A native-resolution set is stored as whole batches (their patch slices differ in shape):
# keys "batch0003__pixel_values"; a fixed-size one as one padded feed.
BATCH_SEPARATOR = "__"
NATIVE_BATCH = 2


def _items_of(row: dict[str, Any], root: Path, split: str) -> list[tuple[str, Item]]:
    """(stratum, item) pairs of one jsonl row: its query and its targets/candidates."""

    def item(spec: dict, instruction: str | None = None) -> Item:
        image, video = spec.get("image"), spec.get("video")
        images: Any = (
            [str(root / i) for i in image] if isinstance(image, list) else image and str(root / image)
        )
        return (
            format_query(spec.get("text"), instruction),
            images or None,
            str(root / video) if video else None,
        )

    task = row.get("task", "default")
    out = [(f"{task}/query", item(row["query"], row.get("instruction")))]
    docs = [row["target"]] if split == "train" else row.get("candidates", [])
    out += [(f"{task}/document", item(doc)) for doc in docs]
    return out


def sample_items(data_dir: str | Path, size: int, seed: int = 0, split: str = "train") -> list[Item]:
    """Seeded sample stratified over (task, query/document, modality), round-robin."""
    root = Path(data_dir)
    path = root / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"calibration data: {path} not found")
    strata: dict[str, list[Item]] = defaultdict(list)
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = parse_json(line, f"{path}:{number}", InputError)
                for stratum, (text, image, video) in _items_of(row, root, split):
                    kinds = (("text", text), ("image", image), ("video", video))
                    modality = "+".join(m for m, v in kinds if v)
                    strata[f"{stratum}/{modality}"].append((text, image, video))
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(f"{path}:{number}: not a valid row: {err}") from err
    rng = np.random.default_rng(seed)
    queues = {k: [v[i] for i in rng.permutation(len(v))] for k, v in sorted(strata.items())}
    picked: list[Item] = []
    while len(picked) < size and any(queues.values()):
        for key in sorted(queues):
            if queues[key] and len(picked) < size:
                picked.append(queues[key].pop())
    return picked


def pad_left(feed: dict[str, np.ndarray], length: int, pad_id: int) -> dict[str, np.ndarray]:
    """Left-pad ``input_ids``/``attention_mask`` to a fixed ``length``."""
    current = feed["input_ids"].shape[1]
    if current > length:
        raise ValueError(f"sequence length {current} exceeds the fixed length {length}")
    extra = length - current
    out = dict(feed)
    out["input_ids"] = np.pad(feed["input_ids"], ((0, 0), (extra, 0)), constant_values=pad_id)
    out["attention_mask"] = np.pad(feed["attention_mask"], ((0, 0), (extra, 0)))
    return out


def build(
    data_dir: str | Path,
    preprocessor_dir: str | Path,
    out_path: str | Path,
    size: int = 128,
    seed: int = 0,
    split: str = "train",
    length: int | None = None,
) -> Path:
    """Write ``out_path`` (.npz, atomically): ``size`` samples, all padded to one length."""
    preprocessor = Preprocessor.from_dir(preprocessor_dir)
    items = sample_items(data_dir, size, seed, split)
    if not items:
        raise ValueError(f"no calibration samples found in {data_dir}")
    texts, images, videos = ([item[k] for item in items] for k in range(3))
    if preprocessor.image.native:
        # Batches as the runtime builds them: each at its own images' sizes (mixed sizes).
        feed = {}
        for number, start in enumerate(range(0, len(items), NATIVE_BATCH)):
            part = slice(start, start + NATIVE_BATCH)
            batch = preprocessor(texts[part], images[part], start, videos[part])
            feed.update({f"batch{number:04d}{BATCH_SEPARATOR}{name}": value for name, value in batch.items()})
    else:
        if any(isinstance(i, list) for i in images) or any(videos):
            raise InputError(f"{data_dir}: rows with several images or videos need a native-resolution model")
        feed = preprocessor(texts, images)
        feed = pad_left(feed, length or feed["input_ids"].shape[1], preprocessor.text.special["pad"])
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)

    def write(handle: BinaryIO) -> None:
        np.savez(handle, **feed)  # type: ignore[arg-type]  # numpy's stub types **arrays as its allow_pickle flag

    return atomic_write_file(out_path, write)


def load(path: str | Path) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"calibration file not found: {path}")
    with np.load(path, allow_pickle=False) as data:  # never unpickle
        return {name: data[name] for name in data.files}
