"""The LaME training objective for one batch: contrastive + reconstruction + diversity.

The terms split into two kinds, which is what lets :mod:`lame.training.gradcache` chunk a batch:

* the contrastive term couples every row with every other (in-batch negatives): it needs all
  embeddings of the batch at once;
* the per-row terms (reconstruction from a row's reason states, the diversity of a row's reason
  states, the CoT next-token loss) are sums over rows, so a chunk's share can be computed and
  backpropagated on its own (:func:`row_terms` with ``share`` = the chunk's fraction of rows).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lame.losses import diversity_penalty, info_nce
from lame.methods import get_method
from lame.training.distributed import gather_rows, per_rank_share


def compute_losses(model, batch: dict) -> dict[str, torch.Tensor]:
    cfg = model.config
    method = get_method(cfg.method)
    if not method.contrastive:  # generative pre-training: its own loss, no target side
        return method.generative_losses(model, batch)
    query, extra = method.query_pass(model, batch)
    target = model(**batch["target"])
    negatives = None
    if "negatives" in batch:
        flat = model(**batch["negatives"]).embedding
        negatives = flat.reshape(len(query.embedding), -1, flat.shape[-1])
    losses = {"contrastive": contrastive_loss(model, batch, query.embedding, target.embedding, negatives)}
    total = cfg.w_contrastive * losses["contrastive"]
    rows, rows_total = row_terms(model, batch, query.reason_states, answer_tokens(model, batch))
    losses.update(rows)
    if rows_total is not None:
        total = total + rows_total
    weights = method.extra_weights(cfg)
    for name, value in extra.items():
        losses[name] = value
        total = total + weights[name] * value
    losses["total"] = total
    return losses


def contrastive_loss(
    model, batch: dict, queries: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor | None
) -> torch.Tensor:
    """InfoNCE of the batch; with ``matryoshka_dims``, the mean of InfoNCE over each prefix of
    the embeddings, renormalised (Matryoshka representation learning). The mean, not the sum,
    keeps the term's scale, so the other loss weights mean the same with or without it."""
    cfg = model.config
    # Negatives span the global batch when several processes train (a no-op otherwise).
    targets = gather_rows(targets)

    def loss(q: torch.Tensor, t: torch.Tensor, n: torch.Tensor | None) -> torch.Tensor:
        return info_nce(
            q,
            t,
            cfg.temperature,
            n,
            batch["same_answer"],
            batch.get("negative_valid"),
            batch.get("offset", 0),
        )

    if not cfg.matryoshka_dims:
        return loss(queries, targets, negatives)
    terms = []
    for d in cfg.matryoshka_dims:
        cut = [None if x is None else F.normalize(x[..., :d], dim=-1) for x in (queries, targets, negatives)]
        terms.append(loss(*cut))
    return torch.stack(terms).mean()


def answer_tokens(model, batch: dict) -> float:
    """Reconstruction denominator: answer tokens of the whole (global) batch per rank."""
    if model.decoder_head is None:
        return 1.0
    count = int((batch["decoder_target"] != model.decoder_head.ignore_index).sum())
    return max(per_rank_share(count), 1.0)


def row_terms(
    model, batch: dict, reason_states: torch.Tensor, tokens: float, share: float = 1.0
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """Per-row terms of ``batch``'s rows -> (unweighted terms, their weighted sum or None).

    ``tokens`` is the whole batch's answer-token count and ``share`` the fraction of the batch's
    rows given here, so the values over the chunks of a batch add up to the full-batch ones."""
    cfg = model.config
    terms: dict[str, torch.Tensor] = {}
    total = None
    if model.decoder_head is not None:
        terms["reconstruction"] = reconstruction(model, batch, reason_states, tokens)
        total = cfg.w_reconstruction * terms["reconstruction"]
    if get_method(cfg.method).diversity and cfg.num_reason_tokens > 1 and cfg.w_diversity > 0:
        terms["diversity"] = diversity_penalty(reason_states) * share
        weighted = cfg.w_diversity * terms["diversity"]
        total = weighted if total is None else total + weighted
    return terms, total


def reconstruction(model, batch: dict, reason_states: torch.Tensor, tokens: float) -> torch.Tensor:
    """The decoder's loss on the rows that have answer targets (all of them unless the
    collator's ``decoder_rows`` left some without): a row without targets adds nothing, and
    leaving it out of the decoder pass is what makes a costly decoder affordable."""
    head = model.decoder_head
    inputs, targets = batch["decoder_input"], batch["decoder_target"]
    keep = (targets != head.ignore_index).any(1)
    if not bool(keep.all()):
        if not bool(keep.any()):
            return reason_states.sum() * 0.0  # keeps the term (and the graph) in every step
        reason_states, inputs, targets = reason_states[keep], inputs[keep], targets[keep]
    return head.loss(reason_states, inputs, targets, ignore_index=head.ignore_index, tokens=tokens)
