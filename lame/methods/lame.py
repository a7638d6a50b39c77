"""LaME: K learned reason tokens + M summary tokens appended to the input, one forward pass;
the decoder head reconstructs the answer from the reason states, and with the bottleneck mask
[EMBED] sees the input only through them."""

from __future__ import annotations

from dataclasses import replace

from lame.methods.base import APPENDED, Method


class LameMethod(Method):
    name = "lame"
    summary = "K reason tokens + [EMBED] in one pass, decoder head on the reason states"
    reason_tokens = APPENDED
    bottleneck = True
    diversity = True

    def cli_defaults(self, model) -> None:
        pass  # the preset's K and mask stand

    def bench_config(self, base, max_new_tokens: int):
        return replace(
            base, method=self.name, num_reason_tokens=base.num_reason_tokens or 8, bottleneck_mask=True
        )


METHOD = LameMethod()
