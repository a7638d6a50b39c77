"""Export-only patches, applied in a context manager so the training model never changes.

The one change needed: training runs the vision tower on image rows only (boolean row
selection, a data-dependent shape) and checks placeholder counts in Python. The graph instead
runs it on every row and zeroes text-only rows with ``image_mask`` — static shapes, one graph
for text, image and text+image queries. Vision attention is already batched, M-RoPE positions
are tensor ops and the image merge is cumsum/gather/where in the model itself.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


@contextlib.contextmanager
def export_patches(model):
    def all_rows(pixel_values, image_mask, is_image):
        features = model.backbone.encode_images(pixel_values)
        return features * image_mask.to(features.dtype)[:, None, None]

    model._image_features = all_rows
    try:
        yield model
    finally:
        del model._image_features  # back to the class method


class EmbeddingGraph(nn.Module):
    """What gets exported: the four model inputs -> the unit-norm embedding."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor,
        image_mask: torch.Tensor,
    ) -> torch.Tensor:
        return self.model(input_ids, attention_mask, pixel_values, image_mask).embedding


class NativeEmbeddingGraph(nn.Module):
    """A native-resolution graph: token rows, patch slices and the grid inputs of the family
    (the ones it does not use stay None and are not graph inputs) -> the unit-norm embedding."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor,
        patch_mask: torch.Tensor,
        vision_positions: torch.Tensor,
        visual_index: torch.Tensor,
        position_ids: torch.Tensor,
        window_ids: torch.Tensor | None = None,
        position_taps: torch.Tensor | None = None,
        position_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        optional = {
            "window_ids": window_ids,
            "position_taps": position_taps,
            "position_weights": position_weights,
        }
        native = {name: value for name, value in optional.items() if value is not None}
        return self.model(
            input_ids,
            attention_mask,
            pixel_values,
            None,
            patch_mask=patch_mask,
            vision_positions=vision_positions,
            visual_index=visual_index,
            position_ids=position_ids,
            **native,
        ).embedding
