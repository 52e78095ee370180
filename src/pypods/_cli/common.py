"""What every ``pypods`` command shares: global options, output for people or scripts, errors with hints.

Global options (``--root``, ``-q``, ``-v``) are accepted before or after the subcommand; data goes
to stdout (a table on a terminal, tab-separated when piped, JSON with ``--json``), messages to stderr.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from .._env import cache, store
from .._env.layout import (
    PodLayout,
    PodSettings,
    check_pods,
    chosen_root,
    distrust,
    ignored_folders,
    list_pods,
    resolve_root,
)
from .._env.progress import BuildReport
from .._errors import PodError
from .._terminal import escape_controls, for_terminal

if TYPE_CHECKING:
    from collections.abc import Callable

F = TypeVar("F", bound="Callable[..., Any]")


class CliError(Exception):
    """A failure to print as ``pypods: error: …`` (and a ``hint:`` line), exiting with *code*."""

    def __init__(self, message: str, hint: str = "", code: int = 1) -> None:
        super().__init__(message)
        self.hint = hint
        self.code = code


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """Keep a global option's value on the root context, from wherever on the command line it was given."""
    if value in (None, False, 0):
        return
    meta = ctx.find_root().meta
    if param.name == "verbose":
        meta["verbose"] = meta.get("verbose", 0) + value
    else:
        meta[str(param.name)] = value


def global_options(function: F) -> F:
    """Add ``--root``, ``-q`` and ``-v`` to the group and to every command (so they work anywhere)."""
    options = [
        click.option(
            "--root",
            type=click.Path(file_okay=False, path_type=Path),
            expose_value=False,
            callback=_remember,
            help="Project folder holding pods/ (default: $PYPODS_ROOT, else the nearest folder with pods/).",
        ),
        click.option("-q", "--quiet", is_flag=True, expose_value=False, callback=_remember, help="Print only data."),
        click.option(
            "-v",
            "--verbose",
            count=True,
            expose_value=False,
            callback=_remember,
            help="Log what pypods does (-vv: more).",
        ),
    ]
    for option in options:
        function = option(function)
    return function


def json_option(function: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(function)


class _TerminalFormatter(logging.Formatter):
    """The ``-v`` log lines, escaped on a terminal: with ``log = "logging"`` they carry the pod's stderr."""

    def format(self, record: logging.LogRecord) -> str:
        return for_terminal(super().format(record), sys.stderr)


class Context:
    """The resolved global options of this invocation."""

    def __init__(self) -> None:
        meta = click.get_current_context().find_root().meta
        self.quiet: bool = bool(meta.get("quiet"))
        self.verbose: int = int(meta.get("verbose", 0))
        self.root = resolve_root(meta.get("root"))
        # Found rather than chosen (--root, $PYPODS_ROOT): each pod folder must be the user's own too.
        self.found = not meta.get("root") and chosen_root() is None
        if self.verbose:
            handler = logging.StreamHandler()
            handler.setFormatter(_TerminalFormatter("pypods: %(message)s"))
            logging.basicConfig(level=logging.DEBUG if self.verbose > 1 else logging.INFO, handlers=[handler])
            how = "--root" if meta.get("root") else "$PYPODS_ROOT" if os.environ.get("PYPODS_ROOT") else "found"
            logging.getLogger("pypods").info("root: %s (%s)", self.root, how)

    def note(self, text: str) -> None:
        """A message for people (stderr), silenced by ``-q``."""
        if not self.quiet:
            echo(text, err=True)

    def report(self, name: str, alone: bool = True) -> BuildReport:
        return BuildReport(name, False if self.quiet else None, installer=alone)

    def layout(self, name: str, create: bool = False) -> PodLayout:
        """Pod *name* under the root; with *create* a missing pod is made from the template.

        Raises:
            CliError: a bad name (exit 2), or no such pod (with the pods that exist).
        """
        try:
            layout = PodLayout.at(name, self.root)
        except ValueError as exc:
            why = ignored_folders(self.root).get(name, "")  # pods/my-pod/ exists: say how to fix it
            raise CliError(str(exc), hint=f"pods/{name}/ is {why}" if why else "", code=2) from exc
        self.check_trusted(name)
        if layout.exists():
            return layout
        if create:
            layout.create()
            self.note(f"pypods: created new pod {name!r} in {layout.pod_dir}")
            return layout
        pods = list_pods(self.root)
        close = difflib.get_close_matches(name, pods, n=1)
        guess = f" (or did you mean {close[0]!r}?)" if close else ""
        raise CliError(
            f"no pod {name!r} in {self.root / 'pods'} (pods there: {', '.join(pods) or 'none'})",
            hint=f"create it with `pypods new {name}`{guess}, or give --root (or run from the project folder)",
        )

    def check_trusted(self, name: str) -> None:
        """Refuse pod *name*'s folder under a found root if it is not the user's own (docs/security.md).

        Raises:
            PodError: the pod's folder is another user's or writable by others.
        """
        if self.found:
            check_pods(self.root, name)

    def distrusted(self, name: str) -> str | None:
        """Why pod *name*'s folder is refused (see ``check_trusted``), or None: for commands that list pods."""
        folder = self.root / "pods" / name
        return distrust(folder) if self.found and folder.is_dir() else None

    def settings(self, layout: PodLayout) -> PodSettings:
        try:
            return PodSettings.load(layout, {})
        except PodError as exc:
            raise CliError(str(exc), hint=f"fix {layout.settings}") from exc


def echo(text: str, err: bool = False) -> None:
    """``click.echo`` of text that may hold a pod's (names, docstrings, errors): escaped on a terminal."""
    click.echo(for_terminal(text, sys.stderr if err else sys.stdout), err=err)


def emit(as_json: bool, records: Any, columns: list[str], rows: list[list[Any]], title: str = "") -> None:
    """Print data: JSON, a rich table on a terminal, or tab-separated lines when piped.

    On the terminal every cell is a ``rich.text.Text`` of the escaped string: rich passes ESC through
    and reads ``[link=...]`` markup in a plain ``str``, and a cell may be a pod's docstring.
    """
    if as_json:
        click.echo(json.dumps(records, indent=2, default=str))
    elif sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        table = Table(title=Text(escape_controls(title)) if title else None, title_justify="left")
        for column in columns:
            table.add_column(column)
        for row in rows:
            table.add_row(*(Text(escape_controls(str(cell))) for cell in row))
        Console(highlight=False).print(table)
    else:
        click.echo("\t".join(columns))
        for row in rows:
            click.echo("\t".join(str(cell) for cell in row))


def size_of(path: Path) -> int:
    total = 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total


def human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def cached_functions(layout: PodLayout) -> list[dict[str, Any]] | None:
    """The pod's cached description, checked from what is on disk (no interpreter is run)."""
    marker = store.read_marker(layout)
    built = store.marker_interpreter(marker) if marker is not None else None
    return None if built is None else cache.load(layout, store.env_key(layout, built))


def describe(ctx: Context, layout: PodLayout) -> list[dict[str, Any]]:
    """The pod's functions: from the cache, else by loading the pod (building it if needed)."""
    ctx.settings(layout)
    functions = cached_functions(layout)
    if functions is not None:
        return functions
    from .._loader import Pod

    with Pod(layout.name, root=layout.root, create=False, start="lazy", progress=False if ctx.quiet else None) as pod:
        functions = Pod.functions.__get__(pod)  # not pod.functions: a pod function may have that name
        return [fn.__wrapped_info__ for fn in functions.values()]
