"""Dataset items with several images or a video, and their batches for a native-resolution model.

A candidate of a dataset's ``eval.jsonl`` may give ``"image"`` as a list of paths and a
``"video"``: a video file (PyAV) or a folder of frame files, every path relative to the
dataset folder and confined to it. Such an item's visual is a JSON object
(``{"image": [...], "video": ...}``, absolute paths) so a skipped-item report can record it.
Only a native-resolution model (Qwen-VL families) embeds it; a fixed-size one refuses the
build, naming the item, before anything is embedded. Native batches are built serially here
(``native_prepared``): one row's visuals at a time, so ``--skip-bad`` skips exactly the rows
that fail.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from lame_runtime.artifact.paths import contained_path
from lame_runtime.errors import InputError, InputTypeError, IntegrityError, MissingFileError
from lame_runtime.inputs.native import native_feed, row_visuals
from lame_runtime.inputs.preprocess import native_rows

ITEM_ERRORS = (InputError, InputTypeError, MissingFileError)


@dataclass
class NativePrepared:
    """A native batch: what ``FeedPipeline.prepared`` yields for a fixed-size model."""

    start: int
    ids: list[Any]
    feed: dict[str, np.ndarray] | None
    errors: list[tuple[int, Any, Any, Exception]]


def is_visual_set(visual: Any) -> bool:
    """Whether an item's visual is several images and/or a video (not one image path)."""
    return isinstance(visual, dict)


def check_fixed(items: Sequence[Any]) -> None:
    """A fixed-size model embeds one image per item: refuse the others before any work."""
    for position, item in enumerate(items):
        visual = item[3]
        if is_visual_set(visual):
            what = "a video" if visual.get("video") else f"{len(visual.get('image') or ())} images"
            raise InputError(
                f"items[{position}] ({item[0]!r}) holds {what}; this model reads one fixed-size image "
                "per item (several images and videos need a native-resolution model)"
            )


def split(visual: Any) -> tuple[Any, Any]:
    """An item's visual -> (its image or list of images, its video) as ``Preprocessor`` takes
    them."""
    if is_visual_set(visual):
        return visual.get("image") or None, visual.get("video")
    return visual, None


def native_prepared(
    preprocessor: Any, rows: Iterable[tuple[Any, Any, Any]], batch_size: int, skip_bad: bool, start: int
) -> Iterator[NativePrepared]:
    """(id, text, visual) rows -> native feeds of ``batch_size`` rows, in order."""
    batch: list[tuple[Any, Any, Any]] = []
    position = start
    for row in rows:
        batch.append(row)
        if len(batch) == batch_size:
            yield _batch(preprocessor, batch, position, skip_bad)
            position += len(batch)
            batch = []
    if batch:
        yield _batch(preprocessor, batch, position, skip_bad)


def _batch(
    preprocessor: Any, batch: list[tuple[Any, Any, Any]], start: int, skip_bad: bool
) -> NativePrepared:
    cfg = preprocessor.image
    pairs = [split(visual) for _, _, visual in batch]
    texts, images, videos = native_rows(
        [text for _, text, _ in batch], [p[0] for p in pairs], [p[1] for p in pairs], start
    )
    kept, visuals = [], []
    errors: list[tuple[int, Any, Any, Exception]] = []
    for row, (image, video) in enumerate(zip(images, videos)):
        try:
            visuals.append(row_visuals(image, video, cfg, start + row, preprocessor.max_pixels))
        except ITEM_ERRORS as err:
            if not skip_bad:
                raise
            errors.append((start + row, batch[row][0], batch[row][2], err))
            continue
        kept.append(row)
    if not kept:
        return NativePrepared(start, [], None, errors)
    counts = [[v.tokens(cfg.merge_size) for v in row] for row in visuals]
    ids, mask = preprocessor.text.encode_visual_rows([texts[r] for r in kept], counts)
    feed = native_feed(ids, mask, ids == preprocessor.text.special["image"], visuals, cfg)
    return NativePrepared(start, [batch[r][0] for r in kept], feed, errors)


def dataset_path(root: Path, relative: str, where: str, kind: str) -> Path:
    """A path of the dataset, confined to it; a video may be a file or a folder of frames
    (whose frames may not link out of the dataset either)."""
    path = contained_path(root, relative, f"{where}: {kind.split()[0]} path", folder="dataset")
    if kind == "video" and path.is_dir():
        base = root.resolve()
        outside = [f for f in sorted(path.iterdir()) if base not in f.resolve().parents]
        if outside:
            raise IntegrityError(f"{where}: video frame {outside[0]} links outside the dataset folder {root}")
        return path
    if not path.is_file():
        raise MissingFileError(f"{where}: {kind} not found: {path}")
    return path
