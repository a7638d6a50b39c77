"""The LaME training objective for one batch: contrastive + reconstruction + diversity."""
from __future__ import annotations

import torch

from lame.distributed import gather_rows, per_rank_share
from lame.losses import diversity_penalty, info_nce


def compute_losses(model, batch: dict) -> dict[str, torch.Tensor]:
    cfg = model.config
    lm_loss = None
    if cfg.method == "cot":
        from lame.baselines import cot_teacher_forced

        query, lm_loss = cot_teacher_forced(model, batch["query"], batch["rationale"])
    else:
        query = model(**batch["query"])
    target = model(**batch["target"])
    negatives = None
    if "negatives" in batch:
        flat = model(**batch["negatives"]).embedding
        negatives = flat.reshape(len(query.embedding), -1, flat.shape[-1])
    # Negatives span the global batch when several processes train (a no-op otherwise).
    targets = gather_rows(target.embedding)
    losses = {"contrastive": info_nce(query.embedding, targets, cfg.temperature,
                                      negatives, batch["same_answer"],
                                      batch.get("negative_valid"), batch.get("offset", 0))}
    total = cfg.w_contrastive * losses["contrastive"]
    if model.decoder_head is not None:
        targets_ids = batch["decoder_target"]
        tokens = per_rank_share(int((targets_ids != model.pad_token_id).sum()))
        losses["reconstruction"] = model.decoder_head.loss(
            query.reason_states, batch["decoder_input"], targets_ids,
            ignore_index=model.pad_token_id, tokens=max(tokens, 1.0))
        total = total + cfg.w_reconstruction * losses["reconstruction"]
    if lm_loss is not None:
        losses["lm"] = lm_loss
        total = total + cfg.w_lm * lm_loss
    if cfg.method == "lame" and cfg.num_reason_tokens > 1 and cfg.w_diversity > 0:
        losses["diversity"] = diversity_penalty(query.reason_states)
        total = total + cfg.w_diversity * losses["diversity"]
    losses["total"] = total
    return losses
