"""Idefics3 / SmolVLM adapter (the edge class: SigLIP vision, pixel-shuffle connector, Llama).

* Images: Idefics3's vision embeddings bucket patch positions on a square grid and its
  pixel-shuffle connector reshapes the patch sequence as a square, so this family needs a
  square ``image`` config (the runtime resizes to it). The shared preprocessing still emits
  Qwen-style flat patches; :func:`unpatchify` rebuilds the CHW image in-graph (reshapes only),
  so one preprocessing implementation serves every family.
* Text: Llama with ordinary 1-D positions (counted over non-padding tokens, as left padding
  requires) and our additive 4-D mask, which Transformers' Llama uses as given.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from lame.backbones.base import Backbone, sequential_positions
from lame.backbones.qwen2_vl import build_model


def tiny_idefics3_config(config, vocab_size: int, image_token_id: int):
    from transformers import Idefics3Config

    bb, img = config.backbone, config.image
    text = dict(
        model_type="llama",
        vocab_size=vocab_size,
        hidden_size=bb.hidden_size,
        intermediate_size=bb.intermediate_size,
        num_hidden_layers=bb.num_layers,
        num_attention_heads=bb.num_heads,
        num_key_value_heads=bb.num_kv_heads,
        max_position_embeddings=1024,
        rope_theta=bb.rope_theta,
        pad_token_id=None,
        bos_token_id=None,
        eos_token_id=None,
    )
    vision = dict(
        hidden_size=bb.vision_embed_dim,
        intermediate_size=2 * bb.vision_embed_dim,
        num_hidden_layers=bb.vision_depth,
        num_attention_heads=bb.vision_heads,
        image_size=img.height,
        patch_size=img.patch_size,
    )
    cfg = Idefics3Config(
        vision_config=vision, text_config=text, image_token_id=image_token_id, scale_factor=img.merge_size
    )
    for sub in (cfg, cfg.text_config, cfg.vision_config):
        sub._attn_implementation = bb.attn_implementation
    return cfg


def unpatchify(patches: torch.Tensor, image_config) -> torch.Tensor:
    """[B, P, 3*T*p*p] flat patches (Qwen layout, see lame_runtime.inputs.images) -> [B, 3, H, W]."""
    p, m, t = image_config.patch_size, image_config.merge_size, image_config.temporal_patch_size
    gh, gw = image_config.grid
    x = patches.reshape(-1, gh // m, gw // m, m, m, 3, t, p, p)[:, :, :, :, :, :, 0]
    x = x.permute(0, 5, 1, 3, 6, 2, 4, 7)  # B, C, gh/m, m, p, gw/m, m, p
    return x.reshape(-1, 3, gh * p, gw * p)


class Idefics3Backbone(Backbone):
    def __init__(self, model, image_config):
        super().__init__()
        if image_config.height != image_config.width:
            raise ValueError(
                f"Idefics3 needs square images; the image config is "
                f"{image_config.height}x{image_config.width}"
            )
        if image_config.merge_size != model.config.scale_factor:
            raise ValueError(
                f"image merge_size must equal the connector's scale_factor ({model.config.scale_factor})"
            )
        self.model = model  # transformers.Idefics3Model
        self.hidden_size = model.config.text_config.hidden_size
        self.image_config = image_config

    @classmethod
    def build(cls, config, vocab_size: int, image_token_id: int, pretrained: bool = True) -> Idefics3Backbone:
        from transformers import Idefics3Model

        return cls(
            build_model(config, vocab_size, image_token_id, Idefics3Model, tiny_idefics3_config, pretrained),
            config.image,
        )

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        images = unpatchify(pixel_values, self.image_config).to(self.model.vision_model.dtype)
        states = self.model.vision_model(pixel_values=images).last_hidden_state
        return self.model.connector(states)

    def position_ids(self, valid: torch.Tensor, is_image: torch.Tensor) -> torch.Tensor:
        return sequential_positions(valid)

    @property
    def text_model(self) -> nn.Module:
        return self.model.text_model

    def vision_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.model.vision_model.parameters()
        yield from self.model.connector.parameters()

    def language_parameters(self) -> Iterator[nn.Parameter]:
        return self.model.text_model.parameters()
