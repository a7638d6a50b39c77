"""What every method shares: the output type and the :class:`Method` interface.

A method says how a query is embedded (one pass, latent steps, generate then embed), what its
training pass over the query side is, and which configurations it accepts. The model
(:mod:`lame.model`), the objective, the trainer and the benchmark ask the method; none of them
branches on a method's name. Nothing here imports :mod:`lame.model`: a method receives the model
as an argument, so the import graph has no cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # annotations only: the registry and the CLIs' --help stay torch-free
    import torch


@dataclass
class LameOutput:
    embedding: torch.Tensor  # [B, D], unit norm
    reason_states: torch.Tensor  # [B, K, H]
    summary_states: torch.Tensor  # [B, M, H]


# How a method uses num_reason_tokens (K).
NO_REASON = "none"  # K must be 0 (discriminative, cot, lm)
APPENDED = "appended"  # K learned tokens appended to the input (LaME)
LATENT_STEPS = "steps"  # K sequential latent steps fed back as inputs (Coconut)


class Method:
    """Defaults: a one-pass embedding model trained with the contrastive objective."""

    name = ""
    summary = ""  # one line for --help
    reason_tokens = NO_REASON
    bottleneck = False  # may use the bottleneck mask
    diversity = False  # the diversity term applies to its reason states
    writes_text = False  # trains on "rationale . answer" tokens (Collator builds them)
    needs_rationale = False  # refuses a dataset without rationales
    chunkable = True  # GradCache (--chunk-size) covers its training pass
    contrastive = True  # trained with the contrastive objective (else generative only)
    retrieval = True  # evaluated by retrieval (hit@1, NDCG)
    generates_query = False  # encode(role="query") writes text before embedding

    # ---------------------------------------------------------------- configuration
    def validate(self, config) -> None:
        """Raise ValueError for a configuration this method cannot run."""
        if config.bottleneck_mask and not self.bottleneck:
            raise ValueError(f"method {self.name!r} has no bottleneck: set bottleneck_mask=false")
        if self.reason_tokens == NO_REASON and config.num_reason_tokens:
            raise ValueError(f"method {self.name!r} appends no reason tokens: set num_reason_tokens=0")

    def cli_defaults(self, model: dict[str, Any]) -> None:
        """Adjust a preset's model section for this method before command-line overrides."""
        if self.reason_tokens == NO_REASON:
            model["num_reason_tokens"] = 0  # the method's definition: no reason tokens appended
        if not self.bottleneck:
            model["bottleneck_mask"] = False

    def stage_plan(self, train_config) -> list[tuple[str, int, int]]:
        """[(stage, first_step, end_step)] this method trains under ``train_config``: by
        default the requested stage(s), a warm-up (backbone frozen) then joint."""
        return train_config.stage_plan()

    def appended_reason_tokens(self, config) -> int:
        return config.num_reason_tokens if self.reason_tokens == APPENDED else 0

    def uses_decoder(self, config) -> bool:
        return self.reason_tokens == APPENDED and config.num_reason_tokens > 0 and config.w_reconstruction > 0

    # ---------------------------------------------------------------- inference
    def forward(self, model, input_ids, attention_mask, pixel_values, image_mask, **native) -> LameOutput:
        """One pass over input + K appended reason + M summary tokens."""
        length = input_ids.shape[1]
        hidden = model.hidden_states(input_ids, attention_mask, pixel_values, image_mask, **native)
        k = model.config.appended_reason_tokens
        reason, summary = hidden[:, length : length + k], hidden[:, length + k :]
        if not model.config.num_summary_tokens:  # last-token pooling: the input's last state
            summary = hidden[:, length - 1 : length]  # (rows are left-padded)
        return LameOutput(model.embed_head(summary), reason, summary)

    def encode_query(self, model, tensors: dict[str, torch.Tensor]) -> LameOutput:
        return model(**tensors)

    # ---------------------------------------------------------------- training
    def query_pass(self, model, batch: dict) -> tuple[LameOutput, dict[str, torch.Tensor]]:
        """The query side's training pass -> (output, extra unweighted loss terms)."""
        return model(**batch["query"]), {}

    def extra_weights(self, config) -> dict[str, float]:
        """Weights of the extra terms :meth:`query_pass` returns."""
        return {}

    def generative_losses(self, model, batch: dict) -> dict[str, torch.Tensor]:
        """The whole loss of a method with ``contrastive = False``."""
        raise NotImplementedError(f"method {self.name!r} is trained contrastively")

    # ---------------------------------------------------------------- benchmark
    def bench_config(self, base, max_new_tokens: int):
        """The benchmark's configuration of this method on ``base``'s backbone."""
        return replace(
            base, method=self.name, num_reason_tokens=0, bottleneck_mask=False, max_new_tokens=max_new_tokens
        )

    def bench_embed(self, model, tensors: dict[str, torch.Tensor], max_new_tokens: int) -> Callable[[], Any]:
        return lambda: model(**tensors).embedding
