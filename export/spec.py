"""The declarative export spec: names, dynamic axes and dummy inputs in one place."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from lame_runtime.artifact.bounds import DEFAULT_MAX_BATCH, DEFAULT_MAX_SEQUENCE, MIN_SEQUENCE
from lame_runtime.errors import InputError
from lame_runtime.inputs.preprocess import INPUT_NAMES, Preprocessor

# Not "embedding": the dynamo exporter's names collide with aten.embedding.
OUTPUT_NAME = "lame_embedding"


@dataclass
class ExportSpec:
    opset: int = 18
    max_batch: int = DEFAULT_MAX_BATCH
    max_sequence: int = DEFAULT_MAX_SEQUENCE
    input_names: tuple[str, ...] = INPUT_NAMES
    output_names: tuple[str, ...] = (OUTPUT_NAME,)
    # Native resolution: the longest slice of patches the graph accepts (0: a fixed-size graph).
    max_patches: int = 0
    merge_unit: int = 4

    @classmethod
    def for_model(cls, model, **bounds) -> ExportSpec:
        """The spec of ``model``'s graph: fixed-size inputs, or the native ones of its family."""
        image = model.preprocessor.image
        if not image.native:
            return cls(**bounds)
        from lame_export.native_spec import max_patches, native_input_names

        return cls(
            **bounds,
            input_names=native_input_names(tuple(model.backbone.native_inputs)),
            max_patches=max_patches(model.preprocessor),
            merge_unit=image.merge_size**2,
        )

    @property
    def native(self) -> bool:
        return self.max_patches > 0

    def check_bounds(self, preprocessor: Preprocessor) -> None:
        """The shape limits the tracer enforces, checked before minutes of tracing: one
        ``InputError`` naming the numbers and what to change (the tracer's own message names
        neither the image size nor a flag)."""
        if self.native:
            return self._check_native_bounds(preprocessor)
        traced = dummy_feed(preprocessor)
        rows = traced["input_ids"].shape[0]
        if self.max_batch < rows:
            raise InputError(
                f"--max-batch {self.max_batch} is below the {rows} rows the export traces with; "
                f"use --max-batch {rows} or more"
            )
        image = preprocessor.image
        longest = longest_row(preprocessor)
        if longest > self.max_sequence:
            visual = image.num_tokens
            raise InputError(
                f"the longest input row is {longest} tokens ({visual} visual tokens at image "
                f"size {image.height}x{image.width} + {longest - visual} text and template "
                f"tokens), over the export's sequence bound {self.max_sequence}: import with a "
                f"smaller --image-size or --max-text-tokens, or export with --max-sequence {longest}"
            )
        if self.max_sequence < MIN_SEQUENCE:
            raise InputError(f"--max-sequence must be at least {MIN_SEQUENCE}, got {self.max_sequence}")

    def _check_native_bounds(self, preprocessor: Preprocessor) -> None:
        image = preprocessor.image
        visual = self.max_patches // self.merge_unit
        text = preprocessor.text.max_text_tokens
        if visual + text + 8 > self.max_sequence:
            raise InputError(
                f"one image at max_pixels {image.max_pixels} is up to {visual} visual tokens, with "
                f"{text} text tokens over the export's sequence bound {self.max_sequence}: export "
                f"with --max-sequence {visual + text + 8} or more, or train/import with a smaller "
                "--max-pixels"
            )
        if self.max_sequence < MIN_SEQUENCE:
            raise InputError(f"--max-sequence must be at least {MIN_SEQUENCE}, got {self.max_sequence}")

    def dynamic_shapes(self) -> dict:
        import torch

        batch = torch.export.Dim("batch", min=1, max=self.max_batch)
        sequence = torch.export.Dim("sequence", min=MIN_SEQUENCE, max=self.max_sequence)
        if self.native:
            from lame_export.native_spec import native_dynamic_shapes

            slices = torch.export.Dim("slices", min=1, max=self.max_batch * 64)
            units = torch.export.Dim("units", min=1, max=self.max_patches // self.merge_unit)
            return native_dynamic_shapes(self.input_names, batch, sequence, slices, self.merge_unit * units)
        return {
            "input_ids": {0: batch, 1: sequence},
            "attention_mask": {0: batch, 1: sequence},
            "pixel_values": {0: batch},
            "image_mask": {0: batch},
        }

    def io_manifest(self, preprocessor: Preprocessor, embed_dim: int) -> dict:
        image = preprocessor.image
        if self.native:
            from lame_export.native_spec import native_io

            return {
                "inputs": native_io(self.input_names, preprocessor),
                "outputs": [{"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch", embed_dim]}],
            }
        return {
            "inputs": [
                {"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"]},
                {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "sequence"]},
                {
                    "name": "pixel_values",
                    "dtype": "float32",
                    "shape": ["batch", image.num_patches, image.patch_dim],
                },
                {"name": "image_mask", "dtype": "int64", "shape": ["batch"]},
            ],
            "outputs": [{"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch", embed_dim]}],
        }


def longest_row(preprocessor: Preprocessor) -> int:
    """The longest row the preprocessor produces: an image and a text cut at max_text_tokens,
    with whatever the prompt template adds."""
    text = " ".join(["7"] * (4 * preprocessor.text.max_text_tokens + 8))
    image = sample_image(0, preprocessor.image.height, preprocessor.image.width)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the truncation warning is the point here
        return int(preprocessor([text], [image])["input_ids"].shape[1])


def sample_image(seed: int, height: int, width: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def dummy_feed(preprocessor: Preprocessor) -> dict[str, np.ndarray]:
    """Three rows covering text-only, image-only and text+image, with unequal lengths."""
    if preprocessor.image.native:
        from lame_export.native_spec import native_dummy_feed

        return native_dummy_feed(preprocessor)
    image = sample_image(0, preprocessor.image.height, preprocessor.image.width)
    return preprocessor(["a short text", None, "a somewhat longer text query here"], [None, image, image])


PARITY_TEXTS = [
    "a",
    "the digits add up to 9",
    "find the image that matches the statement: the odd digits add up to 13",
    "exactly 2 digits are greater than 6",
    "7 3 1",
]


def parity_feeds(preprocessor: Preprocessor, batches=(1, 3, 8)) -> list[tuple[str, dict]]:
    """(label, feed) pairs: every batch size x {text, image, text+image, mixed}, varied lengths."""
    if preprocessor.image.native:
        from lame_export.native_spec import native_parity_feeds

        return native_parity_feeds(preprocessor)
    h, w = preprocessor.image.height, preprocessor.image.width
    feeds = []
    for batch in batches:
        texts = [PARITY_TEXTS[(batch + i) % len(PARITY_TEXTS)] for i in range(batch)]
        images = [sample_image(100 * batch + i, h, w) for i in range(batch)]
        mixed_t = [t if i % 3 != 1 else None for i, t in enumerate(texts)]
        mixed_i = [im if i % 3 != 0 else None for i, im in enumerate(images)]
        for label, (t, im) in {
            "text": (texts, None),
            "image": (None, images),
            "text+image": (texts, images),
            "mixed": (mixed_t, mixed_i),
        }.items():
            feeds.append((f"b{batch}/{label}", preprocessor(t, im)))
    return feeds
