"""The explicit chain-of-thought baseline (UME-R1 style): the model writes a rationale and the
answer (greedy, KV cache), then an [EMBED] token placed after the generated text gives the
embedding. Trained with next-token loss on "rationale . answer" (teacher forcing) plus the
contrastive loss on [EMBED]."""

from __future__ import annotations

from lame.methods.base import LameOutput, Method
from lame.methods.decoding import Generation, greedy_generate, teacher_forced


def cot_generate(
    model, input_ids, attention_mask, pixel_values, image_mask, max_new_tokens: int, stop_at_eos: bool = True
) -> Generation:
    """Greedy rationale with a KV cache, then [EMBED] after the generated text."""
    return greedy_generate(
        model, input_ids, attention_mask, pixel_values, image_mask, max_new_tokens, stop_at_eos
    )


def cot_teacher_forced(model, feed: dict, rationale: dict) -> tuple[LameOutput, object]:
    """Input, reference "rationale . answer" tokens, then [EMBED] -> (output, next-token loss)."""
    return teacher_forced(model, feed, rationale, with_summary=True)


class CotMethod(Method):
    name = "cot"
    summary = "generate a rationale, then embed (UME-R1)"
    writes_text = True
    needs_rationale = True
    chunkable = False  # the teacher-forced query pass is not chunked
    generates_query = True

    def encode_query(self, model, tensors) -> LameOutput:
        return model.generate_and_embed(**tensors)

    def query_pass(self, model, batch: dict):
        output, lm_loss = cot_teacher_forced(model, batch["query"], batch["rationale"])
        return output, {"lm": lm_loss}

    def extra_weights(self, config) -> dict[str, float]:
        return {"lm": config.w_lm}

    def bench_embed(self, model, tensors, max_new_tokens: int):
        return lambda: (
            model.generate_and_embed(**tensors, max_new_tokens=max_new_tokens, stop_at_eos=False).embedding
        )


METHOD = CotMethod()
