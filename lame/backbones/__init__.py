"""Backbone adapters: input ids + images -> input embeddings -> causal transformer -> hidden states.

Every adapter implements :class:`lame.backbones.base.Backbone`; the LaME model never touches a
family's internals, so adding a family means adding one adapter module and one line in
``_ADAPTERS`` below.
"""

from __future__ import annotations

import contextlib
import contextvars
from importlib import import_module
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:  # base imports torch; the registry itself must not
    from lame.backbones.base import Backbone

# family -> (module under lame.backbones, adapter class): the registry, one line per family.
# Modules load on first use, so naming the families imports neither torch nor transformers.
_ADAPTERS = {
    "qwen2_vl": ("qwen2_vl", "Qwen2VLBackbone"),
    "qwen2_5_vl": ("qwen2_5_vl", "Qwen25VLBackbone"),
    "qwen3_vl": ("qwen3_vl", "Qwen3VLBackbone"),
    "idefics3": ("idefics3", "Idefics3Backbone"),
    "smollm2_efficientnet": ("smollm_effnet", "SmolLM2EfficientNetBackbone"),
}
FAMILIES = tuple(_ADAPTERS)

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


def adapter(family: str) -> type[Backbone]:
    """The adapter class registered for ``family`` (its module is imported here, on first use);
    an unknown family is a ValueError listing the registered ones."""
    if family not in _ADAPTERS:
        raise ValueError(f"unknown backbone family {family!r}; available: {', '.join(FAMILIES)}")
    module, name = _ADAPTERS[family]
    return getattr(import_module(f"lame.backbones.{module}"), name)


def build_backbone(config, vocab_size: int, image_token_id: int) -> Backbone:
    return adapter(config.backbone.family).build(
        config, vocab_size, image_token_id, pretrained=_LOAD_PRETRAINED.get()
    )


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


__all__ = ["FAMILIES", "adapter", "architecture_only", "backbone_tokenizer", "build_backbone"]
