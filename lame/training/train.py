"""Both training stages in one loop.

* warm-up: vision encoder and language model frozen; reason tokens, summary tokens and both heads
  learn to use the (frozen) backbone.
* joint: everything trains; contrastive on [EMBED] plus reconstruction and diversity.

Each stage gets its own AdamW (different parameter sets) with linear warm-up + cosine decay.
Batches are a pure function of (seed, global step), and checkpoints carry optimizer moments and
the torch CPU/CUDA RNG states, so ``resume=True`` after a kill reproduces the uninterrupted run.

Scale (see docs/training.md): ``device`` (batches are built on the CPU and moved once per step),
``precision="bf16"`` (autocast, float32 master weights), ``grad_checkpointing``, ``chunk_size``
(GradCache, :mod:`lame.training.gradcache`) and ``lora_rank`` (:mod:`lame.training.lora`; checkpoints hold merged
weights). Launch several processes with ``torchrun -m lame.cli.train``.
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from lame.checkpoint import (
    CheckpointError,
    check_replaceable,
    load_model,
    load_trainer_state,
    read_json,
    read_metrics,
    read_trainer_tensors,
    resolve,
    save_checkpoint,
)
from lame.config import LameConfig
from lame.data.batching import BatchPlan, Collator, row_costs
from lame.data.dataset import check_fixed_size, load_eval, load_train
from lame.device import autocast, resolve_device, to_device
from lame.evaluation.evaluate import evaluate, limit_rows, subsample
from lame.methods import get_method
from lame.training import distributed as ddp
from lame.training import lora
from lame.training.config import RUNTIME_OPTIONS, TrainConfig
from lame.training.gradcache import chunked_backward
from lame.training.objective import compute_losses


def set_trainable(model, stage: str) -> list[torch.nn.Parameter]:
    """Freeze the backbone's pretrained towers for warm-up (a randomly initialised connector
    still trains); train everything in the joint stage -- with LoRA, the adapters instead of
    the backbone's own weights (latent tokens, heads and connector always train)."""
    adapted = lora.has_lora(model)
    for param in model.parameters():
        param.requires_grad_(True)
    if stage == "warmup" or adapted:
        for name, param in model.backbone.named_parameters():
            param.requires_grad_(stage != "warmup" and lora.is_adapter_parameter(name))
        for param in model.backbone.connector_parameters():  # new glue, e.g. lame-small's projector
            param.requires_grad_(True)
    if hasattr(model.decoder_head, "apply_mode"):  # a pretrained latent decoder: by its own mode
        model.decoder_head.apply_mode()
    return [p for p in model.parameters() if p.requires_grad]


def learning_rate(cfg: TrainConfig, step: int, first: int, end: int) -> float:
    total = end - first
    ramp = max(1, round(total * cfg.lr_warmup))
    local = step - first
    if local < ramp:
        return cfg.lr * (local + 1) / ramp
    progress = (local - ramp) / max(1, total - ramp)
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def _optimizer(model, params: list[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    # Decay matrices only; not biases/norms, and not the latent tokens, which decay would pull
    # towards the zero vector (a token that carries nothing).
    latent = {id(model.reason_tokens), id(model.summary_tokens)}
    # Pretrained towers vs parameters initialised here (latent tokens, heads, connector): the
    # latter may learn faster (new_lr_scale) -- with few steps on a pretrained backbone they
    # otherwise barely leave their random init.
    pretrained = {id(p) for p in model.backbone.parameters()} - {
        id(p) for p in model.backbone.connector_parameters()
    }
    if hasattr(model.decoder_head, "pretrained_parameters"):  # a fully trained latent decoder LM
        pretrained |= {id(p) for p in model.decoder_head.pretrained_parameters()}
    groups = []
    for is_new, scale in ((False, 1.0), (True, cfg.new_lr_scale)):
        part = [p for p in params if (id(p) not in pretrained) == is_new]
        decay = [p for p in part if p.ndim >= 2 and id(p) not in latent]
        decay_ids = {id(p) for p in decay}
        rest = [p for p in part if id(p) not in decay_ids]
        groups += [
            {"params": decay, "weight_decay": cfg.weight_decay, "lr_scale": scale},
            {"params": rest, "weight_decay": 0.0, "lr_scale": scale},
        ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr)


class Trainer:
    def __init__(
        self,
        model,
        cfg: TrainConfig,
        data_dir: Path,
        out_dir: Path,
        show_progress: bool = True,
        device: str | torch.device = "cpu",
        decoder_state: Path | None = None,
    ):
        """``decoder_state``: a checkpoint whose latent-decoder state (projection, adapters)
        a pretrained latent decoder starts from (a resumed or continued run)."""
        self.model, self.cfg, self.out_dir = model, cfg, Path(out_dir)
        self.device = resolve_device(device)
        method = get_method(model.config.method)
        if cfg.chunk_size and not method.chunkable:
            raise ValueError(
                f"chunk_size (GradCache) does not cover method {method.name!r}; train it without --chunk-size"
            )
        self.plan = method.stage_plan(cfg)  # the method's stages (lm: joint only)
        if cfg.lora_rank:
            lora.apply_lora(model, cfg.lora_rank, cfg.lora_targets)
        if model.config.latent_decoder is not None and model.decoder_head is None:
            from lame.decoders import lm as lm_decoder

            lm_decoder.attach(model, decoder_state)
        if cfg.grad_checkpointing:
            model.backbone.enable_gradient_checkpointing()
            if hasattr(model.decoder_head, "enable_gradient_checkpointing"):
                model.decoder_head.enable_gradient_checkpointing()
        model.to(self.device)
        self.autocast = functools.partial(autocast, self.device, cfg.precision)
        self.rows = load_train(data_dir)
        if len(self.rows) < cfg.batch_size:
            raise ValueError(
                f"{data_dir} has {len(self.rows)} training rows, fewer than batch_size={cfg.batch_size}"
            )
        eval_path = Path(data_dir) / "eval.jsonl"
        self.eval_rows = load_eval(data_dir) if eval_path.is_file() else []
        image = model.preprocessor.image
        if not image.native:
            # Several images or a video per item need native resolution; say which row, now.
            check_fixed_size(self.rows)
            check_fixed_size(self.eval_rows)
            # Decoded fixed-size images are reused across steps; native ones are not cached.
            model.preprocessor.image_cache = {}
        self.plan_batches = self._batch_plan(image)
        if method.needs_rationale and not any(row.rationale for row in self.rows):
            raise ValueError(
                f"method {method.name!r} trains on rationales, and {data_dir}/"
                'train.jsonl has none (add a "rationale" field to the rows)'
            )
        self.collate = Collator(
            model.preprocessor,
            model.config.max_answer_tokens,
            cfg.hard_negatives,
            model.config.max_rationale_tokens if method.writes_text else 0,
            decoder_rows=cfg.decoder_rows,
            answer_encoder=getattr(model.decoder_head, "encode_answers", None),
            answer_ignore=getattr(model.decoder_head, "ignore_index", None),
        )
        # A method without a retrieval embedding (lm pre-training) is not scored by retrieval:
        # lame-eval --generate scores what it writes.
        self.retrieval = method.retrieval
        self.metrics: list[dict[str, Any]] = []
        self.show_progress = show_progress

    def _batch_plan(self, image) -> BatchPlan:
        budget = self.cfg.max_batch_visual_tokens
        if budget is None:
            return BatchPlan(len(self.rows), self.cfg.batch_size, self.cfg.seed)
        if ddp.world_size() > 1:
            raise ValueError(
                "max_batch_visual_tokens gives batches of varying sizes, which several processes "
                "cannot share evenly yet; train in one process or leave it unset"
            )
        costs = row_costs(self.rows, image, self.cfg.hard_negatives, budget)
        return BatchPlan(len(self.rows), self.cfg.batch_size, self.cfg.seed, costs, budget)

    # ------------------------------------------------------------------ loop
    def run(self, start_step: int = 0) -> dict[str, Any]:
        for stage, first, end in self.plan:
            if end > start_step:
                self._run_stage(stage, first, end, max(first, start_step))
        final = {}
        if self.cfg.final_eval and self.eval_rows and self.retrieval and ddp.is_main():
            final = self.evaluate(full=True)
        if final:
            self.metrics.append({"step": self.cfg.max_steps, "stage": "final", "eval": final})
        self.save(self.plan[-1][0], self.cfg.max_steps, done=True, optimizer=None)
        return final

    def _run_stage(self, stage: str, first: int, end: int, start: int) -> None:
        params = set_trainable(self.model, stage)
        optimizer = _optimizer(self.model, params, self.cfg)
        if start > first:  # resuming inside this stage
            load_trainer_state(self.out_dir, optimizer)
        self.model.train()
        bar = _progress(range(start, end), stage, self.show_progress and ddp.is_main())
        tick = time.perf_counter()
        for step in bar:
            lr = learning_rate(self.cfg, step, first, end)
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            losses = self._step(step, params, optimizer)
            if (step + 1) % self.cfg.log_every == 0 or step + 1 == end:
                now = time.perf_counter()
                self._log(step + 1, stage, lr, losses, now - tick)
                tick = now
                if hasattr(bar, "set_postfix"):
                    bar.set_postfix(loss=f"{losses['total']:.3f}", lr=f"{lr:.1e}")
            if (
                self.cfg.eval_every
                and (step + 1) % self.cfg.eval_every == 0
                and self.eval_rows
                and self.retrieval
                and ddp.is_main()
            ):
                self.metrics.append({"step": step + 1, "stage": stage, "eval": self.evaluate()})
                self.model.train()
            if (self.cfg.save_every and (step + 1) % self.cfg.save_every == 0) or step + 1 == end:
                self.save(stage, step + 1, done=False, optimizer=optimizer)

    def _step(self, step: int, params, optimizer) -> dict[str, float]:
        idx = self.plan_batches(step)
        rows = [self.rows[i] for i in idx]
        share = ddp.local_slice(len(rows))  # the whole batch in a single process
        batch = to_device(
            self.collate(rows[share], global_rows=rows, offset=share.start), self.device
        )  # built on the CPU, moved once
        optimizer.zero_grad(set_to_none=True)
        if self.cfg.chunk_size and self.cfg.chunk_size < len(batch["same_answer"]):
            losses = chunked_backward(self.model, batch, self.cfg.chunk_size, self.autocast)
        else:
            with self.autocast():
                losses = compute_losses(self.model, batch)
            losses["total"].backward()
        if not torch.isfinite(losses["total"]):
            raise FloatingPointError(f"non-finite loss at step {step}: {losses}")
        ddp.average_gradients(params)
        torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        optimizer.step()
        return ddp.average_scalars({k: float(v.detach()) for k, v in losses.items()})

    def _log(self, step: int, stage: str, lr: float, losses: dict[str, float], seconds: float) -> None:
        steps = min(self.cfg.log_every, step) or 1
        self.metrics.append(
            {
                "step": step,
                "stage": stage,
                "lr": lr,
                **losses,
                "steps_per_s": round(steps / max(seconds, 1e-9), 3),
            }
        )

    def evaluate(self, full: bool = False) -> dict[str, Any]:
        rows = self.eval_rows if full else subsample(self.eval_rows, self.cfg.eval_per_task)
        rows = limit_rows(rows, self.cfg.eval_limit)
        with self.autocast():
            return evaluate(
                self.model.encode,
                rows,
                encode_target=functools.partial(self.model.encode_documents, instruction=""),
                progress=self.show_progress,
            )

    def save(self, stage: str, step: int, done: bool, optimizer) -> None:
        """Rank 0 writes; the others wait so nobody runs ahead of a checkpoint."""
        if ddp.is_main():
            self._save(stage, step, done, optimizer)
        ddp.barrier()

    def _save(self, stage: str, step: int, done: bool, optimizer) -> None:
        meta = {
            "stage": stage,
            "step": step,
            "done": done,
            "max_steps": self.cfg.max_steps,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        last_eval = next((m["eval"] for m in reversed(self.metrics) if "eval" in m), None)
        if last_eval:
            meta["eval"] = {k: last_eval[k] for k in ("hit@1", "ndcg@5", "ndcg@10")}
        adapted = lora.has_lora(self.model)  # merged weights + what an exact resume needs
        save_checkpoint(
            self.out_dir,
            self.model,
            asdict(self.cfg),
            meta,
            self.metrics,
            optimizer,
            extra_files=lambda d: self._extra_files(d, done),
            weights=lora.merged_state_dict(self.model) if adapted else None,
            resume_tensors=lora.resume_tensors(self.model) if adapted else None,
        )

    def _extra_files(self, directory: Path, done: bool) -> None:
        from lame_runtime.persist import atomic_write_json

        atomic_write_json(directory / "instructions.json", self._instructions())
        if done:
            from lame.evaluation.plots import plot_training

            plot_training(self.metrics, directory / "training_curves.png")

    def _instructions(self) -> dict[str, Any]:
        """The query instructions the model was trained with, per direction ("text->image",
        "image->text", ...) and per task; "query" only when every row used the same one
        (never a majority vote). The runtime picks from these (lame_runtime.inputs.instructions)."""
        from lame_runtime.inputs.instructions import modality, summarise

        return summarise(
            (
                modality(row.query.text, row.query.visual or None),
                modality(row.target.text, row.target.visual or None),
                row.task,
                row.instruction,
            )
            for row in self.rows
        )


def _progress(steps, stage: str, enabled: bool):
    if not enabled:
        return steps
    from tqdm.auto import tqdm

    return tqdm(steps, desc=f"{stage}", unit="step", dynamic_ncols=True)


def train(
    data_dir: str | Path,
    out_dir: str | Path,
    model_config: LameConfig | None,
    train_config: TrainConfig,
    resume: bool = False,
    init_from: str | Path | None = None,
    show_progress: bool = True,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Train (or resume) into ``out_dir`` on ``device`` (auto/cpu/cuda/cuda:N); returns the
    final evaluation (percent metrics)."""
    if train_config.threads:
        torch.set_num_threads(train_config.threads)
    device = resolve_device(device)  # a missing GPU is one clear error, before any work
    if model_config is not None and model_config.latent_decoder is not None:
        from lame.decoders.lm import check_decoder_dir

        check_decoder_dir(model_config.latent_decoder.path)  # before anything is written
    ddp.setup(device)  # joins the process group only when launched by torchrun
    out_dir = Path(out_dir)
    if resume and _has_checkpoint(out_dir):
        return _resume(data_dir, out_dir, train_config, show_progress, device)
    if _has_checkpoint(out_dir) and not resume:
        raise FileExistsError(
            f"{out_dir} already holds a checkpoint; pass resume=True "
            "(--resume) to continue it, or choose another output directory"
        )
    check_replaceable(out_dir, "meta.json")  # fail now, not at the first save
    torch.manual_seed(train_config.seed)
    if init_from is not None:
        model = load_model(init_from)
        if model_config is not None and model_config.method != model.config.method:
            # Another method's checkpoint (e.g. lm pre-training): its backbone, a fresh rest.
            model = model_from_backbone(model, model_config)
        elif model_config is not None and model_config.to_dict() != model.config.to_dict():
            warnings.warn(f"init_from={init_from}: using that checkpoint's model config", stacklevel=2)
    else:
        if model_config is None:
            raise ValueError("model_config is required unless init_from is given")
        from lame.backbones.directory import with_backbone_dir
        from lame.model import LameModel
        from lame.tokenizer import preprocessor_for

        model_config = with_backbone_dir(model_config)
        model = LameModel(model_config, preprocessor_for(data_dir, model_config))
    trainer = Trainer(
        model,
        train_config,
        Path(data_dir),
        out_dir,
        show_progress,
        device,
        decoder_state=Path(init_from) if init_from is not None else None,  # used if it has one
    )
    ddp.broadcast_parameters(trainer.model)  # on the device: NCCL broadcasts GPU tensors
    return trainer.run()


def model_from_backbone(source, config: LameConfig):
    """A fresh model of ``config``'s method whose backbone tensors are copied from ``source``
    (a model of another method). The backbone architecture, image settings and tokenizer are
    the source's (they define the copied tensors); the rest of ``config`` (method, K, M,
    heads, loss weights) is the request's, freshly initialised."""
    from dataclasses import replace

    from lame.backbones import architecture_only
    from lame.model import LameModel

    config = replace(
        config,
        backbone=source.config.backbone,
        image=source.config.image,
        max_text_tokens=source.config.max_text_tokens,
    )
    config.validate()
    with architecture_only():  # the source's weights replace any packaged pretrained ones
        model = LameModel(config, source.preprocessor)
    copy_backbone(source, model)
    return model


def copy_backbone(source, target) -> None:
    """Copy every backbone tensor of ``source`` into ``target`` (exact values); a missing,
    extra or differently shaped tensor is a CheckpointError naming them."""
    have, want = source.backbone.state_dict(), target.backbone.state_dict()
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    wrong = [
        f"{k} {tuple(have[k].shape)} vs {tuple(want[k].shape)}"
        for k in sorted(set(have) & set(want))
        if have[k].shape != want[k].shape
    ]
    if missing or extra or wrong:
        detail = "; ".join(
            f"{label}: {names[:4]}{' ...' if len(names) > 4 else ''}"
            for label, names in (("missing", missing), ("unexpected", extra), ("shape mismatch", wrong))
            if names
        )
        raise CheckpointError(f"the init checkpoint's backbone does not fit the requested model ({detail})")
    with torch.no_grad():
        for name, tensor in want.items():
            tensor.copy_(have[name])


def _has_checkpoint(out_dir: Path) -> bool:
    try:
        return (resolve(out_dir) / "meta.json").is_file()
    except CheckpointError:
        return False


def _resume(data_dir, out_dir: Path, requested: TrainConfig, show_progress: bool, device: torch.device):
    meta = read_json(out_dir, "meta.json")
    saved = TrainConfig.from_dict(read_json(out_dir, "train_config.json"))
    runtime = {k: getattr(requested, k) for k in RUNTIME_OPTIONS}
    changed = sorted(
        k for k, v in asdict(requested).items() if k not in RUNTIME_OPTIONS and asdict(saved)[k] != v
    )
    if changed:
        warnings.warn(
            f"resuming with the checkpoint's own training config; ignoring changed options {changed}",
            stacklevel=2,
        )
    saved = TrainConfig.from_dict({**asdict(saved), **runtime})
    if meta.get("done"):
        return meta.get("eval", {})
    model = load_model(out_dir)  # merged weights; LoRA's own state is restored below
    trainer = Trainer(model, saved, Path(data_dir), out_dir, show_progress, device, decoder_state=out_dir)
    if saved.lora_rank:
        lora.restore_resume_tensors(trainer.model, read_trainer_tensors(out_dir))
    trainer.metrics = read_metrics(out_dir)
    if meta["step"] > 0:
        load_trainer_state(out_dir, None)  # restores the RNG even at a stage boundary
    return trainer.run(start_step=meta["step"])
