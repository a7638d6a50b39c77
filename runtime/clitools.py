"""The one CLI wrapper every LaME console script uses (lame-* in all four packages).

Runs a click command in-process (``main(argv)`` in tests), returns an exit code, and turns the
library's expected exceptions into a one-line ``prog: error: ...`` on stderr (exit code 2).
"""
from __future__ import annotations

from typing import Sequence

import click


def invoke(command: click.Command, argv: Sequence[str] | None, prog: str,
           user_errors: tuple[type[BaseException], ...]) -> int:
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
    except user_errors as err:
        # KeyError's str() adds quotes around the message; show the message itself.
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        click.echo(f"{prog}: error: {message}", err=True)
        return 2
    return result if isinstance(result, int) else 0
