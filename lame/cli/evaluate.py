"""lame-eval: retrieval metrics of a checkpoint on a dataset's eval split, as one JSON object;
with ``--generate N``, the greedy-generation check instead (exact match of generated answers,
:mod:`lame.evaluation.generation`)."""

from __future__ import annotations

import functools
import json
from typing import Sequence

import click

from lame.cli import exit_with, int_list, invoke, require_train_extra, version_option


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@version_option("lame-eval")
@click.option(
    "--ckpt",
    required=True,
    type=click.Path(file_okay=False),
    help="Checkpoint directory written by lame-train.",
)
@click.option(
    "--data",
    "data_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Dataset directory holding eval.jsonl.",
)
@click.option("--batch-size", type=int, default=64, show_default=True, help="Encoding batch size.")
@click.option(
    "--out",
    "out_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write the JSON to this file.",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option(
    "--limit", type=int, default=None, help="Evaluate on at most N rows (spread evenly over the tasks)."
)
@click.option(
    "--generate",
    "generate",
    type=int,
    default=None,
    help="Instead of retrieval: greedy-generate answers for N eval queries (spread "
    "over the tasks) and report exact match (see lame.evaluation.generation).",
)
@click.option(
    "--max-new-tokens",
    type=int,
    default=None,
    help="--generate: token budget per query (default: the checkpoint's max_rationale_tokens + 8).",
)
@click.option(
    "--split",
    type=click.Choice(["eval", "val"]),
    default="eval",
    show_default=True,
    help="eval.jsonl, or val.jsonl: the validation split carved from training "
    "samples (lame-data digits --val-per-task), for choosing variants.",
)
@click.option(
    "--dimensions",
    default=None,
    metavar="D1,D2,...",
    help="Also score the leading D components of each embedding, renormalised "
    "(Matryoshka sizes, e.g. 32,64): by_dimension in the JSON.",
)
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def command(
    ckpt,
    data_dir,
    batch_size,
    out_file,
    device,
    limit,
    no_progress,
    generate,
    max_new_tokens,
    split,
    dimensions,
) -> int:
    """Print hit@1, ndcg@5 and ndcg@10 (percent), overall, per task and per task group.

    Each task also reports the metric its rows name (MMEB image: hit@1, visdoc: ndcg@5,
    MRMR: ndcg@10) as "metric" and "score"; one "task: metric = score" line per task goes to
    stderr so the JSON on stdout stays machine-readable."""
    require_train_extra()
    import lame
    from lame.data.dataset import check_fixed_size, load_eval
    from lame.device import resolve_device
    from lame.evaluation.evaluate import evaluate, limit_rows

    device = resolve_device(device)  # a missing GPU: one line, before any loading
    if generate is not None and generate < 1:
        raise click.UsageError(f"--generate must be >= 1, got {generate}")
    rows = limit_rows(load_eval(data_dir, split=split), generate or limit)
    model = lame.load(ckpt, device=device)
    if not model.preprocessor.image.native:
        check_fixed_size(rows)  # several images or a video: name the row before any embedding
    sizes = parse_dimensions(dimensions, model.config.embed_dim) if dimensions else []
    if generate is not None:
        return _generate(model, rows, data_dir, batch_size, max_new_tokens, out_file, not no_progress)
    result = evaluate(
        model.encode,
        rows,
        batch_size=batch_size,
        encode_target=functools.partial(model.encode_documents, instruction=""),
        progress=not no_progress,
        dimensions=sizes,
    )
    text = json.dumps(result, indent=2)
    if out_file:
        with open(out_file, "w") as handle:
            handle.write(text + "\n")
    for task, entry in result["per_task"].items():
        click.echo(f"{task}: {entry['metric']} = {entry['score']:.2f} (n={entry['n']})", err=True)
    for size, entry in result.get("by_dimension", {}).items():
        click.echo(f"dimensions {size}: hit@1 = {entry['hit@1']:.2f}", err=True)
    click.echo(text)
    return 0


def parse_dimensions(text: str, embed_dim: int) -> list[int]:
    """'32,64' -> [32, 64]: distinct sizes in [1, embed_dim], increasing (a click error if not)."""
    sizes = int_list(text, "--dimensions")
    if sizes != sorted(set(sizes)) or not all(1 <= d <= embed_dim for d in sizes):
        raise click.BadParameter(
            f"sizes must increase and lie in [1, {embed_dim}] (the model's embed_dim), got {text!r}",
            param_hint="--dimensions",
        )
    return sizes


def _generate(model, rows, data_dir, batch_size, max_new_tokens, out_file, progress) -> int:
    from lame.evaluation.generation import generate_texts, image_digits, score_generations

    budget = max_new_tokens or model.config.max_rationale_tokens + 8
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(rows), desc="generate", unit="query", dynamic_ncols=True)
    try:
        texts = generate_texts(
            model, rows, budget, min(batch_size, 32), progress=bar.update if bar else (lambda n: None)
        )
    finally:
        if bar:
            bar.close()
    result = {
        "checkpoint_method": model.config.method,
        "max_new_tokens": budget,
        **score_generations(rows, texts, image_digits(data_dir)),
    }
    text = json.dumps(result, indent=2)
    if out_file:
        from lame_runtime.persist import atomic_write_text

        atomic_write_text(out_file, text + "\n")
    click.echo(f"exact match {result.get('exact_match', 0.0):.1f} % over {result['n']} queries", err=True)
    click.echo(text)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return invoke(command, argv, "lame-eval")


def run() -> None:
    exit_with(main)


if __name__ == "__main__":
    run()
