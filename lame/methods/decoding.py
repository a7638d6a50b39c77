"""Step-by-step decoding with a KV cache, shared by the latent, CoT and lm methods.

Positions and masks are built from the whole sequence's ``valid`` mask at each step, exactly as
a single full pass would, so a row that stops early (EOS) simply has masked slots (a test checks
cached == uncached).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lame.methods.base import LameOutput


@dataclass
class Decoding:
    """What step-by-step decoding carries: the sequence's masks so far and the KV cache."""

    valid: torch.Tensor  # [B, T] 1 where a position holds a real token
    is_image: torch.Tensor  # [B, T]
    cache: object  # transformers.DynamicCache


def extend(
    model,
    state: Decoding,
    embeds: torch.Tensor,
    valid_new: torch.Tensor,
    is_image_new: torch.Tensor | None = None,
    visual: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run ``embeds`` [B, q, H] as the next q positions -> their hidden states [B, q, H].
    ``visual``: DeepStack features of these positions (the prefill's only)."""
    if is_image_new is None:
        is_image_new = torch.zeros_like(valid_new, dtype=torch.bool)
    state.valid = torch.cat([state.valid, valid_new], dim=1)
    state.is_image = torch.cat([state.is_image, is_image_new], dim=1)
    q, total = embeds.shape[1], state.valid.shape[1]
    positions = model.backbone.position_ids(state.valid, state.is_image)[..., -q:]
    bias = model.attention_bias(state.valid, total, embeds.dtype)[:, :, -q:]
    if visual is None:
        return model.backbone.transformer_cached(embeds, positions, bias, state.cache)
    return model.backbone.transformer_cached(embeds, positions, bias, state.cache, visual=visual)


def prefill(model, input_ids, attention_mask, pixel_values, image_mask) -> tuple[torch.Tensor, Decoding]:
    from transformers import DynamicCache

    embeds, is_image, visual = model.input_embeds(input_ids, attention_mask, pixel_values, image_mask)
    empty = attention_mask[:, :0]
    state = Decoding(empty, empty.bool(), DynamicCache())
    hidden = extend(model, state, embeds, attention_mask, is_image, visual)
    return hidden, state


def summary_states(model, state: Decoding, batch: int, dtype: torch.dtype) -> torch.Tensor:
    """The M summary tokens run after everything decoded so far -> [B, M, H]."""
    tokens = model.summary_tokens.to(dtype).unsqueeze(0).expand(batch, -1, -1)
    return extend(model, state, tokens, state.valid.new_ones(batch, len(model.summary_tokens)))


@dataclass
class Generation:
    output: LameOutput
    tokens: torch.Tensor  # [B, n] generated ids, pad after a row's EOS


def greedy_generate(
    model,
    input_ids,
    attention_mask,
    pixel_values,
    image_mask,
    max_new_tokens: int,
    stop_at_eos: bool = True,
    embed: bool = True,
) -> Generation:
    """Greedy text with a KV cache, then (``embed``) [EMBED] after the generated text.

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
    generated = torch.stack(tokens, 1) if tokens else input_ids[:, :0]
    reason = hidden.new_zeros(batch, 0, hidden.shape[-1])
    if not embed:
        empty = hidden.new_zeros(batch, 0, hidden.shape[-1])
        return Generation(LameOutput(hidden.new_zeros(batch, 0), reason, empty), generated)
    summary = summary_states(model, state, batch, hidden.dtype)
    return Generation(LameOutput(model.embed_head(summary), reason, summary), generated)


def teacher_forced(
    model, feed: dict, rationale: dict, with_summary: bool = True
) -> tuple[LameOutput | None, torch.Tensor]:
    """Training pass: input, then the reference "rationale . answer" tokens (right-padded,
    masked), then (``with_summary``) [EMBED]; -> (embedding output or None, next-token loss
    over rationale + EOS)."""
    input_ids, attention_mask = feed["input_ids"], feed["attention_mask"]
    embeds, is_image, visual = model.input_embeds(**feed)
    batch, length = input_ids.shape
    ids, valid = rationale["ids"], rationale["valid"]
    span = ids.shape[1]
    parts, valids = [embeds, model.backbone.embed_tokens(ids)], [attention_mask, valid]
    if with_summary:
        parts.append(model.summary_tokens.to(embeds.dtype).unsqueeze(0).expand(batch, -1, -1))
        valids.append(valid.new_ones(batch, len(model.summary_tokens)))
    all_valid = torch.cat(valids, dim=1)
    all_image = torch.cat([is_image, torch.zeros_like(all_valid[:, length:], dtype=torch.bool)], dim=1)
    hidden = model.run(torch.cat(parts, dim=1), all_valid, all_image, length, visual)
    # Position length-1 (last input token) predicts the first rationale token, and so on.
    logits = model.lm_logits(hidden[:, length - 1 : length + span])
    lm_loss = F.cross_entropy(
        logits.flatten(0, 1).float(), rationale["targets"].flatten(), ignore_index=model.pad_token_id
    )
    if not with_summary:
        return None, lm_loss
    summary = hidden[:, length + span :]
    reason = hidden.new_zeros(batch, 0, hidden.shape[-1])
    return LameOutput(model.embed_head(summary), reason, summary), lm_loss
