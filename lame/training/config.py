"""The settings of one training run (:class:`TrainConfig`), apart from the loop that runs it
(:mod:`lame.training.train`)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from lame.device import check_precision
from lame.training import lora

STAGES = ("warmup", "joint", "all")
# Options that change memory, speed or what is evaluated but not the trained weights' math: a
# resumed run takes them from the command line, everything else from the checkpoint.
RUNTIME_OPTIONS = ("grad_checkpointing", "chunk_size", "eval_limit", "final_eval", "threads")


@dataclass
class TrainConfig:
    stage: str = "all"  # warmup | joint | all (= warmup then joint)
    max_steps: int = 1500  # total optimizer steps over the stages run
    warmup_fraction: float = 0.2  # share of max_steps given to the warm-up stage with "all"
    batch_size: int = 64
    lr: float = 3e-4
    new_lr_scale: float = 1.0  # lr multiplier for parameters not in the pretrained backbone
    lr_warmup: float = 0.05  # share of each stage spent ramping the learning rate up
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    hard_negatives: int = 1
    seed: int = 0
    log_every: int = 10
    eval_every: int = 500  # 0 disables periodic evaluation
    eval_per_task: int = 20  # rows per task in periodic evaluation (final one uses all)
    save_every: int = 250
    threads: int | None = None
    precision: str = "fp32"  # fp32 | bf16 (autocast; float32 master weights)
    grad_checkpointing: bool = False  # recompute backbone activations in backward
    chunk_size: int | None = None  # GradCache: embed the batch this many rows at a time
    lora_rank: int = 0  # > 0: LoRA on the language model (peft), merged at save
    lora_targets: list[str] = field(default_factory=lambda: list(lora.DEFAULT_TARGETS))
    eval_limit: int | None = None  # evaluate on at most this many rows (spread over tasks)
    final_eval: bool = True  # evaluate on the eval split after training
    # At most this many visual tokens (after merging) per step, over the queries, targets and
    # hard negatives of a batch: batches are cut, whole rows at a time (lame.data.batching.BatchPlan).
    max_batch_visual_tokens: int | None = None
    decoder_rows: int | None = None  # reconstruction on the first N rows of each (per-process)
    # batch only: a budget knob for a costly latent decoder (None: every row)

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")
        check_precision(self.precision)
        self.lora_targets = list(self.lora_targets)
        limits = ("chunk_size", "eval_limit", "max_batch_visual_tokens", "decoder_rows")
        for name, value in ((name, getattr(self, name)) for name in limits):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.lora_rank < 0:
            raise ValueError(f"lora_rank must be >= 0 (0: no LoRA), got {self.lora_rank}")
        if self.max_steps < 1 or self.batch_size < 2:
            raise ValueError("max_steps must be >= 1 and batch_size >= 2 (in-batch negatives)")
        if not 0.0 <= self.warmup_fraction <= 1.0:
            raise ValueError("warmup_fraction must be within [0, 1]")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def stage_plan(self) -> list[tuple[str, int, int]]:
        """[(stage, first_step, end_step)] over global steps."""
        if self.stage != "all":
            return [(self.stage, 0, self.max_steps)]
        warm = round(self.max_steps * self.warmup_fraction)
        plan = [("warmup", 0, warm), ("joint", warm, self.max_steps)]
        return [p for p in plan if p[2] > p[1]]
