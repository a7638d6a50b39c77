"""lame-import: bring a pretrained embedder in as a LaME checkpoint (see lame.importing).

Only the recipes that reproduce their model card are offered; the refused ones (lame.importing's
``REFUSED``) are listed with their reasons under ``lame-import embedder --help``, and naming one
gets its reason rather than a bare "invalid choice".
"""

from __future__ import annotations

import json
from typing import Sequence

import click

from lame.cli import exit_with, invoke, require_train_extra, version_option
from lame.importing import RECIPES, REFUSED


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@version_option("lame-import")
def command() -> None:
    """Import pretrained models as LaME checkpoints."""


def _refused_epilog() -> str:
    # One paragraph per refused recipe (click rewraps within a paragraph, not across them).
    lines = ["Not supported (never approximated):"]
    lines += [f"{name}: not supported because {reason}." for name, reason in sorted(REFUSED.items())]
    return "\n\n".join(lines)


def _recipe_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if value in REFUSED:
        raise click.BadParameter(f"{value!r} is not supported: {REFUSED[value]}", ctx, param)
    if value not in RECIPES:
        raise click.BadParameter(
            f"unknown recipe {value!r}; available: {', '.join(sorted(RECIPES))}", ctx, param
        )
    return value


@command.command("embedder", epilog=_refused_epilog())
@click.argument("directory", type=click.Path(file_okay=False))
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="The checkpoint directory to write.",
)
@click.option(
    "--recipe",
    metavar=f"[{'|'.join(sorted(RECIPES))}]",
    callback=_recipe_name,
    required=True,
    help="The embedder's own recipe (prompt template, pooling, normalisation).",
)
@click.option(
    "--image-size",
    default="448x448",
    show_default=True,
    help="The fixed image resolution HxW of the exported graph (the model card "
    "resizes each image dynamically; here every image is resized to this).",
)
@click.option(
    "--resolution",
    type=click.Choice(["fixed", "native"]),
    default="fixed",
    show_default=True,
    help="native: each image keeps its aspect ratio within the model's pixel budget, several "
    "images and videos per input (the model card's vectors); fixed: --image-size for every image.",
)
@click.option(
    "--min-pixels", type=click.IntRange(min=1), default=None, help="Native: least pixels per image."
)
@click.option("--max-pixels", type=click.IntRange(min=1), default=None, help="Native: most pixels per image.")
@click.option(
    "--max-text-tokens",
    type=int,
    default=256,
    show_default=True,
    help="Text tokens per input before truncation (with a warning).",
)
def embedder(
    directory, out_dir, recipe, image_size, resolution, min_pixels, max_pixels, max_text_tokens
) -> int:
    """Read a local Hugging Face embedder DIRECTORY (nothing is downloaded) and write an
    ordinary K=0 checkpoint that lame-export and the runtime serve unchanged."""
    require_train_extra()
    from lame.importing import import_embedder

    out = import_embedder(
        directory, out_dir, recipe, image_size, max_text_tokens, resolution, min_pixels, max_pixels
    )
    click.echo(json.dumps({"checkpoint": str(out), "recipe": recipe}))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return invoke(command, argv, "lame-import")


def run() -> None:
    exit_with(main)


if __name__ == "__main__":
    run()
