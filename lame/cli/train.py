"""lame-train: both LaME stages (or one), with resume.

Several processes (one per GPU, or gloo on CPUs): ``torchrun --nproc_per_node N -m lame.cli.train
--data ... --out ...`` (this module is the entry point; ``lame.training.train`` is the library)."""

from __future__ import annotations

import json
from dataclasses import fields
from typing import Sequence

import click

from lame.backbones.directory import resolve_model_spec
from lame.cli import exit_with, int_list, invoke, require_train_extra, version_option
from lame.config import METHODS, LameConfig, load_preset, preset_names
from lame.device import PRECISIONS
from lame.methods import get_method
from lame.training.config import STAGES, TrainConfig


def build_configs(preset: str, overrides: dict) -> tuple[LameConfig, TrainConfig]:
    """Preset JSON + command-line overrides -> typed configs (the library never sees argv)."""
    spec = load_preset(preset)
    model = dict(spec.get("model", {}))
    method = overrides.get("method") or model.get("method", "lame")
    model["method"] = method
    get_method(method).cli_defaults(model)  # e.g. K=0 and no mask for a method without them
    for key in (
        "num_reason_tokens",
        "num_summary_tokens",
        "pooling",
        "bottleneck_mask",
        "embed_dim",
        "w_reconstruction",
        "w_diversity",
        "temperature",
        "max_new_tokens",
    ):
        if overrides.get(key) is not None:
            model[key] = overrides[key]
    if overrides.get("matryoshka"):
        model["matryoshka_dims"] = int_list(overrides["matryoshka"], "--matryoshka")
    if model.get("num_reason_tokens", 8) == 0 and overrides.get("bottleneck_mask") is None:
        model["bottleneck_mask"] = False  # K=0 is the discriminative baseline: nothing to route
    for key in ("resolution", "min_pixels", "max_pixels"):
        if overrides.get(key) is not None:
            model.setdefault("image", {})[key] = overrides[key]
    if overrides.get("latent_decoder"):
        from pathlib import Path

        model["latent_decoder"] = {
            "path": str(Path(overrides["latent_decoder"]).resolve()),
            "mode": overrides.get("latent_decoder_mode") or "frozen",
            "lora_rank": overrides.get("latent_decoder_lora_rank") or 8,
        }
    elif overrides.get("latent_decoder_mode") or overrides.get("latent_decoder_lora_rank"):
        raise ValueError("--latent-decoder-mode and --latent-decoder-lora-rank need --latent-decoder DIR")
    if overrides.get("backbone_path"):
        model.setdefault("backbone", {})["path"] = overrides["backbone_path"]
    # The backbone directory's architecture, tokenizer patch sizes and the resolution, checked
    # for the family before any weights load.
    model = resolve_model_spec(model, overrides.get("image_size"))
    if overrides.get("lora_targets"):
        targets = [t.strip() for t in overrides["lora_targets"].split(",") if t.strip()]
        overrides = {**overrides, "lora_targets": targets}
    # Flags only switch on; absent, the preset's value (or the default) stands.
    overrides = {
        **overrides,
        "final_eval": False if overrides.get("no_final_eval") else None,
        "grad_checkpointing": overrides.get("grad_checkpointing") or None,
    }
    train_spec = dict(spec.get("train", {}))
    names = {f.name for f in fields(TrainConfig)}
    train_spec.update({k: v for k, v in overrides.items() if k in names and v is not None})
    return LameConfig.from_dict(model), TrainConfig.from_dict(train_spec)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@version_option("lame-train")
@click.option(
    "--data",
    "data_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Dataset directory (train.jsonl, eval.jsonl, images/).",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Checkpoint directory to write (atomically replaced at each save).",
)
@click.option(
    "--preset",
    default="small",
    show_default=True,
    help=f"Named preset ({', '.join(preset_names())}) or a preset .json path.",
)
@click.option(
    "--stage",
    type=click.Choice(STAGES),
    default=None,
    help="warmup, joint, or all (warm-up then joint). Default: all.",
)
@click.option(
    "--init-from",
    type=click.Path(file_okay=False),
    default=None,
    help="Start from this checkpoint's weights (e.g. a warm-up run before --stage "
    "joint). With a --method other than the checkpoint's (e.g. an lm "
    "pre-training run), only its backbone is copied into a fresh model.",
)
@click.option("--max-steps", type=int, default=None, help="Total optimizer steps over the stages.")
@click.option(
    "--warmup-fraction",
    type=float,
    default=None,
    help="Share of --max-steps given to the warm-up stage when --stage all.",
)
@click.option("--batch-size", type=int, default=None, help="Rows per step (in-batch negatives).")
@click.option("--lr", type=float, default=None, help="Peak learning rate.")
@click.option(
    "--new-lr-scale",
    type=float,
    default=None,
    help="lr multiplier for parameters initialised here (latent tokens, heads, "
    "connector) next to a pretrained backbone.",
)
@click.option("--seed", type=int, default=None, help="Seed for init and batch order.")
@click.option(
    "--method",
    type=click.Choice(METHODS),
    default=None,
    help="lame (default), discriminative (K=0, VLM2Vec), cot (rationale then embed, "
    "UME-R1), latent (K sequential latent steps, Coconut), lm (generative "
    "pre-training: next-token loss on rationale + answer; an --init-from).",
)
@click.option(
    "--max-new-tokens",
    type=int,
    default=None,
    help="cot: rationale tokens generated per query at evaluation (default 128).",
)
@click.option(
    "--reason-tokens",
    "num_reason_tokens",
    type=int,
    default=None,
    help="K latent reason tokens; 0 = discriminative baseline.",
)
@click.option(
    "--summary-tokens",
    "num_summary_tokens",
    type=int,
    default=None,
    help="M summary tokens (the last is [EMBED]).",
)
@click.option(
    "--pooling",
    type=click.Choice(["embed", "attention"]),
    default=None,
    help="Embedding head pooling over the summary tokens.",
)
@click.option(
    "--bottleneck-mask/--no-bottleneck-mask",
    default=None,
    help="Summary tokens see the input only through the reason tokens.",
)
@click.option(
    "--w-reconstruction",
    type=float,
    default=None,
    help="Weight of the decoder-head loss (0 turns the decoder off).",
)
@click.option("--w-diversity", type=float, default=None, help="Weight of the diversity term.")
@click.option(
    "--latent-decoder",
    type=click.Path(file_okay=False),
    default=None,
    help="A local pretrained causal LM (Qwen3/Qwen2/Llama: config.json, safetensors, "
    "tokenizer.json) as the latent decoder instead of the small head: the K reason states, "
    "projected, are its prefix; it reconstructs the answer in its own tokenizer. Training "
    "only: checkpoints record its path and hash, never its weights.",
)
@click.option(
    "--latent-decoder-mode",
    type=click.Choice(["frozen", "lora", "full"]),
    default=None,
    help="How the --latent-decoder LM trains (default frozen; the projection always trains).",
)
@click.option("--latent-decoder-lora-rank", type=int, default=None, help="LoRA rank with mode lora (8).")
@click.option(
    "--decoder-rows",
    type=int,
    default=None,
    help="Reconstruction on the first N rows of each batch only (a budget knob for a costly "
    "latent decoder; default every row).",
)
@click.option(
    "--matryoshka",
    default=None,
    metavar="D1,D2,...,EMBED_DIM",
    help="Matryoshka dimensions, e.g. 32,64,128 (increasing, ending at embed_dim): "
    "InfoNCE on each prefix too; the artifact then serves each size.",
)
@click.option("--hard-negatives", type=int, default=None, help="Hard negatives per row (0-N).")
@click.option("--eval-every", type=int, default=None, help="Steps between quick evals (0: off).")
@click.option("--save-every", type=int, default=None, help="Steps between checkpoints.")
@click.option("--threads", type=int, default=None, help="torch CPU threads.")
@click.option(
    "--backbone-path",
    type=click.Path(file_okay=False),
    default=None,
    help="Local Hugging Face directory of the preset's family (Qwen2-VL, Qwen2.5-VL, "
    "Idefics3): its weights, its own tokenizer.json (plus LaME's special tokens) "
    "and its patch/merge sizes replace the preset's tiny model.",
)
@click.option(
    "--image-size",
    default=None,
    help="Fixed training/serving resolution HxW (e.g. 448x448); also the preset key "
    "image_size. Must suit the family (divisible by patch x merge; Idefics3: "
    "square).",
)
@click.option(
    "--resolution",
    type=click.Choice(["fixed", "native"]),
    default=None,
    help="fixed: every image resized to --image-size (static shapes; the default). native "
    "(Qwen-VL families, methods lame/discriminative): each image keeps its aspect ratio within "
    "--min-pixels/--max-pixels, several images and videos per row.",
)
@click.option(
    "--min-pixels", type=click.IntRange(min=1), default=None, help="Native resolution: least pixels."
)
@click.option(
    "--max-pixels", type=click.IntRange(min=1), default=None, help="Native resolution: most pixels."
)
@click.option(
    "--device",
    default="auto",
    show_default=True,
    help="auto, cpu, cuda or cuda:N (under torchrun, cuda = this process's GPU).",
)
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default=None,
    help="fp32 (default) or bf16 (autocast, float32 master weights).",
)
@click.option(
    "--grad-checkpointing",
    is_flag=True,
    default=None,
    help="Recompute backbone activations in backward (less memory, ~1/3 more time).",
)
@click.option(
    "--chunk-size",
    type=int,
    default=None,
    help="GradCache: embed the contrastive batch this many rows at a time (same loss "
    "and gradients, memory of one chunk).",
)
@click.option(
    "--max-batch-visual-tokens",
    type=click.IntRange(min=1),
    default=None,
    help="Cut each batch to at most this many visual tokens (after merging) over its queries, "
    "targets and hard negatives, keeping rows whole (images of varying sizes, videos); a row "
    "over it alone is an error naming it. Default: no limit.",
)
@click.option(
    "--lora-rank",
    type=int,
    default=None,
    help="LoRA rank on the language model (peft); 0 = full fine-tuning. Checkpoints hold merged weights.",
)
@click.option(
    "--lora-targets",
    default=None,
    help="Comma-separated language-model linear layers for LoRA (default q_proj,v_proj).",
)
@click.option(
    "--eval-limit", type=int, default=None, help="Evaluate on at most N eval rows (spread over the tasks)."
)
@click.option("--no-final-eval", is_flag=True, help="Skip the evaluation after training.")
@click.option("--resume", is_flag=True, help="Continue the checkpoint in --out after a kill.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def command(data_dir, out_dir, preset, init_from, resume, no_progress, device, **overrides) -> int:
    """Train a LaME model (warm-up, then joint optimisation) and print the final evaluation."""
    require_train_extra()
    from lame.training.train import train  # torch: imported for a run, not for --help

    model_config, train_config = build_configs(preset, overrides)
    # --init-from alone continues that checkpoint (its config); with --method, a checkpoint of
    # another method gives only its backbone.
    keep = init_from and not overrides.get("method")
    result = train(
        data_dir,
        out_dir,
        None if keep else model_config,
        train_config,
        resume=resume,
        init_from=init_from,
        show_progress=not no_progress,
        device=device,
    )
    summary = {k: result[k] for k in ("hit@1", "ndcg@5", "ndcg@10") if k in result}
    if "per_group" in result:
        summary["per_group"] = {g: v["hit@1"] for g, v in result["per_group"].items()}
    click.echo(json.dumps({"checkpoint": str(out_dir), **summary}))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return invoke(command, argv, "lame-train")


def run() -> None:
    exit_with(main)


if __name__ == "__main__":
    run()
