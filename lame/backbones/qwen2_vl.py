"""Qwen2-VL adapter (the paper's class of backbone).

Two traps this adapter exists to avoid:
* Fed ``inputs_embeds`` without ``position_ids``, Qwen2-VL silently falls back to 1-D positions:
  we always pass 3-D M-RoPE positions, computed in :meth:`position_ids` with plain tensor ops
  (equal to ``Qwen2VLModel.get_rope_index``, which a test checks; tensor ops also export to ONNX).
* Tiny configs must keep ``sum(mrope_section) == head_dim / 2`` and the vision merger's output
  width equal to the text hidden size; :func:`tiny_qwen2_vl_config` derives both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from lame.backbones.base import Backbone


def mrope_section_for(head_dim: int) -> list[int]:
    """Split head_dim/2 rotary frequencies over (time, height, width) like Qwen's 16:24:24."""
    half = head_dim // 2
    temporal = half // 4
    height = (half - temporal) // 2
    return [temporal, height, half - temporal - height]


def tiny_qwen2_vl_config(config, vocab_size: int, image_token_id: int):
    from transformers import Qwen2VLConfig

    bb, img = config.backbone, config.image
    head_dim = bb.hidden_size // bb.num_heads
    text = dict(
        vocab_size=max(vocab_size, bb.vocab_size or 0),
        hidden_size=bb.hidden_size,
        intermediate_size=bb.intermediate_size,
        num_hidden_layers=bb.num_layers,
        num_attention_heads=bb.num_heads,
        num_key_value_heads=bb.num_kv_heads,
        max_position_embeddings=1024,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": bb.rope_theta,
            "mrope_section": mrope_section_for(head_dim),
        },
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    vision = dict(
        depth=bb.vision_depth,
        embed_dim=bb.vision_embed_dim,
        hidden_size=bb.hidden_size,
        num_heads=bb.vision_heads,
        mlp_ratio=int(bb.vision_mlp_ratio),
        patch_size=img.patch_size,
        spatial_merge_size=img.merge_size,
        temporal_patch_size=img.temporal_patch_size,
    )
    return with_attention(
        Qwen2VLConfig(
            text_config=text,
            vision_config=vision,
            image_token_id=image_token_id,
            video_token_id=image_token_id,
        ),
        bb.attn_implementation,
    )


def with_attention(cfg, implementation: str):
    """``cfg`` with ``implementation`` (sdpa, eager, ...) on it and its text/vision configs."""
    for sub in (cfg, *(getattr(cfg, name, None) for name in ("text_config", "vision_config"))):
        if sub is not None:
            sub._attn_implementation = implementation
    return cfg


class Qwen2VLBackbone(Backbone):
    def __init__(self, model, image_config):
        super().__init__()
        self.model = model  # transformers.Qwen2VLModel
        self.hidden_size = model.config.text_config.hidden_size
        self.image_config = image_config
        merge = image_config.merge_size
        grid_h, grid_w = image_config.grid
        self.llm_grid = (grid_h // merge, grid_w // merge)
        # Every image has the same patch grid, so the vision rotary table is a constant.
        cos, sin = _vision_rotary(model.visual, grid_h, grid_w)
        self.register_buffer("vision_cos", cos, persistent=False)
        self.register_buffer("vision_sin", sin, persistent=False)

    @classmethod
    def build(cls, config, vocab_size: int, image_token_id: int, pretrained: bool = True) -> Qwen2VLBackbone:
        from transformers import Qwen2VLModel

        return cls(
            build_model(config, vocab_size, image_token_id, Qwen2VLModel, tiny_qwen2_vl_config, pretrained),
            config.image,
        )

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Qwen2-VL's vision tower with *batched* attention.

        Qwen's own forward packs all images into one sequence and loops over them in Python
        (``cu_seqlens``); with one fixed image size the attention is block-diagonal with equal
        blocks, i.e. plain batched attention: same numbers (a test checks), several times
        faster on CPU, and free of data-dependent shapes, so it also exports to ONNX as is.
        """
        visual = self.model.visual
        batch, patches, _ = pixel_values.shape
        x = visual.patch_embed(pixel_values.reshape(batch * patches, -1).to(visual.dtype))
        x = x.reshape(batch, patches, -1)
        for block in visual.blocks:
            x = self.run_block(_vision_block, block, x, self.vision_cos, self.vision_sin, None)
        merged = visual.merger(x.reshape(batch * patches, -1))
        return merged.reshape(batch, -1, merged.shape[-1])

    # Native resolution: the inputs the grid module (lame_runtime.inputs.grid) computes.
    native_inputs: tuple[str, ...] = ("patch_mask", "vision_positions")

    def encode_slices(
        self, pixel_values: torch.Tensor, patch_mask: torch.Tensor, vision_positions: torch.Tensor, **grid
    ) -> torch.Tensor:
        """Native resolution: [S, P, patch_dim] slices (one per image and per temporal step of a
        video, padded to the longest) -> [S, P / merge², C] merged tokens (C = H, or (1 + D) * H
        with DeepStack). Attention stays within a slice (Transformers' ``cu_seqlens`` per frame
        step), as batched attention with a per-slice key mask: never a mask over all patches."""
        visual = self.model.visual
        slices, width, _ = pixel_values.shape
        x = visual.patch_embed(pixel_values.reshape(slices * width, -1).to(visual.dtype))
        x = x.reshape(slices, width, -1)
        x = self.add_positions(x, grid)
        cos, sin = visual.rotary_pos_emb(x, vision_positions.reshape(slices * width, 2))
        cos, sin = cos.float().reshape(slices, width, -1), sin.float().reshape(slices, width, -1)
        masks = self.slice_masks(patch_mask, grid)
        return self.run_blocks(x, cos, sin, masks)

    def add_positions(self, x: torch.Tensor, grid: dict) -> torch.Tensor:
        """Learned absolute positions, where the family has them (Qwen3-VL)."""
        return x

    def slice_masks(self, patch_mask: torch.Tensor, grid: dict) -> list[torch.Tensor | None]:
        """One [S, 1, P, P] boolean attention mask per vision block: keys are the slice's real
        patches (and each padded patch sees itself, so no row is all -inf)."""
        return [_key_mask(patch_mask)] * len(self.model.visual.blocks)

    def run_blocks(self, x: torch.Tensor, cos, sin, masks) -> torch.Tensor:
        visual = self.model.visual
        slices, width, _ = x.shape
        for block, mask in zip(visual.blocks, masks):
            x = self.run_block(_vision_block, block, x, cos, sin, mask)
        merged = visual.merger(x.reshape(slices * width, -1))
        return merged.reshape(slices, -1, merged.shape[-1])

    def position_ids(self, valid: torch.Tensor, is_image: torch.Tensor) -> torch.Tensor:
        """3-D M-RoPE positions for rows ``[pad.. text.. image-block text.. latent..]``.

        Text tokens count up by one; the image block (one per row at most) takes a
        (t, h, w) grid starting at its first position, after which text resumes at
        ``start + max(grid_h, grid_w)`` — exactly get_rope_index's rule.
        """
        valid = valid.long()
        is_image = is_image.long() * valid
        grid_h, grid_w = self.llm_grid
        index = valid.cumsum(-1) - 1  # position among valid tokens
        images_seen = is_image.cumsum(-1)  # image tokens up to and including here
        text_pos = index - images_seen + (images_seen > 0).long() * max(grid_h, grid_w)
        j = images_seen - 1  # order of this token within the image
        start = index - j
        t_pos, h_pos, w_pos = start, start + j // grid_w, start + j % grid_w
        img = is_image.bool()
        pos = torch.stack([torch.where(img, p, text_pos) for p in (t_pos, h_pos, w_pos)])
        return torch.where(valid.bool().unsqueeze(0), pos, torch.zeros_like(pos))

    @property
    def text_model(self) -> nn.Module:
        return self.model.language_model

    def text_mask(self, attention_bias: torch.Tensor):
        # A dict mask is used as-is by transformers: our bias already encodes causality,
        # padding and the bottleneck, so nothing is rebuilt (or silently changed) inside.
        return {"full_attention": attention_bias}

    def vision_parameters(self) -> Iterator[nn.Parameter]:
        return self.model.visual.parameters()

    def language_parameters(self) -> Iterator[nn.Parameter]:
        return self.model.language_model.parameters()


def _vision_rotary(visual, grid_h: int, grid_w: int) -> tuple[torch.Tensor, torch.Tensor]:
    from transformers.vision_utils import get_vision_position_ids

    grid = torch.tensor([[1, grid_h, grid_w]])
    positions = get_vision_position_ids(grid, visual.spatial_merge_size)
    probe = torch.zeros(1, dtype=torch.float32)
    cos, sin = visual.rotary_pos_emb(probe, positions)
    return cos.float(), sin.float()


def _key_mask(patch_mask: torch.Tensor, same: torch.Tensor | None = None) -> torch.Tensor:
    """[S, 1, P, P] bool: query i may attend key j if j is a real patch (and ``same[s, i, j]``,
    e.g. the same attention window); the diagonal is always allowed."""
    real = patch_mask.bool()
    allowed = real[:, None, :].expand(-1, real.shape[1], -1)
    if same is not None:
        allowed = allowed & same
    eye = torch.eye(real.shape[1], dtype=torch.bool, device=real.device)
    return (allowed | eye).unsqueeze(1)


def _vision_block(
    block, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """One Qwen vision block (pre-norm attention + MLP) with batched attention."""
    x = x + _batched_attention(block.attn, block.norm1(x), cos, sin, mask)
    return x + block.mlp(block.norm2(x))


def _batched_attention(
    attn, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Qwen-style vision attention over [B, P, width]; ``mask`` [P, P] bool (True = attend)
    expresses block-diagonal windows, identical for every image of one fixed size."""
    from transformers.models.qwen2_vl.modeling_qwen2_vl import apply_rotary_pos_emb_vision

    batch, patches, width = x.shape
    q, k, v = attn.qkv(x).reshape(batch, patches, 3, attn.num_heads, -1).unbind(2)
    q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)  # cos [P, d] broadcasts over batch
    out = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, scale=attn.scaling
    )
    return attn.proj(out.transpose(1, 2).reshape(batch, patches, width))


def build_model(
    config, vocab_size: int, image_token_id: int, model_class, tiny_config, pretrained: bool = True
):
    """A local pretrained directory (``backbone.path``), the same architecture from the config
    copied out of it (``backbone.hf_config``; when a checkpoint's own weights replace the
    pretrained ones, so the directory is not needed), or a tiny random model from the preset."""
    bb = config.backbone
    if bb.path and (pretrained or not bb.hf_config):
        model = _load_pretrained(Path(bb.path), bb.attn_implementation, model_class)
    elif bb.hf_config:
        model = model_class(_config_from_dict(model_class, bb.hf_config, bb.attn_implementation))
    else:
        return model_class(tiny_config(config, vocab_size, image_token_id))
    if model.get_input_embeddings().num_embeddings < vocab_size:
        model.resize_token_embeddings(vocab_size)  # room for LaME's special tokens
    return model


def _config_from_dict(model_class, data: dict, attn_implementation: str):
    return with_attention(model_class.config_class.from_dict(data), attn_implementation)


def _load_pretrained(path: Path, attn_implementation: str, model_class):
    if not path.is_dir():
        raise FileNotFoundError(
            f"backbone path {path} is not a directory (a local Hugging Face "
            "model directory is expected; nothing is downloaded)"
        )
    missing = [name for name in ("config.json",) if not (path / name).is_file()]
    if not any(path.glob("*.safetensors")):
        missing.append("*.safetensors weights")
    if missing:
        raise FileNotFoundError(f"backbone directory {path} lacks: {', '.join(missing)}")
    return model_class.from_pretrained(
        str(path), attn_implementation=attn_implementation, local_files_only=True, use_safetensors=True
    )
