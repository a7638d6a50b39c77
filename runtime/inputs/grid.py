"""Everything that depends on a Qwen-VL image's patch grid, in NumPy (torch-free).

At native resolution each image keeps its aspect ratio: it is resized by the family's
``smart_resize`` rule to a multiple of ``patch_size * merge_size`` within a pixel budget, cut
into a grid of patches whose size follows the image, and a video is a stack of such grids in
time (``temporal_patch_size`` frames per step). The exported graph must hold only tensor math
with dynamic dimensions, so whatever a family computes from the grid is computed here and fed
to it as inputs, and training calls the same functions:

* the flat patch rows, in the merge-block-major order the vision tower reads;
* the (row, column) of every patch, for the vision rotary embedding;
* Qwen2.5-VL's attention windows, as one window id per patch (windowed blocks attend within a
  window; the same numbers as Transformers' reorder-and-``cu_seqlens`` loop);
* Qwen3-VL's learned position table resampled to the grid: 4 bilinear taps and weights per
  patch (``align_corners=True``, Transformers' rule);
* the language model's 3-D (t, h, w) positions for a row of text and visual items,
  ``get_rope_index``'s rule.

The vision tower attends within one temporal step of one image or video (Transformers'
``cu_seqlens`` per frame step), so a batch is packed as *slices*: one slice per image and per
temporal step of a video, padded to the longest slice (attention is per slice, never a dense
mask over all patches of a batch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from lame_runtime.errors import InputError


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """The Qwen-VL resize rule: both sides a multiple of ``factor``, the area within
    [min_pixels, max_pixels], the aspect ratio kept as closely as possible. (Images reach it
    through ``load_image``, which refuses aspect ratios above 200:1 as the processors do.)"""
    if min(height, width) < 1:
        raise InputError(f"image of {width}x{height} pixels has no area")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def patchify_frames(frames: np.ndarray, patch: int, merge: int, temporal: int) -> tuple[np.ndarray, int]:
    """[T, C, H, W] normalised frames -> ([grid_t * gh * gw, C * temporal * patch²], grid_t).

    One frame (an image) is repeated ``temporal`` times, as the image processor does; a video
    with a frame count that is not a multiple of ``temporal`` repeats its last frame, as the
    video processor does. Patches come temporal step by step, each step merge-block-major."""
    if frames.ndim != 4:
        raise InputError(f"frames must be [T, C, H, W], got shape {frames.shape}")
    count, channels, height, width = frames.shape
    if count == 1:
        frames = np.broadcast_to(frames, (temporal, channels, height, width))
    elif pad := -count % temporal:
        frames = np.concatenate([frames, np.repeat(frames[-1:], pad, axis=0)])
    grid_t = frames.shape[0] // temporal
    gh, gw = height // patch, width // patch
    x = frames.reshape(grid_t, temporal, channels, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)  # (t, gh/m, gw/m, m, m, C, temporal, p, p)
    rows = x.reshape(grid_t * gh * gw, channels * temporal * patch * patch)
    return np.ascontiguousarray(rows, dtype=np.float32), grid_t


def patch_positions(grid_h: int, grid_w: int, merge: int) -> np.ndarray:
    """[gh * gw, 2] (row, column) of each patch, in merge-block-major order."""
    rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
    shape = (grid_h // merge, merge, grid_w // merge, merge)
    rows = rows.reshape(shape).transpose(0, 2, 1, 3).reshape(-1)
    cols = cols.reshape(shape).transpose(0, 2, 1, 3).reshape(-1)
    return np.stack([rows, cols], axis=-1).astype(np.int64)


def window_ids(grid_h: int, grid_w: int, merge: int, window: int) -> np.ndarray:
    """[gh * gw] Qwen2.5-VL attention window of each patch (merge-block-major order);
    ``window`` is the window side in merged tokens (``window_size // merge // patch_size``)."""
    positions = patch_positions(grid_h, grid_w, merge) // merge  # merged-token row, column
    windows_w = -(-(grid_w // merge) // window)
    ids: np.ndarray = (positions[:, 0] // window) * windows_w + positions[:, 1] // window
    return ids.astype(np.int64)


def position_taps(grid_h: int, grid_w: int, merge: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Qwen3-VL: ([gh * gw, 4] indices into the flat side x side table, [gh * gw, 4] weights)
    resampling the learned table to the grid bilinearly with aligned corners."""
    positions = patch_positions(grid_h, grid_w, merge)
    h_taps, h_weights = _axis_taps(positions[:, 0], grid_h, side)
    w_taps, w_weights = _axis_taps(positions[:, 1], grid_w, side)
    indices = (h_taps[:, :, None] * side + w_taps[:, None, :]).reshape(-1, 4)
    weights = (h_weights[:, :, None] * w_weights[:, None, :]).reshape(-1, 4)
    return indices.astype(np.int64), weights.astype(np.float32)


def _axis_taps(index: np.ndarray, size: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    # float32 throughout, as Transformers computes them, so the weights agree to the last bit
    src = index.astype(np.float32) * np.float32(side - 1) / np.float32(max(size - 1, 1))
    floor = np.floor(src)
    offsets = np.arange(2)
    taps = np.clip(floor.astype(np.int64)[:, None] + offsets, 0, side - 1)
    weights = np.clip(1 - np.abs(src[:, None] - floor[:, None] - offsets), 0, None)
    return taps, weights.astype(np.float32)


@dataclass(frozen=True)
class Visual:
    """One image or video after resizing: its patch rows and grid (t, h, w in patches).
    ``interval``: temporal position step of the language model per temporal patch (Qwen2.5-VL:
    ``tokens_per_second * seconds per step``; 1 elsewhere). ``split_time``: Qwen3-VL gives
    every temporal step its own language-model grid (timestamps separate the frames)."""

    patches: np.ndarray
    grid: tuple[int, int, int]
    interval: float = 1.0
    split_time: bool = False
    # Seconds at each temporal step of a video (Qwen3-VL's prompt writes "<t seconds>" before
    # each step); None for an image.
    timestamps: tuple[float, ...] | None = None

    def tokens(self, merge: int) -> int:
        t, h, w = self.grid
        return t * (h // merge) * (w // merge)


@dataclass
class NativeLayout:
    """What the vision tower needs besides the patches, for one family."""

    merge: int
    window: int | None = None  # Qwen2.5-VL: window side in merged tokens
    position_side: int | None = None  # Qwen3-VL: side of the learned position table
    extra: dict[str, np.ndarray] = field(default_factory=dict)


def pack_slices(visuals: list[Visual], layout: NativeLayout, patch_dim: int) -> dict[str, np.ndarray]:
    """Visuals (in row order) -> the vision tower's inputs, one slice per image and per
    temporal step of a video, padded to the longest slice:

    * ``pixel_values`` [S, P, patch_dim] float32, ``patch_mask`` [S, P] int64 (1 = a patch);
    * ``vision_positions`` [S, P, 2] int64 (row, column);
    * Qwen2.5-VL: ``window_ids`` [S, P] int64; Qwen3-VL: ``position_taps`` [S, P, 4] int64 and
      ``position_weights`` [S, P, 4] float32.

    ``S`` is at least 1 (an all-padding slice when there is no visual), so the graph never sees
    an empty dimension."""
    slices = [(v, step) for v in visuals for step in range(v.grid[0])]
    longest = max((v.grid[1] * v.grid[2] for v, _ in slices), default=layout.merge**2)
    count = max(len(slices), 1)
    out: dict[str, np.ndarray] = {
        "pixel_values": np.zeros((count, longest, patch_dim), np.float32),
        "patch_mask": np.zeros((count, longest), np.int64),
        "vision_positions": np.zeros((count, longest, 2), np.int64),
    }
    if layout.window is not None:
        out["window_ids"] = np.zeros((count, longest), np.int64)
    if layout.position_side is not None:
        out["position_taps"] = np.zeros((count, longest, 4), np.int64)
        out["position_weights"] = np.zeros((count, longest, 4), np.float32)
    for index, (visual, step) in enumerate(slices):
        _, gh, gw = visual.grid
        size = gh * gw
        out["pixel_values"][index, :size] = visual.patches[step * size : (step + 1) * size]
        out["patch_mask"][index, :size] = 1
        out["vision_positions"][index, :size] = patch_positions(gh, gw, layout.merge)
        if layout.window is not None:
            out["window_ids"][index, :size] = window_ids(gh, gw, layout.merge, layout.window)
        if layout.position_side is not None:
            taps, weights = position_taps(gh, gw, layout.merge, layout.position_side)
            out["position_taps"][index, :size] = taps
            out["position_weights"][index, :size] = weights
    return out


def visual_index(
    visual_tokens: np.ndarray, visuals_per_row: list[list[Visual]], layout: NativeLayout, slice_width: int
) -> np.ndarray:
    """[B, L] int64: for each visual placeholder token, its merged token's index in the flat
    [S * P / merge²] output of the vision tower; -1 elsewhere. ``visual_tokens`` [B, L] bool
    marks the placeholders (their count per row must match the row's visuals)."""
    unit = layout.merge**2
    per_slice = slice_width // unit
    out = np.full(visual_tokens.shape, -1, np.int64)
    first_slice = 0
    for row, visuals in enumerate(visuals_per_row):
        flat: list[np.ndarray] = []
        for visual in visuals:
            t, h, w = visual.grid
            for step in range(t):
                flat.append((first_slice + step) * per_slice + np.arange(h * w // unit))
            first_slice += t
        wanted = np.concatenate(flat) if flat else np.zeros(0, np.int64)
        slots = np.flatnonzero(visual_tokens[row])
        if len(slots) != len(wanted):
            raise InputError(
                f"row {row}: {len(slots)} visual placeholder tokens for visuals of {len(wanted)} tokens"
            )
        out[row, slots] = wanted
    return out


def rope_positions(
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    visual_tokens: np.ndarray,
    visuals_per_row: list[list[Visual]],
    merge: int,
) -> np.ndarray:
    """[3, B, L] int64 language-model positions (Transformers' ``get_rope_index``): text counts
    up by one; a visual starting at position ``s`` takes ``(s + t * interval, s + row,
    s + column)`` over its merged grid, and text resumes at ``s + max(h, w)``; padding gets 0.
    Each visual's placeholder tokens are consumed in order (a Qwen3-VL video: one grid per
    temporal step)."""
    batch, length = input_ids.shape
    out = np.zeros((3, batch, length), np.int64)
    for row in range(batch):
        grids: list[tuple[int, int, int, float]] = []
        for visual in visuals_per_row[row]:
            t, h, w = visual.grid
            if visual.split_time:
                grids += [(1, h, w, 1.0)] * t
            else:
                grids.append((t, h, w, visual.interval))
        valid = np.flatnonzero(attention_mask[row])
        kinds = visual_tokens[row, valid]
        positions: list[np.ndarray] = []
        current = 0
        at = 0
        grid_iter = iter(grids)
        while at < len(valid):
            if not kinds[at]:
                end = at
                while end < len(valid) and not kinds[end]:
                    end += 1
                positions.append(np.broadcast_to(np.arange(end - at) + current, (3, end - at)))
                current += end - at
                at = end
                continue
            try:
                t, h, w, interval = next(grid_iter)
            except StopIteration:
                raise InputError(f"row {row}: more visual placeholders than visuals") from None
            lh, lw = h // merge, w // merge
            size = t * lh * lw
            if at + size > len(valid) or not kinds[at : at + size].all():
                raise InputError(f"row {row}: a visual of {size} tokens has fewer placeholder tokens")
            tt, hh, ww = np.meshgrid(np.arange(t), np.arange(lh), np.arange(lw), indexing="ij")
            temporal = (tt.reshape(-1) * interval).astype(np.int64) + current
            block = np.stack([temporal, hh.reshape(-1) + current, ww.reshape(-1) + current])
            positions.append(block)
            at += block.shape[1]
            current += max(lh, lw)
        if positions:
            out[:, row, valid] = np.concatenate(positions, axis=1)[:, : len(valid)]
    return out
