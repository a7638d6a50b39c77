"""What a native-resolution graph takes: its inputs, their dynamic dimensions, and the feeds
it is traced and parity-gated with (several image sizes, two images in a row, a video).

A native graph has dynamic dimensions beyond batch and sequence: ``slices`` (one per image and
per temporal step of a video in the batch) and ``patches`` (the longest slice, a multiple of
``merge_size²``). Everything that depends on the grid arrives as inputs
(:mod:`lame_runtime.inputs.grid`), so the graph holds tensor math only."""

from __future__ import annotations

import math

import numpy as np

from lame_runtime.inputs.preprocess import Preprocessor

# Inputs every native graph takes besides the family's grid inputs (Backbone.native_inputs).
SEQUENCE_INPUTS = ("input_ids", "attention_mask")
TRAILING_INPUTS = ("visual_index", "position_ids")
FLOAT_INPUTS = ("pixel_values", "position_weights")


def native_input_names(grid_inputs: tuple[str, ...]) -> tuple[str, ...]:
    return (*SEQUENCE_INPUTS, "pixel_values", *grid_inputs, *TRAILING_INPUTS)


def max_patches(preprocessor: Preprocessor) -> int:
    """The longest slice the preprocessor can produce: an image at ``max_pixels`` (a video
    frame never gets more), in whole merge blocks, with room for ``smart_resize`` rounding."""
    image = preprocessor.image
    block = image.patch_size * image.merge_size
    blocks = math.ceil(image.max_pixels / block**2) + 2
    return blocks * image.merge_size**2


def native_dynamic_shapes(names: tuple[str, ...], batch, sequence, slices, patches) -> dict:
    shapes: dict = {}
    for name in names:
        if name in SEQUENCE_INPUTS or name == "visual_index":
            shapes[name] = {0: batch, 1: sequence}
        elif name == "position_ids":
            shapes[name] = {1: batch, 2: sequence}
        else:  # pixel_values and the per-patch grid inputs
            shapes[name] = {0: slices, 1: patches}
    return shapes


def native_io(names: tuple[str, ...], preprocessor: Preprocessor) -> list[dict]:
    image = preprocessor.image
    shapes = {
        "input_ids": ["batch", "sequence"],
        "attention_mask": ["batch", "sequence"],
        "pixel_values": ["slices", "patches", image.patch_dim],
        "patch_mask": ["slices", "patches"],
        "vision_positions": ["slices", "patches", 2],
        "window_ids": ["slices", "patches"],
        "position_taps": ["slices", "patches", 4],
        "position_weights": ["slices", "patches", 4],
        "visual_index": ["batch", "sequence"],
        "position_ids": [3, "batch", "sequence"],
    }
    return [
        {"name": name, "dtype": "float32" if name in FLOAT_INPUTS else "int64", "shape": shapes[name]}
        for name in names
    ]


def sample(seed: int, height: int, width: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def native_dummy_feed(preprocessor: Preprocessor) -> dict[str, np.ndarray]:
    """Traced with: a text row, a 4:3 image, and a text with two images of other shapes."""
    return preprocessor(
        ["a short text", None, "a somewhat longer text query here"],
        [None, sample(0, 48, 64), [sample(1, 96, 32), sample(2, 32, 80)]],
    )


def native_parity_feeds(preprocessor: Preprocessor) -> list[tuple[str, dict]]:
    """(label, feed): text rows, single images at three aspect ratios and two budgets, two
    images in a row, a video, and a mixed batch; labels ending in ``/text`` feed the text
    graph's gate too."""
    image = preprocessor.image
    side = int(math.sqrt(image.max_pixels))
    photo, page, wide = sample(10, 48, 64), sample(11, 160, 56), sample(12, 40, 120)
    big = sample(13, side + 37, side * 2)  # resized down to the pixel budget
    frames = [sample(20 + i, 40, 56) for i in range(4)]
    texts = ["a", "the digits add up to 9", "exactly 2 digits are greater than 6"]
    feeds = [
        ("b1/text", preprocessor(texts[1:2], None)),
        ("b3/text", preprocessor(texts, None)),
        ("b3/image", preprocessor(None, [photo, page, wide])),
        ("b1/image-large", preprocessor(None, [big])),
        ("b2/text+image", preprocessor(texts[:2], [page, photo])),
        ("b1/two-images", preprocessor(texts[2:], [[wide, page]])),
        ("b1/video", preprocessor(texts[1:2], None, 0, [frames])),
        (
            "b3/mixed",
            preprocessor([texts[0], None, texts[2]], [None, [photo, wide], None], 0, [None, None, frames]),
        ),
    ]
    return feeds
