"""Losses: InfoNCE with false-negative masking and hard negatives, and the diversity regulariser."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(
    queries: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    hard_negatives: torch.Tensor | None = None,
    same_answer: torch.Tensor | None = None,
    negative_valid: torch.Tensor | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """Query -> target InfoNCE over in-batch targets plus each row's own hard negatives.

    queries, targets: [B, D] unit vectors; hard_negatives: [B, H, D] (row i's negatives are used
    for row i only: another row's hard negative may well be true for this query);
    same_answer: [B, B] bool, True where rows share an answer, i.e. target j is also a correct
    match for query i. Those off-diagonal entries are masked out rather than pushed away;
    negative_valid: [B, H] bool, False for filler negatives.
    With several processes, ``targets`` is the global batch [B_global, D], ``same_answer`` is
    [B, B_global] and query i's positive is target ``offset + i``.
    """
    logits = queries @ targets.T / temperature
    labels = torch.arange(len(queries), device=queries.device) + offset
    if same_answer is not None:
        own = torch.zeros_like(same_answer)
        own[torch.arange(len(queries)), labels] = True
        logits = logits.masked_fill(same_answer & ~own, float("-inf"))
    if hard_negatives is not None and hard_negatives.shape[1] > 0:
        hard = torch.einsum("bd,bhd->bh", queries, hard_negatives) / temperature
        if negative_valid is not None:
            hard = hard.masked_fill(~negative_valid, float("-inf"))
        logits = torch.cat([logits, hard], dim=1)
    return F.cross_entropy(logits, labels)


def diversity_penalty(states: torch.Tensor) -> torch.Tensor:
    """Mean squared pairwise cosine between the K latent states of each row (0 when K < 2).

    Squared, so orthogonal states are the optimum; a plain mean cosine would instead reward
    anti-aligned pairs, which collapse just as badly (onto one line).
    """
    k = states.shape[1]
    if k < 2:
        return states.new_zeros(())
    unit = F.normalize(states.float(), dim=-1)
    gram = unit @ unit.transpose(1, 2)
    off_diagonal = ~torch.eye(k, dtype=torch.bool, device=states.device)
    return gram[:, off_diagonal].pow(2).mean()
