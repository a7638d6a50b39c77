"""The baselines LaME is compared with, on the same backbone, heads and data.

* ``cot`` (UME-R1 style): the model writes a rationale and the answer (greedy, KV cache), then an
  [EMBED] token placed after the generated text gives the embedding. Trained with next-token
  loss on "rationale . answer" (teacher forcing) plus the contrastive loss on [EMBED].
* ``latent`` (Coconut / PLUME style): K sequential latent steps; each step's last hidden state
  is fed back as the next input embedding (KV cache), then [EMBED].

Both decode step by step with ``Backbone.transformer_cached``; positions and masks are built
from the whole sequence's ``valid`` mask each step, exactly as a single full pass would, so a
row that stops early (EOS) simply has masked slots (a test checks cached == uncached).
``discriminative`` needs no code here: it is LaME with K=0 and no bottleneck.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lame.model import LameOutput


@dataclass
class Decoding:
    """What step-by-step decoding carries: the sequence's masks so far and the KV cache."""
    valid: torch.Tensor      # [B, T] 1 where a position holds a real token
    is_image: torch.Tensor   # [B, T]
    cache: object            # transformers.DynamicCache


def extend(model, state: Decoding, embeds: torch.Tensor, valid_new: torch.Tensor,
           is_image_new: torch.Tensor | None = None) -> torch.Tensor:
    """Run ``embeds`` [B, q, H] as the next q positions -> their hidden states [B, q, H]."""
    if is_image_new is None:
        is_image_new = torch.zeros_like(valid_new, dtype=torch.bool)
    state.valid = torch.cat([state.valid, valid_new], dim=1)
    state.is_image = torch.cat([state.is_image, is_image_new], dim=1)
    q, total = embeds.shape[1], state.valid.shape[1]
    positions = model.backbone.position_ids(state.valid, state.is_image)[..., -q:]
    bias = model.attention_bias(state.valid, total, embeds.dtype)[:, :, -q:]
    return model.backbone.transformer_cached(embeds, positions, bias, state.cache)


def prefill(model, input_ids, attention_mask, pixel_values, image_mask
            ) -> tuple[torch.Tensor, Decoding]:
    from transformers import DynamicCache

    embeds, is_image = model.input_embeds(input_ids, attention_mask, pixel_values, image_mask)
    empty = attention_mask[:, :0]
    state = Decoding(empty, empty.bool(), DynamicCache())
    hidden = extend(model, state, embeds, attention_mask, is_image)
    return hidden, state


def _summary(model, state: Decoding, batch: int, dtype: torch.dtype) -> LameOutput:
    tokens = model.summary_tokens.to(dtype).unsqueeze(0).expand(batch, -1, -1)
    states = extend(model, state, tokens, state.valid.new_ones(batch, len(model.summary_tokens)))
    return states


def latent_forward(model, input_ids, attention_mask, pixel_values, image_mask) -> LameOutput:
    """K latent steps, each fed the previous step's last hidden state, then [EMBED]."""
    hidden, state = prefill(model, input_ids, attention_mask, pixel_values, image_mask)
    batch = len(input_ids)
    last = hidden[:, -1:]  # left padding: the final column is every row's last real token
    ones = attention_mask.new_ones(batch, 1)
    steps = []
    for _ in range(model.config.num_reason_tokens):
        last = extend(model, state, last, ones)
        steps.append(last)
    summary = _summary(model, state, batch, hidden.dtype)
    return LameOutput(model.embed_head(summary), torch.cat(steps, dim=1), summary)


@dataclass
class Generation:
    output: LameOutput
    tokens: torch.Tensor   # [B, n] generated ids, pad after a row's EOS


def cot_generate(model, input_ids, attention_mask, pixel_values, image_mask,
                 max_new_tokens: int, stop_at_eos: bool = True) -> Generation:
    """Greedy rationale with a KV cache, then [EMBED] after the generated text.

    EOS is not fed back: a finished row's later slots are padding (masked), which is the
    layout the teacher-forced training pass uses. ``stop_at_eos=False`` always generates
    ``max_new_tokens`` (benchmarks of untrained weights, which rarely emit EOS)."""
    special = model.preprocessor.text.special
    hidden, state = prefill(model, input_ids, attention_mask, pixel_values, image_mask)
    batch = len(input_ids)
    alive = torch.ones(batch, dtype=torch.bool, device=input_ids.device)
    last, tokens = hidden[:, -1], []
    for _ in range(max_new_tokens):
        next_id = model.lm_logits(last).argmax(-1)
        if stop_at_eos:
            alive = alive & (next_id != special["eos"])
            if not alive.any():
                break
        token = torch.where(alive, next_id, torch.full_like(next_id, special["pad"]))
        tokens.append(token)
        embeds = model.backbone.embed_tokens(token.unsqueeze(1))
        last = extend(model, state, embeds, alive.long().unsqueeze(1))[:, -1]
    summary = _summary(model, state, batch, hidden.dtype)
    generated = torch.stack(tokens, 1) if tokens else input_ids[:, :0]
    reason = hidden.new_zeros(batch, 0, hidden.shape[-1])
    return Generation(LameOutput(model.embed_head(summary), reason, summary), generated)


def cot_teacher_forced(model, feed: dict, rationale: dict) -> tuple[LameOutput, torch.Tensor]:
    """Training pass: input, then the reference "rationale . answer" tokens (right-padded,
    masked), then [EMBED]; -> (embedding output, next-token loss over rationale + EOS)."""
    input_ids, attention_mask = feed["input_ids"], feed["attention_mask"]
    embeds, is_image = model.input_embeds(**feed)
    batch, length = input_ids.shape
    ids, valid = rationale["ids"], rationale["valid"]
    span = ids.shape[1]
    summary = model.summary_tokens.to(embeds.dtype).unsqueeze(0).expand(batch, -1, -1)
    sequence = torch.cat([embeds, model.backbone.embed_tokens(ids), summary], dim=1)
    ones = valid.new_ones(batch, summary.shape[1])
    all_valid = torch.cat([attention_mask, valid, ones], dim=1)
    all_image = torch.cat([is_image, torch.zeros_like(torch.cat([valid, ones], 1), dtype=bool)], 1)
    hidden = model.run(sequence, all_valid, all_image, length)
    # Position length-1 (last input token) predicts the first rationale token, and so on.
    logits = model.lm_logits(hidden[:, length - 1:length + span])
    lm_loss = F.cross_entropy(logits.flatten(0, 1).float(), rationale["targets"].flatten(),
                              ignore_index=model.pad_token_id)
    summary_states = hidden[:, length + span:]
    reason = hidden.new_zeros(batch, 0, hidden.shape[-1])
    return LameOutput(model.embed_head(summary_states), reason, summary_states), lm_loss
