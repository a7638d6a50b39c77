"""The two bottleneck heads: embedding head (contrastive) and decoder head (reconstruction)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class EmbeddingHead(nn.Module):
    """Summary-token states [B, M, H] -> unit-norm embedding [B, D]."""

    def __init__(self, hidden: int, dim: int, pooling: str, projection: bool = True):
        super().__init__()
        self.pooling = pooling
        if pooling == "attention":
            self.query = nn.Parameter(torch.randn(hidden) * hidden**-0.5)
        if not projection and dim != hidden:
            raise ValueError(f"embed_projection=false needs embed_dim = hidden size {hidden}, got {dim}")
        self.proj = nn.Linear(hidden, dim) if projection else nn.Identity()

    def forward(self, summary: torch.Tensor) -> torch.Tensor:
        if self.pooling == "attention":
            weights = torch.softmax(summary @ self.query / summary.shape[-1] ** 0.5, dim=-1)
            pooled = (weights.unsqueeze(-1) * summary).sum(1)
        else:
            pooled = summary[:, -1]  # [EMBED] is the last summary token
        return F.normalize(self.proj(pooled).float(), dim=-1)


class DecoderHead(nn.Module):
    """A small transformer decoder that reconstructs the answer text from the K reason states.

    Teacher forcing: input ``[BOS] a1 .. an``, target ``a1 .. an [EOS]``; it cross-attends only
    to the reason-token states, which is what makes them an information bottleneck.
    """

    def __init__(self, hidden: int, vocab: int, dim: int, layers: int, heads: int, max_len: int):
        super().__init__()
        self.memory_proj = nn.Linear(hidden, dim)
        self.tokens = nn.Embedding(vocab, dim)
        self.positions = nn.Parameter(torch.zeros(max_len + 1, dim))
        layer = nn.TransformerDecoderLayer(
            dim, heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.decoder = nn.TransformerDecoder(layer, layers)
        self.out = nn.Linear(dim, vocab)
        self.ignore_index = -100  # the model sets its pad id: the collator pads targets with it

    def forward(self, reason_states: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """-> logits [B, T, vocab] for decoder input ids [B, T]."""
        length = inputs.shape[1]
        x = self.tokens(inputs) + self.positions[:length]
        causal = nn.Transformer.generate_square_subsequent_mask(length, device=inputs.device)
        h = self.decoder(x, self.memory_proj(reason_states), tgt_mask=causal, tgt_is_causal=True)
        return self.out(h)

    def loss(
        self,
        reason_states: torch.Tensor,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        ignore_index: int,
        tokens: float | None = None,
    ) -> torch.Tensor:
        """Token-level cross-entropy, summed and divided by ``tokens`` (default: the number of
        target tokens here; with several processes, the global count / world size, so that
        the ranks' average is the global per-token mean whatever each rank's answer lengths)."""
        return token_loss(self(reason_states, inputs), targets, ignore_index, tokens)


def token_loss(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int, tokens: float | torch.Tensor | None
) -> torch.Tensor:
    """Cross-entropy summed over target tokens, divided by ``tokens`` (default: their count)."""
    total = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        targets.reshape(-1),
        ignore_index=ignore_index,
        reduction="sum",
    )
    count = tokens if tokens is not None else (targets != ignore_index).sum().clamp(min=1)
    return total / count
