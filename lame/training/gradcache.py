"""GradCache-style chunked training step: a contrastive batch larger than memory allows.

One LaME step embeds three sides (queries, targets, hard negatives) and feeds the queries'
reason states to the decoder head and the diversity term. With ``chunk_size`` C < batch B:

1. **Pass 1, no graph.** Every side is embedded chunk by chunk (C rows at a time) without
   autograd, so activations of only one chunk exist at a time. The RNG state before each
   chunk is recorded.
2. **Contrastive term on cached embeddings.** The [B, D] embeddings become leaf tensors; the
   InfoNCE loss (in-batch and hard negatives, false-negative masking, the all-gather across
   processes) is computed and backpropagated to them: that gives each row's representation
   gradient dL/de.
3. **Pass 2, with graph, per chunk.** Each chunk is run again (same RNG state, so the same
   numbers) and ``sum(e_chunk * dL/de_chunk)`` is backpropagated: by the chain rule this adds
   exactly the contrastive gradient of the chunk's parameters. The per-row terms
   (reconstruction of the answer from the reason states, the diversity of the reason states)
   need no other row, so the query chunk's share of them is added to that same backward.

The loss is the full-batch loss and the gradients equal the unchunked ones up to float
summation order (a test checks both). The price is one extra forward pass per side. The CoT
baseline's teacher-forced query pass is not chunked (``chunk_size`` is refused for it).
"""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager

import torch

from lame.backbones.native import select_rows
from lame.methods import get_method
from lame.training.objective import answer_tokens, contrastive_loss, row_terms
from lame_runtime.errors import InputError

FEED_SIDES = ("query", "target", "negatives")


def chunk_slices(rows: int, chunk_size: int) -> list[slice]:
    if chunk_size < 1:
        raise InputError(f"chunk_size must be >= 1, got {chunk_size}")
    return [slice(start, min(start + chunk_size, rows)) for start in range(0, rows, chunk_size)]


def _rows(model, feed: dict[str, torch.Tensor], part: slice) -> dict[str, torch.Tensor]:
    return select_rows(feed, part, model.preprocessor.image.merge_size**2)


def _per_row(rows: slice, per: int) -> slice:
    """Row slice -> the matching slice of a side with ``per`` items per row (negatives)."""
    return slice(rows.start * per, rows.stop * per)


class _RngState:
    """The CPU (and current CUDA device's) RNG state, to replay a chunk identically."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device
        self.cpu_state = torch.get_rng_state()
        self.cuda_state = torch.cuda.get_rng_state(device) if self.cuda else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu_state)
        if self.cuda:
            torch.cuda.set_rng_state(self.cuda_state, self.device)


def chunked_backward(
    model,
    batch: dict,
    chunk_size: int,
    forward_context: Callable[[], ContextManager] = contextlib.nullcontext,
) -> dict[str, torch.Tensor]:
    """Accumulate the full-batch gradients of the LaME loss into ``.grad`` chunk by chunk;
    -> the loss terms (detached), the same dictionary :func:`compute_losses` returns."""
    cfg = model.config
    if not get_method(cfg.method).chunkable:
        raise InputError(
            f"chunk_size (GradCache) does not cover the {cfg.method} method's "
            f"training pass; train {cfg.method} without --chunk-size"
        )
    batch_rows = len(batch["same_answer"])
    parts = chunk_slices(batch_rows, chunk_size)
    per_negative = len(batch["negatives"]["input_ids"]) // batch_rows if "negatives" in batch else 0
    sides = {"query": 1, "target": 1}
    if per_negative:
        sides["negatives"] = per_negative
    device = model.reason_tokens.device

    # Pass 1: embeddings of every side without a graph; remember each chunk's RNG state.
    cached: dict[str, list[torch.Tensor]] = {side: [] for side in sides}
    states: list[_RngState] = []
    with torch.no_grad():
        for part in parts:
            states.append(_RngState(device))
            for side, per in sides.items():
                with forward_context():
                    out = model(**_rows(model, batch[side], _per_row(part, per)))
                cached[side].append(out.embedding.detach())
    leaves = {side: torch.cat(chunks).requires_grad_(True) for side, chunks in cached.items()}

    # The contrastive term on the cached embeddings -> representation gradients.
    negatives = None
    if "negatives" in leaves:
        negatives = leaves["negatives"].reshape(batch_rows, per_negative, -1)
    contrastive = contrastive_loss(model, batch, leaves["query"], leaves["target"], negatives)
    (cfg.w_contrastive * contrastive).backward()
    grads = {side: leaf.grad for side, leaf in leaves.items()}

    # Pass 2: re-run each chunk with a graph; backpropagate the cached gradients plus the
    # chunk's per-row terms.
    tokens = answer_tokens(model, batch)
    sums: dict[str, torch.Tensor] = {}
    for part, state in zip(parts, states):
        state.restore()
        share = (part.stop - part.start) / batch_rows
        for side, per in sides.items():
            span = _per_row(part, per)
            with forward_context():
                out = model(**_rows(model, batch[side], span))
                surrogate = (out.embedding * grads[side][span]).sum()
                if side == "query":
                    chunk_batch = {
                        "decoder_input": batch["decoder_input"][part],
                        "decoder_target": batch["decoder_target"][part],
                    }
                    terms, weighted = row_terms(model, chunk_batch, out.reason_states, tokens, share)
                    if weighted is not None:
                        surrogate = surrogate + weighted
                    for name, value in terms.items():
                        sums[name] = sums.get(name, 0.0) + value.detach().float()
            surrogate.backward()

    losses = {"contrastive": contrastive.detach(), **sums}
    total = cfg.w_contrastive * losses["contrastive"]
    weights = {"reconstruction": cfg.w_reconstruction, "diversity": cfg.w_diversity}
    for name, value in sums.items():
        total = total + weights[name] * value
    losses["total"] = total
    return losses
