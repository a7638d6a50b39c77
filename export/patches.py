"""Export-only patches, applied in a context manager so the training model never changes.

Training runs the vision tower on image rows only (boolean row selection, a data-dependent
shape) and checks placeholder counts in Python. The graph instead runs it on every row and
zeroes text-only rows with ``image_mask`` — static shapes, one graph for text, image and
text+image queries. Vision attention is already batched, M-RoPE positions are tensor ops and
the image merge is cumsum/gather/where in the model itself.

Qwen-VL's patch embedding is a Conv3d whose kernel equals its stride and its input (one
flattened patch a row), i.e. a linear layer. As a Conv3d, ONNX Runtime's CPU provider runs it
without a fast path (8 % of the fp32 image graph's time on the 2.4 GB probe) and the int8
quantiser leaves it in float (19 % of the int8 graph's); exported as a MatMul on the same
weights it takes the GEMM kernels and the int8/int4 weight quantisation like every linear.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn


@contextlib.contextmanager
def export_patches(model):
    def all_rows(pixel_values, image_mask, is_image):
        features = model.backbone.encode_images(pixel_values)
        return features * image_mask.to(features.dtype)[:, None, None]

    model._image_features = all_rows
    embed = patch_embedding(model)
    if embed is not None:
        embed.forward = linear_patch_embedding(embed.proj)
    try:
        yield model
    finally:
        del model._image_features  # back to the class method
        if embed is not None:
            del embed.forward


def patch_embedding(model) -> nn.Module | None:
    """Qwen-VL's ``visual.patch_embed`` (a Conv3d ``proj``), or None for other towers."""
    visual = getattr(getattr(model.backbone, "model", None), "visual", None)
    embed = getattr(visual, "patch_embed", None)
    conv = getattr(embed, "proj", None)
    if isinstance(conv, nn.Conv3d) and tuple(conv.kernel_size) == tuple(conv.stride):
        return embed
    return None


def linear_patch_embedding(conv: nn.Conv3d):
    """The Conv3d as ``x @ W.T + b`` on rows of one flattened patch each (channel, time,
    height, width: the layout the preprocessing writes and the Conv3d's weight reads)."""
    weight = conv.weight.detach().reshape(conv.out_channels, -1).contiguous()
    bias = None if conv.bias is None else conv.bias.detach()

    def forward(hidden_states: torch.Tensor) -> torch.Tensor:
        rows = hidden_states.reshape(-1, weight.shape[1]).to(weight.dtype)
        return F.linear(rows, weight, bias)

    return forward


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
