"""Modality routing: text-only rows to the text graph, rows with an image or video to the full
graph.

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


def text_row_mask(feed: dict[str, np.ndarray]) -> np.ndarray:
    """[B] bool: rows without any image or video (a fixed-size feed says so in ``image_mask``;
    a native one has no visual placeholder in ``visual_index``)."""
    if "image_mask" in feed:
        rows: np.ndarray = np.asarray(feed["image_mask"]) == 0
    else:
        rows = np.asarray(feed["visual_index"]).max(axis=1) < 0
    return rows


def visual_rows_feed(feed: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    """``rows`` of a feed for the full graph, left padding they all share trimmed. A native
    feed keeps its patch slices whole (``visual_index`` still points into them)."""
    if "image_mask" in feed:
        out = {name: value[rows] for name, value in feed.items()}
    else:
        out = dict(feed)
        out["input_ids"], out["attention_mask"] = feed["input_ids"][rows], feed["attention_mask"][rows]
        out["visual_index"], out["position_ids"] = feed["visual_index"][rows], feed["position_ids"][:, rows]
    trimmed = text_rows_feed(out, np.arange(len(rows)))
    cut = out["input_ids"].shape[1] - trimmed["input_ids"].shape[1]
    out.update(trimmed)
    if "visual_index" in out and cut:
        out["visual_index"] = np.ascontiguousarray(out["visual_index"][:, cut:])
        out["position_ids"] = np.ascontiguousarray(out["position_ids"][:, :, cut:])
    return out


def route(
    feed: dict[str, np.ndarray],
    full: Callable[[dict[str, np.ndarray]], np.ndarray],
    text: Callable[[dict[str, np.ndarray]], np.ndarray],
) -> np.ndarray:
    """Outputs for every row of ``feed``: text-only rows through ``text``, the rest ``full``."""
    is_text = text_row_mask(feed)
    if is_text.all():
        return text(text_rows_feed(feed, np.arange(len(is_text))))
    if not is_text.any():
        return full(feed)
    text_at, image_at = np.flatnonzero(is_text), np.flatnonzero(~is_text)
    # The image rows are left-padded to the longest row of the whole batch; trim that too.
    image_feed = visual_rows_feed(feed, image_at)
    text_out = text(text_rows_feed(feed, text_at))
    image_out = full(image_feed)
    out = np.empty((len(is_text), text_out.shape[1]), dtype=np.result_type(text_out, image_out))
    out[text_at], out[image_at] = text_out, image_out
    return out
