"""lame-data: build bundled datasets (the digits reasoning benchmark)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import click

from lame.cli import exit_with, invoke


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def command() -> None:
    """Build datasets in the LaME directory format."""


@command.command("digits")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for split and sampling.")
@click.option("--train-images", type=int, default=6000, show_default=True,
              help="Composite training images (each yields several rows).")
@click.option("--eval-per-task", type=int, default=60, show_default=True,
              help="Eval queries per task (14 tasks).")
@click.option("--candidates", type=int, default=50, show_default=True,
              help="Candidates per eval query (1 positive).")
@click.option("--vocab-size", type=int, default=512, show_default=True,
              help="BPE vocabulary size of the tokenizer trained on the data.")
@click.option("--overwrite", is_flag=True, help="Replace an existing dataset directory.")
def digits(out_dir, seed, train_images, eval_per_task, candidates, vocab_size, overwrite) -> int:
    """Digits reasoning benchmark from scikit-learn's 1,797 real handwritten digits."""
    from lame.data.dataset import iter_texts
    from lame.data.digits import build_digits
    from lame.tokenizer import train_tokenizer

    summary = build_digits(out_dir, seed=seed, n_train_images=train_images,
                           eval_per_task=eval_per_task, n_candidates=candidates,
                           overwrite=overwrite, progress=lambda msg: click.echo(msg, err=True))
    tokenizer = train_tokenizer(iter_texts(out_dir), vocab_size=vocab_size)
    tokenizer.save(str(Path(out_dir) / "tokenizer.json"))
    click.echo(json.dumps(summary))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return invoke(command, argv, "lame-data")


def run() -> None:
    exit_with(main)


if __name__ == "__main__":
    run()
