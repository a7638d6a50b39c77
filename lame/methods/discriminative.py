"""The discriminative baseline (VLM2Vec style): input + [EMBED], K=0, one pass."""

from __future__ import annotations

from lame.methods.base import Method


class DiscriminativeMethod(Method):
    name = "discriminative"
    summary = "K=0, [EMBED] only (VLM2Vec)"


METHOD = DiscriminativeMethod()
