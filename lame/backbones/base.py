"""The interface every backbone adapter implements."""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn


def cache_kwargs(module: nn.Module, cache) -> dict:
    """The KV-cache keyword of a Transformers model: ``cache`` in recent releases,
    ``past_key_values`` before (deprecated since 5.2x)."""
    import inspect

    names = inspect.signature(module.forward).parameters
    return {"cache": cache} if "cache" in names else {"past_key_values": cache}


def sequential_positions(valid: torch.Tensor) -> torch.Tensor:
    """1-D positions counted over non-padding tokens (left padding and masked gaps); padded
    slots get 0. For Llama-style language models."""
    valid = valid.long()
    return ((valid.cumsum(-1) - 1).clamp(min=0)) * valid


class Backbone(nn.Module):
    hidden_size: int

    model: nn.Module  # the wrapped Transformers model
    checkpoint_vision: bool = False  # recompute vision blocks in backward (adapters that loop)
    # DeepStack (Qwen3-VL): encode_images returns [B, N, (1 + D) * H] and transformer() adds
    # level i to the hidden states after language layer i; 0 for every other family.
    deepstack_levels: int = 0

    @classmethod
    def build(cls, config, vocab_size: int, image_token_id: int, pretrained: bool = True) -> Backbone:
        """The factory the registry (:func:`lame.backbones.build_backbone`) calls: the family's
        model for ``config`` with ``vocab_size`` rows, pretrained weights where it has them."""
        raise NotImplementedError(f"{cls.__name__} does not implement build()")

    def enable_gradient_checkpointing(self) -> None:
        """Recompute activations in the backward pass instead of keeping them: every block of
        the language model (Transformers' own mechanism, non-reentrant so frozen inputs and
        LoRA work) and the vision tower's blocks where the adapter runs them itself."""
        options = {"use_reentrant": False}
        for module in (self.text_model, getattr(self.model, "vision_model", None)):
            if not getattr(module, "supports_gradient_checkpointing", False):
                continue
            if hasattr(module, "activation_checkpointing_enable"):  # Transformers >= 5.x name
                module.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
            else:
                module.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)
        self.checkpoint_vision = True

    def run_block(self, block, *args):
        """``block(*args)``, recomputed in backward when gradient checkpointing is on."""
        if self.checkpoint_vision and self.training and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, L] ids -> [B, L, H] token embeddings."""
        return self.model.get_input_embeddings()(input_ids)

    def lm_head_weight(self) -> torch.Tensor:
        """[vocab, hidden] next-token projection: the input embedding matrix (a tied head, as
        SmolLM2 and the small Qwen2-VL models have), used by the CoT baseline's generator."""
        return self.model.get_input_embeddings().weight

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, P, patch_dim] fixed-size images -> [B, N, H] visual tokens for the language model."""
        raise NotImplementedError

    def position_ids(self, valid: torch.Tensor, is_image: torch.Tensor) -> torch.Tensor:
        """Positions for a full sequence (input + latent tokens); padded slots get 0."""
        raise NotImplementedError

    @property
    def text_model(self) -> nn.Module:
        """The causal language model body (a Transformers ``*TextModel``/``LlamaModel``)."""
        raise NotImplementedError

    def text_mask(self, attention_bias: torch.Tensor):
        """Our additive bias as the text model's ``attention_mask`` argument (used as given)."""
        return attention_bias

    def transformer(
        self,
        embeds: torch.Tensor,
        position_ids: torch.Tensor,
        attention_bias: torch.Tensor,
        visual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run the causal LM on embeddings with an additive [B, 1, L, L] bias -> [B, L, H].
        ``visual`` [B, L, D, H]: DeepStack features (only where ``deepstack_levels`` > 0)."""
        _no_deepstack(self, visual)
        out = self.text_model(
            inputs_embeds=embeds,
            position_ids=position_ids,
            attention_mask=self.text_mask(attention_bias),
            use_cache=False,
        )
        return out.last_hidden_state

    def transformer_cached(
        self,
        embeds: torch.Tensor,
        position_ids: torch.Tensor,
        attention_bias: torch.Tensor,
        cache,
        visual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``transformer`` for step-by-step decoding (the CoT and latent baselines): ``embeds``
        are the new positions only, ``attention_bias`` is [B, 1, new, past + new] and ``cache``
        (a ``transformers.DynamicCache``) is extended in place."""
        _no_deepstack(self, visual)
        text_model = self.text_model
        out = text_model(
            inputs_embeds=embeds,
            position_ids=position_ids,
            attention_mask=self.text_mask(attention_bias),
            use_cache=True,
            **cache_kwargs(text_model, cache),
        )
        return out.last_hidden_state

    def vision_parameters(self) -> Iterator[nn.Parameter]:
        raise NotImplementedError

    def language_parameters(self) -> Iterator[nn.Parameter]:
        raise NotImplementedError

    def connector_parameters(self) -> Iterator[nn.Parameter]:
        """Newly initialised glue between pretrained towers (e.g. a vision projector) that a
        warm-up stage which freezes the backbone should still train; none by default."""
        return iter(())


def _no_deepstack(backbone: Backbone, visual) -> None:
    if visual is not None:
        raise ValueError(
            f"{type(backbone).__name__} has no DeepStack layers, but visual features for them were given"
        )
