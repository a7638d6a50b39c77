"""Backbone adapters: input ids + images -> input embeddings -> causal transformer -> hidden states.

Every adapter implements :class:`lame.backbones.base.Backbone`; the LaME model never touches a
family's internals, so adding a family means adding one adapter module.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

from lame.backbones.base import Backbone

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "idefics3", "smollm2_efficientnet")

# False inside architecture_only(): families whose pretrained weights come from installed
# packages (smollm2_efficientnet) then build the bare architecture instead.
_LOAD_PRETRAINED = contextvars.ContextVar("lame_load_pretrained", default=True)


@contextlib.contextmanager
def architecture_only() -> Iterator[None]:
    """Build backbones without reading packaged pretrained weights: for loading a LaME
    checkpoint, whose own weights replace them anyway (faster, and the weight packages need
    not be installed where a checkpoint is only evaluated or exported)."""
    token = _LOAD_PRETRAINED.set(False)
    try:
        yield
    finally:
        _LOAD_PRETRAINED.reset(token)


def build_backbone(config, vocab_size: int, image_token_id: int) -> Backbone:
    family = config.backbone.family
    if family == "qwen2_vl":
        from lame.backbones.qwen2_vl import Qwen2VLBackbone

        return Qwen2VLBackbone.build(config, vocab_size, image_token_id, pretrained=_LOAD_PRETRAINED.get())
    if family == "qwen2_5_vl":
        from lame.backbones.qwen2_5_vl import Qwen25VLBackbone

        return Qwen25VLBackbone.build(config, vocab_size, image_token_id, pretrained=_LOAD_PRETRAINED.get())
    if family == "qwen3_vl":
        from lame.backbones.qwen3_vl import Qwen3VLBackbone

        return Qwen3VLBackbone.build(config, vocab_size, image_token_id, pretrained=_LOAD_PRETRAINED.get())
    if family == "idefics3":
        from lame.backbones.idefics3 import Idefics3Backbone

        return Idefics3Backbone.build(config, vocab_size, image_token_id, pretrained=_LOAD_PRETRAINED.get())
    if family == "smollm2_efficientnet":
        from lame.backbones.smollm_effnet import SmolLM2EfficientNetBackbone

        return SmolLM2EfficientNetBackbone.build(
            config, vocab_size, image_token_id, pretrained=_LOAD_PRETRAINED.get()
        )
    raise ValueError(f"unknown backbone family {family!r}; available: {', '.join(FAMILIES)}")


def backbone_tokenizer(config):
    """The tokenizer a family must use (a ``tokenizers.Tokenizer`` that already holds LaME's
    special tokens), or None when the family trains with the dataset's tokenizer. A local
    backbone directory (``backbone.path``) brings its own ``tokenizer.json``."""
    if config.backbone.path:
        from lame.backbones.directory import directory_tokenizer

        return directory_tokenizer(config.backbone.path)
    if config.backbone.family == "smollm2_efficientnet":
        from lame.backbones.smollm_effnet import tokenizer_for

        return tokenizer_for(config)
    return None


__all__ = ["Backbone", "FAMILIES", "architecture_only", "backbone_tokenizer", "build_backbone"]
