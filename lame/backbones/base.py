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


class Backbone(nn.Module):
    hidden_size: int

    model: nn.Module  # the wrapped Transformers model

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, L] ids -> [B, L, H] token embeddings."""
        return self.model.get_input_embeddings()(input_ids)

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, P, patch_dim] fixed-size images -> [B, N, H] visual tokens for the language model."""
        raise NotImplementedError

    def position_ids(self, valid: torch.Tensor, is_image: torch.Tensor) -> torch.Tensor:
        """Positions for a full sequence (input + latent tokens); padded slots get 0."""
        raise NotImplementedError

    def transformer(self, embeds: torch.Tensor, position_ids: torch.Tensor,
                    attention_bias: torch.Tensor) -> torch.Tensor:
        """Run the causal LM on embeddings with an additive [B, 1, L, L] bias -> [B, L, H]."""
        raise NotImplementedError

    def transformer_cached(self, embeds: torch.Tensor, position_ids: torch.Tensor,
                           attention_bias: torch.Tensor, cache) -> torch.Tensor:
        """``transformer`` for step-by-step decoding (the CoT and latent baselines): ``embeds``
        are the new positions only, ``attention_bias`` is [B, 1, new, past + new] and ``cache``
        (a ``transformers.DynamicCache``) is extended in place."""
        raise NotImplementedError

    def vision_parameters(self) -> Iterator[nn.Parameter]:
        raise NotImplementedError

    def language_parameters(self) -> Iterator[nn.Parameter]:
        raise NotImplementedError

    def connector_parameters(self) -> Iterator[nn.Parameter]:
        """Newly initialised glue between pretrained towers (e.g. a vision projector) that a
        warm-up stage which freezes the backbone should still train; none by default."""
        return iter(())
