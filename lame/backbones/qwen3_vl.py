"""Qwen3-VL adapter: Qwen2-VL's layout with three differences, each made static for one
fixed image size.

* **Learned vision positions.** The tower adds a learned square table of position embeddings,
  bilinearly resampled to the image's patch grid. For a fixed grid the resampling is a constant
  (4 gather indices and weights per patch, from Transformers' own helper), so the graph holds a
  Gather and a weighted sum, and the table still trains.
* **DeepStack.** Features taken after some vision blocks (``deepstack_visual_indexes``), each
  through its own merger, are added to the hidden states of the first language layers at the
  visual positions. Transformers adds them by boolean indexing (a data-dependent shape); here
  they arrive as a dense [B, L, D, H] tensor that is zero outside image positions
  (:meth:`lame.model.LameModel.input_embeds`), so the addition is a plain ``+`` after each of
  the first D layers: the same numbers (a test checks against ``Qwen3VLModel``), exportable.
* **Interleaved M-RoPE.** The (t, h, w) frequencies interleave instead of occupying three
  blocks; that lives in the text model's rotary module, which is reused as is. The positions
  themselves follow Qwen2-VL's rule (:meth:`Qwen2VLBackbone.position_ids`).

The language layers are run by this module (not ``Qwen3VLTextModel.forward``) because the
DeepStack sum sits between them; the layers, rotary module and final norm are Transformers'.
"""

from __future__ import annotations

import torch
from torch import nn

from lame.backbones.base import cache_kwargs
from lame.backbones.qwen2_vl import Qwen2VLBackbone, _vision_block, build_model, with_attention

# Deepstack levels taken by tiny configs: after every vision block but the last, at most 3
# (the real models take 3).
MAX_TINY_LEVELS = 3


def interleaved_mrope_section(head_dim: int) -> list[int]:
    """(t, h, w) split of head_dim/2 frequencies in Qwen3-VL's proportions (24:20:20 of 64)."""
    half = head_dim // 2
    spatial = max(1, half * 20 // 64)
    return [half - 2 * spatial, spatial, spatial]


def tiny_qwen3_vl_config(config, vocab_size: int, image_token_id: int):
    from transformers import Qwen3VLConfig

    bb, img = config.backbone, config.image
    head_dim = bb.hidden_size // bb.num_heads
    text = dict(
        vocab_size=max(vocab_size, bb.vocab_size or 0),
        hidden_size=bb.hidden_size,
        intermediate_size=bb.intermediate_size,
        num_hidden_layers=bb.num_layers,
        num_attention_heads=bb.num_heads,
        num_key_value_heads=bb.num_kv_heads,
        head_dim=head_dim,
        max_position_embeddings=1024,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": bb.rope_theta,
            "mrope_section": interleaved_mrope_section(head_dim),
            "mrope_interleaved": True,
        },
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    levels = bb.deepstack_layers
    if levels is None:
        levels = list(range(min(bb.vision_depth - 1, bb.num_layers, MAX_TINY_LEVELS)))
    grid_h, grid_w = img.grid
    side = bb.vision_position_grid or max(grid_h, grid_w)
    vision = dict(
        depth=bb.vision_depth,
        hidden_size=bb.vision_embed_dim,
        out_hidden_size=bb.hidden_size,
        intermediate_size=int(bb.vision_mlp_ratio * bb.vision_embed_dim),
        num_heads=bb.vision_heads,
        patch_size=img.patch_size,
        spatial_merge_size=img.merge_size,
        temporal_patch_size=img.temporal_patch_size,
        num_position_embeddings=side * side,
        deepstack_visual_indexes=list(levels),
    )
    return with_attention(
        Qwen3VLConfig(
            text_config=text,
            vision_config=vision,
            image_token_id=image_token_id,
            video_token_id=image_token_id,
        ),
        bb.attn_implementation,
    )


class Qwen3VLBackbone(Qwen2VLBackbone):
    def __init__(self, model, image_config):
        super().__init__(model, image_config)
        visual = model.visual
        indices, weights = _position_taps(visual, *image_config.grid)
        self.register_buffer("pos_indices", indices, persistent=False)
        self.register_buffer("pos_weights", weights, persistent=False)
        self.register_buffer("rope_axes", _rope_axes(model.language_model.rotary_emb), persistent=False)
        self.deepstack_blocks = list(visual.deepstack_visual_indexes)
        self.deepstack_levels = len(self.deepstack_blocks)
        layers = model.config.text_config.num_hidden_layers
        if self.deepstack_levels > layers:
            raise ValueError(
                f"{self.deepstack_levels} DeepStack levels need at least as many "
                f"language layers; the config has {layers}"
            )

    @classmethod
    def build(cls, config, vocab_size: int, image_token_id: int, pretrained: bool = True) -> Qwen3VLBackbone:
        from transformers import Qwen3VLModel

        return cls(
            build_model(config, vocab_size, image_token_id, Qwen3VLModel, tiny_qwen3_vl_config, pretrained),
            config.image,
        )

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """-> [B, N, (1 + D) * H]: the merged visual tokens, then the D DeepStack levels."""
        visual = self.model.visual
        batch, patches, _ = pixel_values.shape
        x = visual.patch_embed(pixel_values.reshape(batch * patches, -1).to(visual.dtype))
        positions = (visual.pos_embed(self.pos_indices) * self.pos_weights[..., None]).sum(1)
        x = x.reshape(batch, patches, -1) + positions.to(x.dtype)
        levels = []
        for index, block in enumerate(visual.blocks):
            x = self.run_block(_vision_block, block, x, self.vision_cos, self.vision_sin, None)
            if index in self.deepstack_blocks:
                merger = visual.deepstack_merger_list[self.deepstack_blocks.index(index)]
                levels.append(merger(x.reshape(batch * patches, -1)))
        merged = visual.merger(x.reshape(batch * patches, -1))
        return torch.cat([merged, *levels], dim=-1).reshape(batch, -1, merged.shape[-1] * (1 + len(levels)))

    native_inputs = ("patch_mask", "vision_positions", "position_taps", "position_weights")

    def add_positions(self, x: torch.Tensor, grid: dict) -> torch.Tensor:
        """The learned table resampled to each slice's grid by the given taps and weights."""
        table = self.model.visual.pos_embed(grid["position_taps"])  # [S, P, 4, width]
        return x + (table * grid["position_weights"][..., None].to(table.dtype)).sum(2).to(x.dtype)

    def run_blocks(self, x: torch.Tensor, cos, sin, masks) -> torch.Tensor:
        visual = self.model.visual
        slices, width, _ = x.shape
        levels = []
        for index, (block, mask) in enumerate(zip(visual.blocks, masks)):
            x = self.run_block(_vision_block, block, x, cos, sin, mask)
            if index in self.deepstack_blocks:
                merger = visual.deepstack_merger_list[self.deepstack_blocks.index(index)]
                levels.append(merger(x.reshape(slices * width, -1)))
        merged = visual.merger(x.reshape(slices * width, -1))
        out = torch.cat([merged, *levels], dim=-1)
        return out.reshape(slices, -1, out.shape[-1])

    @property
    def position_side(self) -> int:
        """Side of the learned position table (what ``grid.position_taps`` takes)."""
        return int(self.model.visual.num_grid_per_side)

    def transformer(
        self,
        embeds: torch.Tensor,
        position_ids: torch.Tensor,
        attention_bias: torch.Tensor,
        visual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self._layers(embeds, position_ids, attention_bias, visual, None)

    def transformer_cached(
        self,
        embeds: torch.Tensor,
        position_ids: torch.Tensor,
        attention_bias: torch.Tensor,
        cache,
        visual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self._layers(embeds, position_ids, attention_bias, visual, cache)

    def _layers(self, embeds, position_ids, attention_bias, visual, cache) -> torch.Tensor:
        """Qwen3VLTextModel.forward for a given mask and 3-D positions, with the DeepStack sum
        as a dense add (zero outside image positions) after each of the first D layers."""
        text = self.text_model
        hidden = embeds
        rotary = self._rotary(hidden, position_ids)
        for index, layer in enumerate(text.layers):
            hidden = layer(
                hidden,
                position_embeddings=rotary,
                attention_mask=attention_bias,
                position_ids=None,
                use_cache=cache is not None,
                **cache_kwargs(layer, cache),
            )
            if visual is not None and index < visual.shape[2]:
                hidden = hidden + visual[:, :, index].to(hidden.dtype)
        return text.norm(hidden)

    def _rotary(self, x: torch.Tensor, position_ids: torch.Tensor):
        """Qwen3VLTextRotaryEmbedding's (cos, sin) without its in-place strided assignment
        (which pins the batch size under torch.export): each frequency takes its t, h or w
        position through a constant 0/1 selector, the same interleaving, exactly."""
        rotary = self.text_model.rotary_emb
        freqs = position_ids[..., None].float() * rotary.inv_freq.float()  # [3, B, L, half]
        mixed = (freqs * self.rope_axes[:, None, None, :]).sum(0)
        emb = torch.cat([mixed, mixed], dim=-1)
        scale = rotary.attention_scaling
        return (emb.cos() * scale).to(x.dtype), (emb.sin() * scale).to(x.dtype)


def _position_taps(visual: nn.Module, grid_h: int, grid_w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather indices and weights [P, taps] resampling the learned position table to one grid
    (patches in merge-unit order, as the tower reads them)."""
    from transformers.vision_utils import get_vision_interpolation_indices_and_weights

    indices, weights = get_vision_interpolation_indices_and_weights(
        torch.tensor([[1, grid_h, grid_w]]),
        num_grid_per_side=visual.num_grid_per_side,
        mode=visual.interpolation_mode,
        align_corners=visual.interpolation_align_corners,
        spatial_merge_size=visual.spatial_merge_size,
    )
    return indices, weights.float()


def _rope_axes(rotary: nn.Module) -> torch.Tensor:
    """[3, head_dim/2] 0/1: which of (t, h, w) drives each rotary frequency (interleaved:
    h on indices 1, 4, 7, ... up to 3 * section_h, w on 2, 5, 8, ..., t elsewhere)."""
    half = rotary.inv_freq.shape[0]
    section = rotary.mrope_section
    axis = torch.zeros(half, dtype=torch.long)
    for dim, offset in ((1, 1), (2, 2)):
        axis[offset : section[dim] * 3 : 3] = dim
    return torch.nn.functional.one_hot(axis, 3).T.float()
