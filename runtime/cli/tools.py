"""The one CLI wrapper every LaME console script uses (lame-* in all four packages).

Runs a click command in-process (``main(argv)`` in tests) and returns an exit code. Errors
become one line on stderr, never a traceback:

* ``LameError`` and the builtin user errors a CLI names (``ValueError``, ``FileNotFoundError``,
  ...): ``prog: error: <message>``, exit code 2;
* ``OSError`` (disk full, permission denied, a read-only folder: the OS's errors, at the
  boundary where every CLI meets the file system) and ``MemoryError``: the same one line,
  naming the path where the OS gives one, exit code 2;
* click's usage errors (an unknown option, a missing argument): ``prog: error: <message>
  (see prog --help)``, one line, exit code 2;
* ``GateError`` (an export gate failed, nothing written): ``prog: error: gate failed, nothing
  written: <message>``, exit code 3;
* anything else (a bug, a library crash): ``prog: error: internal error: <type>: <message>
  (run with --debug for the traceback)``, exit code 1.

``--debug`` (anywhere on the command line, removed before click parses it) or the environment
variable ``LAME_DEBUG=1`` also prints the traceback.
"""

from __future__ import annotations

import os
import traceback
from typing import Any, Callable, Sequence

import click

from lame_runtime.errors import GateError, LameError

DEBUG_FLAG = "--debug"
DEBUG_ENV = "LAME_DEBUG"
DISTRIBUTION = "lame-embed"  # the pip name whose installed metadata --version reports


def version_option(prog: str) -> Callable[[Any], Any]:
    """``--version`` for a CLI: ``prog, version X`` with X read from the installed metadata."""
    return click.version_option(package_name=DISTRIBUTION, prog_name=prog)


def debug_enabled(argv: list[str]) -> tuple[bool, list[str]]:
    """(debug on?, argv without ``--debug``)."""
    wanted = DEBUG_FLAG in argv
    env = os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")
    return wanted or env, [a for a in argv if a != DEBUG_FLAG]


def invoke(
    command: click.Command,
    argv: Sequence[str] | None,
    prog: str,
    user_errors: tuple[type[BaseException], ...] = (),
) -> int:
    import sys

    handled: tuple[type[BaseException], ...] = (LameError, *user_errors)

    args = list(argv) if argv is not None else sys.argv[1:]
    debug, args = debug_enabled(args)
    try:
        result = command.main(args=args, prog_name=prog, standalone_mode=False)
    except click.exceptions.Exit as stop:
        return stop.exit_code
    except click.Abort:
        click.echo("aborted", err=True)
        return 130
    except getattr(click.exceptions, "NoArgsIsHelpError", ()) as err:  # bare `prog`: its help
        click.echo(err.ctx.get_help() if err.ctx is not None else err.format_message())
        return 2
    except click.UsageError as err:
        hint = err.ctx.command_path if err.ctx is not None else prog
        click.echo(f"{prog}: error: {_one_line(err.format_message())} (see {hint} --help)", err=True)
        return 2
    except click.ClickException as err:
        click.echo(f"{prog}: error: {_one_line(err.format_message())}", err=True)
        return err.exit_code
    except handled as err:
        if debug:
            traceback.print_exc()
        # KeyError's str() adds quotes around the message; show the message itself.
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        if isinstance(err, GateError):
            click.echo(f"{prog}: error: gate failed, nothing written: {_one_line(message)}", err=True)
            return 3
        click.echo(f"{prog}: error: {_one_line(message)}", err=True)
        return 2
    except OSError as err:  # not a bug: the machine said no (ENOSPC, EACCES, EROFS, ...)
        if debug:
            traceback.print_exc()
        click.echo(f"{prog}: error: {_os_message(err)}", err=True)
        return 2
    except MemoryError:
        if debug:
            traceback.print_exc()
        click.echo(f"{prog}: error: out of memory (try a smaller --batch-size or input)", err=True)
        return 2
    except Exception as err:  # noqa: BLE001  (the last line of defence: no traceback by default)
        if debug:
            traceback.print_exc()
        hint = "" if debug else f" (run with {DEBUG_FLAG} for the traceback)"
        click.echo(f"{prog}: error: internal error: {type(err).__name__}: {_one_line(err)}{hint}", err=True)
        return 1
    return result if isinstance(result, int) else 0


def _os_message(err: OSError) -> str:
    """``No space left on device: /data/index.npz`` (strerror and the paths the OS names)."""
    what = err.strerror or type(err).__name__
    paths = [str(p) for p in (err.filename, err.filename2) if p is not None]
    if not err.strerror:
        return _one_line(f"{what}: {err}")
    return _one_line(f"{what}: {' -> '.join(paths)}" if paths else what)


def _one_line(message: object) -> str:
    return " ".join(str(message).split()) or "(no message)"
