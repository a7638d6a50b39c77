"""lame-data: build bundled datasets (the digits reasoning benchmark) and convert external
benchmarks (MMEB-v2 task files, MRMR/BEIR directories) into the LaME eval format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import click

from lame.cli import exit_with, invoke, version_option


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@version_option("lame-data")
def command() -> None:
    """Build datasets in the LaME directory format."""


@command.command("digits")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for split and sampling.")
@click.option(
    "--train-images",
    type=int,
    default=6000,
    show_default=True,
    help="Composite training images (each yields several rows).",
)
@click.option(
    "--eval-per-task", type=int, default=60, show_default=True, help="Eval queries per task (14 tasks)."
)
@click.option(
    "--candidates", type=int, default=50, show_default=True, help="Candidates per eval query (1 positive)."
)
@click.option(
    "--vocab-size",
    type=int,
    default=512,
    show_default=True,
    help="BPE vocabulary size of the tokenizer trained on the data.",
)
@click.option(
    "--t2i-answer",
    type=click.Choice(["statement", "reasoning"]),
    default="statement",
    show_default=True,
    help="Decoder-head target of text->image rows: the query statement (a copy task) "
    "or the positive image's digits and derived quantity (its rationale).",
)
@click.option(
    "--glyphs",
    type=click.Choice(["handwritten", "rendered"]),
    default="handwritten",
    show_default=True,
    help="Digit source: scikit-learn's 8x8 handwriting, or jittered renders of 7 fonts "
    "bundled with matplotlib (the perception-solved variant).",
)
@click.option(
    "--val-per-task",
    type=int,
    default=0,
    show_default=True,
    help="Also write val.jsonl with this many queries per task, over extra images "
    "composed from training samples (choose variants on it, not on eval).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing dataset directory.")
def digits(
    out_dir,
    seed,
    train_images,
    eval_per_task,
    candidates,
    vocab_size,
    t2i_answer,
    glyphs,
    val_per_task,
    overwrite,
) -> int:
    """Digits reasoning benchmark (scikit-learn's handwritten digits, or rendered fonts)."""
    from lame.data.dataset import iter_texts
    from lame.data.digits import build_digits
    from lame.tokenizer import train_tokenizer
    from lame_runtime.inputs.preprocess import TOKENIZER_FILE

    summary = build_digits(
        out_dir,
        seed=seed,
        n_train_images=train_images,
        eval_per_task=eval_per_task,
        n_candidates=candidates,
        overwrite=overwrite,
        progress=lambda msg: click.echo(msg, err=True),
        t2i_answer=t2i_answer,
        glyphs=glyphs,
        val_per_task=val_per_task,
    )
    tokenizer = train_tokenizer(iter_texts(out_dir), vocab_size=vocab_size)
    tokenizer.save(str(Path(out_dir) / TOKENIZER_FILE))
    click.echo(json.dumps(summary))
    return 0


def _converter_options(func):
    """Options every converter shares: where to write and what to do with an existing eval."""
    func = click.option("--overwrite", is_flag=True, help="Replace an existing eval.jsonl in OUT.")(func)
    func = click.option("--append", is_flag=True, help="Add the task to an existing eval.jsonl in OUT.")(func)
    func = click.option(
        "--task", default=None, help="Task name for the rows [default: the input's file/dir name]."
    )(func)
    return click.option(
        "--out",
        "out_dir",
        required=True,
        type=click.Path(file_okay=False),
        help="Dataset directory to write (eval.jsonl + images/).",
    )(func)


def _report(summary: dict) -> int:
    for warning in summary.get("warnings", []):
        click.echo(f"lame-data: warning: {warning}", err=True)
    click.echo(json.dumps(summary))
    return 0


@command.command("mmeb")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--image-root",
    required=True,
    type=click.Path(file_okay=False),
    help="Directory the rows' image and video paths (qry_img_path, tgt_img_path, qry_video_path, "
    "tgt_video_path) are relative to.",
)
@click.option(
    "--family",
    type=click.Choice(["image", "visdoc", "video"]),
    default="image",
    show_default=True,
    help="image and video tasks report hit@1, visdoc tasks NDCG@5; video reads qry_video_path / "
    "tgt_video_path (a video file or a folder of frames each).",
)
@_converter_options
def mmeb(file, image_root, family, out_dir, task, append, overwrite) -> int:
    """One MMEB-v2 task file (.jsonl, or a .json array) -> eval rows; first target positive."""
    from lame.data.external import convert_mmeb

    return _report(
        convert_mmeb(file, image_root, out_dir, task=task, family=family, append=append, overwrite=overwrite)
    )


@command.command("mrmr")
@click.argument("src_dir", type=click.Path(file_okay=False))
@click.option(
    "--image-root",
    default=None,
    type=click.Path(file_okay=False),
    help="Directory image paths are relative to [default: SRC_DIR].",
)
@_converter_options
def mrmr(src_dir, image_root, out_dir, task, append, overwrite) -> int:
    """MRMR/BEIR directory (queries.jsonl, corpus.jsonl, qrels) -> eval rows scored by NDCG@10."""
    from lame.data.external import convert_mrmr

    return _report(
        convert_mrmr(src_dir, out_dir, task=task, image_root=image_root, append=append, overwrite=overwrite)
    )


def main(argv: Sequence[str] | None = None) -> int:
    return invoke(command, argv, "lame-data")


def run() -> None:
    exit_with(main)


if __name__ == "__main__":
    run()
