"""Generative pre-training (``--method lm``): next-token loss on the row's "rationale . answer"
given its query (image, text or both); no latent tokens, no contrastive loss, no target side.

Its checkpoint is a backbone that can write the reasoning, the premise LaME's decoder head
distils from: ``lame-train --init-from LM_CKPT --method lame`` copies the backbone tensors into
a fresh model of the requested method. Its embedding ([EMBED] after the input, one pass) is
untrained, so the trainer does not score it by retrieval; ``lame-eval --generate N`` scores
what it writes.
"""

from __future__ import annotations

import torch

from lame.methods.base import Method
from lame.methods.decoding import teacher_forced


class LmMethod(Method):
    name = "lm"
    summary = "generative pre-training: next-token loss on rationale + answer, no embedding"
    writes_text = True
    contrastive = False
    retrieval = False
    chunkable = False  # GradCache splits a contrastive batch; lm has none

    def stage_plan(self, train_config) -> list[tuple[str, int, int]]:
        # The warm-up freezes the backbone, which is all a generative pre-training trains: the
        # whole run is one joint stage, however it was asked for (a continued lm checkpoint
        # keeps its method without --method, so the preset's "all" must not apply).
        if train_config.stage == "warmup":
            raise ValueError(
                "method 'lm' has no warm-up stage (it trains only the backbone, "
                "which the warm-up freezes); use --stage joint"
            )
        return [("joint", 0, train_config.max_steps)]

    def generative_losses(self, model, batch: dict) -> dict[str, torch.Tensor]:
        _, lm_loss = teacher_forced(model, batch["query"], batch["rationale"], with_summary=False)
        return {"lm": lm_loss, "total": model.config.w_lm * lm_loss}

    def query_pass(self, model, batch: dict):
        raise NotImplementedError("method 'lm' has no contrastive query pass")


METHOD = LmMethod()
