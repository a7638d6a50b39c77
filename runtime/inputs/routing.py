"""Modality routing: text-only rows to the text graph, rows with an image to the full graph.

The full graph runs the vision tower on every row (static shapes; ``image_mask`` zeroes the
visual tokens of text-only rows), so a text query used to pay for a blank image. Artifacts
exported with a text-only graph (``models[precision]["text"]``) let ``Embedder.infer`` send
those rows to it instead; the outputs come back in the caller's row order. Left padding that
only the image rows needed (their visual placeholder tokens) is trimmed from the text rows
first: padded positions are masked out, so the result is the same and shorter.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from lame_runtime.artifact.bounds import MIN_SEQUENCE

TEXT_INPUTS = ("input_ids", "attention_mask")


def text_rows_feed(feed: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    """``rows`` of the text inputs, without the leading columns padded in every one of them."""
    mask = feed["attention_mask"][rows]
    used = np.flatnonzero(mask.any(axis=0))
    first = int(used[0]) if len(used) else 0
    first = min(first, max(mask.shape[1] - MIN_SEQUENCE, 0))
    return {
        "input_ids": np.ascontiguousarray(feed["input_ids"][rows, first:]),
        "attention_mask": np.ascontiguousarray(mask[:, first:]),
    }


def route(
    feed: dict[str, np.ndarray],
    full: Callable[[dict[str, np.ndarray]], np.ndarray],
    text: Callable[[dict[str, np.ndarray]], np.ndarray],
) -> np.ndarray:
    """Outputs for every row of ``feed``: text-only rows through ``text``, the rest ``full``."""
    is_text = np.asarray(feed["image_mask"]) == 0
    if is_text.all():
        return text(text_rows_feed(feed, np.arange(len(is_text))))
    if not is_text.any():
        return full(feed)
    text_at, image_at = np.flatnonzero(is_text), np.flatnonzero(~is_text)
    image_feed = {name: value[image_at] for name, value in feed.items()}
    # The image rows are left-padded to the longest row of the whole batch; trim that too.
    image_feed.update(text_rows_feed(image_feed, np.arange(len(image_at))))
    text_out = text(text_rows_feed(feed, text_at))
    image_out = full(image_feed)
    out = np.empty((len(is_text), text_out.shape[1]), dtype=np.result_type(text_out, image_out))
    out[text_at], out[image_at] = text_out, image_out
    return out
