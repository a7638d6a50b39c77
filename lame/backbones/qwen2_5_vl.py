"""Qwen2.5-VL adapter: the Qwen2-VL adapter with Qwen2.5's windowed vision tower.

The language model side (M-RoPE, ``get_rope_index`` semantics for images, dict attention
masks) is the same as Qwen2-VL's, so only the config and the vision forward change.
Qwen2.5's vision tower reorders patches into windows and alternates windowed and full
attention; for one fixed image size the window order and the block-diagonal window mask are
constants, so it too runs as plain batched attention (tested equal to its ``cu_seqlens`` loop)
and exports without data-dependent shapes.
"""

from __future__ import annotations

import torch

from lame.backbones.qwen2_vl import (
    Qwen2VLBackbone,
    _key_mask,
    _vision_block,
    build_model,
    mrope_section_for,
    with_attention,
)


def tiny_qwen2_5_vl_config(config, vocab_size: int, image_token_id: int):
    from transformers import Qwen2_5_VLConfig

    bb, img = config.backbone, config.image
    text = dict(
        vocab_size=vocab_size,
        hidden_size=bb.hidden_size,
        intermediate_size=bb.intermediate_size,
        num_hidden_layers=bb.num_layers,
        num_attention_heads=bb.num_heads,
        num_key_value_heads=bb.num_kv_heads,
        max_position_embeddings=1024,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": bb.rope_theta,
            "mrope_section": mrope_section_for(bb.hidden_size // bb.num_heads),
        },
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    # Windows of 2x2 merged tokens and full attention in the last block, like the real model's
    # alternation at a tiny scale.
    vision = dict(
        depth=bb.vision_depth,
        hidden_size=bb.vision_embed_dim,
        out_hidden_size=bb.hidden_size,
        intermediate_size=2 * bb.vision_embed_dim,
        num_heads=bb.vision_heads,
        patch_size=img.patch_size,
        spatial_merge_size=img.merge_size,
        temporal_patch_size=img.temporal_patch_size,
        window_size=2 * img.merge_size * img.patch_size,
        fullatt_block_indexes=[bb.vision_depth - 1],
    )
    return with_attention(
        Qwen2_5_VLConfig(
            text_config=text,
            vision_config=vision,
            image_token_id=image_token_id,
            video_token_id=image_token_id,
        ),
        bb.attn_implementation,
    )


class Qwen25VLBackbone(Qwen2VLBackbone):
    def __init__(self, model, image_config):
        super().__init__(model, image_config)
        visual = model.visual
        order, mask = _window_layout(visual, *image_config.grid)
        unit = visual.spatial_merge_size**2
        # Patch order inside the tower: merge units (of `unit` patches) in window order.
        patch_order = (order[:, None] * unit + torch.arange(unit)).reshape(-1)
        self.register_buffer("window_order", patch_order, persistent=False)
        self.register_buffer("unit_restore", torch.argsort(order), persistent=False)
        self.register_buffer("window_mask", mask, persistent=False)
        self.full_blocks = set(visual.fullatt_block_indexes)

    @classmethod
    def build(cls, config, vocab_size: int, image_token_id: int, pretrained: bool = True) -> Qwen25VLBackbone:
        from transformers import Qwen2_5_VLModel

        return cls(
            build_model(
                config, vocab_size, image_token_id, Qwen2_5_VLModel, tiny_qwen2_5_vl_config, pretrained
            ),
            config.image,
        )

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        visual = self.model.visual
        batch, patches, _ = pixel_values.shape
        x = visual.patch_embed(pixel_values.reshape(batch * patches, -1).to(visual.dtype))
        x = x.reshape(batch, patches, -1)[:, self.window_order]
        cos, sin = self.vision_cos[self.window_order], self.vision_sin[self.window_order]
        for index, block in enumerate(visual.blocks):
            mask = None if index in self.full_blocks else self.window_mask
            x = self.run_block(_vision_block, block, x, cos, sin, mask)
        merged = visual.merger(x.reshape(batch * patches, -1))
        merged = merged.reshape(batch, -1, merged.shape[-1])
        return merged[:, self.unit_restore]

    native_inputs = ("patch_mask", "vision_positions", "window_ids")

    def slice_masks(self, patch_mask: torch.Tensor, grid: dict) -> list[torch.Tensor | None]:
        """Windowed blocks attend within a window of one slice (``window_ids``), the others
        within the slice: the grouping Transformers builds by reordering patches into windows
        and looping over ``cu_window_seqlens``; attention is order-free, so no reorder."""
        ids = grid["window_ids"]
        windowed = _key_mask(patch_mask, ids[:, :, None] == ids[:, None, :])
        full = _key_mask(patch_mask)
        return [full if i in self.full_blocks else windowed for i in range(len(self.model.visual.blocks))]

    @property
    def window_side(self) -> int:
        """Window side in merged tokens (what ``lame_runtime.inputs.grid.window_ids`` takes)."""
        visual = self.model.visual
        return visual.window_size // visual.spatial_merge_size // visual.patch_size


def _window_layout(visual, grid_h: int, grid_w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(merge-unit window order [P/unit], block-diagonal window mask [P, P]) for one image."""
    from transformers.vision_utils import get_vision_window_index

    order, bounds = get_vision_window_index(
        torch.tensor([[1, grid_h, grid_w]]),
        spatial_merge_size=visual.spatial_merge_size,
        window_size=visual.window_size,
        patch_size=visual.patch_size,
    )
    patches = grid_h * grid_w
    window_of = torch.zeros(patches, dtype=torch.long)
    for number, (start, end) in enumerate(zip(bounds[:-1].tolist(), bounds[1:].tolist())):
        window_of[start:end] = number
    return order, window_of[:, None] == window_of[None, :]
