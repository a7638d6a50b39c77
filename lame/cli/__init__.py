"""Thin click front-ends. Each module has ``main(argv=None) -> int`` (tests call it in-process)
and ``run()`` for the console script. Library errors become one-line messages here."""

from __future__ import annotations

import sys
from typing import Sequence

import click

from lame_runtime.cli.tools import invoke as run_command
from lame_runtime.cli.tools import version_option  # noqa: F401  (each lame CLI's --version)
from lame_runtime.errors import BackendError, CheckpointError, LameError

# Shown as one line `prog: error: ...` (exit 2); anything else is an internal error (exit 1),
# with a traceback only under --debug or LAME_DEBUG=1 (lame_runtime.cli.tools).
USER_ERRORS = (LameError, ValueError, FileNotFoundError, FileExistsError, CheckpointError, TypeError)


def invoke(command: click.Command, argv: Sequence[str] | None, prog: str) -> int:
    return run_command(command, argv, prog, USER_ERRORS)


def require_train_extra() -> None:
    """Import torch and transformers as a command that needs them starts (--help never does):
    on the base install, the runtime only, one line with the pip command, not a traceback."""
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as err:
        prog = click.get_current_context().find_root().info_name
        raise BackendError(
            f'{prog} needs the train extra (torch, transformers): pip install "lame-embed[train]" ({err})'
        ) from None


def exit_with(main) -> None:
    sys.exit(main())


def int_list(text: str, option: str) -> list[int]:
    """'32,64' -> [32, 64] for a comma-separated option; a click error naming it otherwise."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise click.BadParameter(
            f"expected comma-separated integers, got {text!r}", param_hint=option
        ) from None
