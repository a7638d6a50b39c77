"""Backbone adapters: input ids + images -> input embeddings -> causal transformer -> hidden states.

Every adapter implements :class:`lame.backbones.base.Backbone`; the LaME model never touches a
family's internals, so adding a family means adding one adapter module.
"""
from __future__ import annotations

from lame.backbones.base import Backbone


def build_backbone(config, vocab_size: int, image_token_id: int) -> Backbone:
    family = config.backbone.family
    if family == "qwen2_vl":
        from lame.backbones.qwen2_vl import Qwen2VLBackbone

        return Qwen2VLBackbone.build(config, vocab_size, image_token_id)
    if family == "qwen2_5_vl":
        from lame.backbones.qwen2_5_vl import Qwen25VLBackbone

        return Qwen25VLBackbone.build(config, vocab_size, image_token_id)
    if family == "idefics3":
        from lame.backbones.idefics3 import Idefics3Backbone

        return Idefics3Backbone.build(config, vocab_size, image_token_id)
    raise ValueError(f"unknown backbone family {family!r}; available: qwen2_vl, qwen2_5_vl, "
                     "idefics3")


__all__ = ["Backbone", "build_backbone"]
