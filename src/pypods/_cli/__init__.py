"""The ``pypods`` command: create, inspect, build, call, run and clean pods (click + rich).

One module per group of commands: ``manage`` (new, add, remove, rm, gc), ``inspection`` (list,
describe, doctor), ``calls`` (sync, call, run, stubs). Exit codes: 0 success, 1 failure, 2 bad usage,
130 interrupted (Ctrl-C). Errors print as ``pypods: error: …`` with a ``hint:`` line where one helps.
"""

from __future__ import annotations

import sys

import click

from .. import __version__
from .._env.layout import check_platform
from .._errors import PodError
from .common import CliError, echo, global_options

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pypods")
@global_options
def cli() -> None:
    """Manage and call pods: folders with their own Python environment, served by a persistent worker.

    Global options (--root, -q, -v) may come before or after the command.
    """


def _register() -> None:
    from . import calls, inspection, manage

    for module in (manage, inspection, calls):
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def _error(message: str, hint: str = "") -> None:
    echo(f"pypods: error: {message}", err=True)  # may quote a pod's error, or a folder name in its pods/
    if hint:
        echo(f"hint: {hint}", err=True)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``pypods`` console script; exits with 0, 1 (failure), 2 (usage) or 130 (Ctrl-C)."""
    try:
        check_platform()
        code = cli.main(args=argv, prog_name="pypods", standalone_mode=False)
    except click.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError" and exc.ctx is not None:  # bare `pypods`: help, as uv does
            click.echo(exc.ctx.get_help(), err=True)
            sys.exit(2)
        if exc.ctx is not None:
            click.echo(exc.ctx.get_usage(), err=True)
            click.echo(f"Try '{exc.ctx.command_path} -h' for help.", err=True)
        _error(exc.format_message())
        sys.exit(2)
    except click.ClickException as exc:
        _error(exc.format_message())
        sys.exit(exc.exit_code)
    except CliError as exc:
        _error(str(exc), exc.hint)
        sys.exit(exc.code)
    except PodError as exc:
        _error(str(exc))
        sys.exit(1)
    except (KeyboardInterrupt, click.Abort):
        click.echo("pypods: interrupted", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
