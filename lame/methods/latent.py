"""The latent baseline (Coconut / PLUME style): K sequential latent steps, each step's last
hidden state fed back as the next input embedding (KV cache), then [EMBED]."""

from __future__ import annotations

from dataclasses import replace

import torch

from lame.methods.base import LATENT_STEPS, LameOutput, Method
from lame.methods.decoding import extend, prefill, summary_states


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
    summary = summary_states(model, state, batch, hidden.dtype)
    return LameOutput(model.embed_head(summary), torch.cat(steps, dim=1), summary)


class LatentMethod(Method):
    name = "latent"
    summary = "K sequential latent steps fed back as inputs (Coconut)"
    reason_tokens = LATENT_STEPS

    def validate(self, config) -> None:
        super().validate(config)
        if config.num_reason_tokens < 1:
            raise ValueError("method 'latent' needs num_reason_tokens >= 1 (the latent steps)")

    def forward(self, model, input_ids, attention_mask, pixel_values, image_mask, **native) -> LameOutput:
        if native:
            raise ValueError(
                "method 'latent' decodes step by step with fixed-size images only; "
                "native resolution serves the one-pass methods (lame, discriminative)"
            )
        return latent_forward(model, input_ids, attention_mask, pixel_values, image_mask)

    def bench_config(self, base, max_new_tokens: int):
        return replace(
            base, method=self.name, num_reason_tokens=base.num_reason_tokens or 8, bottleneck_mask=False
        )


METHOD = LatentMethod()
