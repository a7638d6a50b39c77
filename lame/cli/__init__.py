"""Thin click front-ends. Each module has ``main(argv=None) -> int`` (tests call it in-process)
and ``run()`` for the console script. Library errors become one-line messages here."""
from __future__ import annotations

import sys
from typing import Sequence

import click

from lame.checkpoint import CheckpointError

USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, CheckpointError, TypeError)


def invoke(command: click.Command, argv: Sequence[str] | None, prog: str) -> int:
    try:
        result = command.main(args=list(argv) if argv is not None else None, prog_name=prog,
                              standalone_mode=False)
    except click.exceptions.Exit as stop:
        return stop.exit_code
    except click.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as err:
        err.show()
        return err.exit_code
    except USER_ERRORS as err:
        click.echo(f"{prog}: error: {err}", err=True)
        return 2
    return result if isinstance(result, int) else 0


def exit_with(main) -> None:
    sys.exit(main())
