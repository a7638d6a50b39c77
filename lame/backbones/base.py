"""The interface every backbone adapter implements."""
from __future__ import annotations

from typing import Iterator

import torch
from torch import nn


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

    def vision_parameters(self) -> Iterator[nn.Parameter]:
        raise NotImplementedError

    def language_parameters(self) -> Iterator[nn.Parameter]:
        raise NotImplementedError
