"""Thin click front-ends. Each module has ``main(argv=None) -> int`` (tests call it in-process)
and ``run()`` for the console script. Library errors become one-line messages here."""
from __future__ import annotations

import sys
from typing import Sequence

import click

from lame.checkpoint import CheckpointError
from lame_runtime.clitools import invoke as run_command

USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, CheckpointError, TypeError)


def invoke(command: click.Command, argv: Sequence[str] | None, prog: str) -> int:
    return run_command(command, argv, prog, USER_ERRORS)


def exit_with(main) -> None:
    sys.exit(main())
