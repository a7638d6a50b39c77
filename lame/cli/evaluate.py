"""lame-eval: retrieval metrics of a checkpoint on a dataset's eval split, as one JSON object."""
from __future__ import annotations

import functools
import json
from typing import Sequence

import click

from lame.cli import exit_with, invoke


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--ckpt", required=True, type=click.Path(file_okay=False),
              help="Checkpoint directory written by lame-train.")
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False),
              help="Dataset directory holding eval.jsonl.")
@click.option("--batch-size", type=int, default=64, show_default=True, help="Encoding batch size.")
@click.option("--out", "out_file", type=click.Path(dir_okay=False), default=None,
              help="Also write the JSON to this file.")
def command(ckpt, data_dir, batch_size, out_file) -> int:
    """Print hit@1, ndcg@5 and ndcg@10 (percent), overall, per task and per task group.

    Each task also reports the metric its rows name (MMEB image: hit@1, visdoc: ndcg@5,
    MRMR: ndcg@10) as "metric" and "score"; one "task: metric = score" line per task goes to
    stderr so the JSON on stdout stays machine-readable."""
    import lame
    from lame.data.dataset import load_eval
    from lame.evaluate import evaluate

    model = lame.load(ckpt)
    result = evaluate(model.encode, load_eval(data_dir), batch_size=batch_size,
                      encode_target=functools.partial(model.encode, role="target"))
    text = json.dumps(result, indent=2)
    if out_file:
        with open(out_file, "w") as handle:
            handle.write(text + "\n")
    for task, entry in result["per_task"].items():
        click.echo(f"{task}: {entry['metric']} = {entry['score']:.2f} (n={entry['n']})", err=True)
    click.echo(text)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return invoke(command, argv, "lame-eval")


def run() -> None:
    exit_with(main)


if __name__ == "__main__":
    run()
