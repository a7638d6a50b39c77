"""``lame-search info ART``: the embedding sizes the artifact serves and its memory budget per
precision."""

from __future__ import annotations

import json

import click


@click.command("info")
@click.argument("model", type=click.Path())
@click.option(
    "--measure",
    is_flag=True,
    help="Also open each precision in a fresh process, embed one text, then 8 texts and 2 "
    "images, and report its peak RSS, the Embedder's load time, the time to the first vector "
    "and process start -> first vector (seconds to minutes at 2B widths).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def info_command(model: str, measure: bool, as_json: bool) -> int:
    """The embedding sizes served (the full size and any Matryoshka prefixes), then per
    precision: graph file sizes, the weights a routed Embedder maps (weights the text
    graph shares with the full graph counted once), and with --measure the peak RSS of a first
    text and image query, the load time and the time to the first vector."""
    from lame_runtime.artifact.budget import memory_budget
    from lame_runtime.artifact.contract import Artifact

    artifact = Artifact.open(model, verify=False)
    rows = memory_budget(artifact.path, measure=measure)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "model": model,
                    "embedding_dim": artifact.dim,
                    "dimensions": list(artifact.dimensions),
                    "precisions": rows,
                },
                indent=1,
            )
        )
        return 0
    sizes = ", ".join(map(str, artifact.dimensions))
    click.echo(
        f"embedding sizes: {sizes}"
        + (" (Matryoshka: pass --dimensions / dimensions=)" if len(artifact.dimensions) > 1 else "")
    )

    def mib(n: float) -> str:
        return f"{n / 2**20:,.1f}"

    head = f"{'precision':<10} {'full MiB':>10} {'text MiB':>10} {'shared':>7} {'weights MiB':>12}"
    measured = f" {'peak RSS MiB':>13} {'load s':>7} {'1st vector s':>13} {'cold start s':>13}"
    click.echo(head + (measured if measure else ""))
    for row in rows:
        line = (
            f"{row['precision']:<10} {mib(row['full_graph_bytes']):>10} "
            f"{mib(row['text_graph_bytes']):>10} {'yes' if row['text_weights_shared'] else 'no':>7} "
            f"{mib(row['resident_weights_bytes']):>12}"
        )
        if measure:
            m = row["measured"]
            line += (
                f" {m['peak_rss_mb']:>13,.1f} {m['open_s']:>7.2f} {m['first_vector_s']:>13.2f}"
                f" {m['cold_start_s']:>13.2f}"
            )
        click.echo(line)
    return 0
