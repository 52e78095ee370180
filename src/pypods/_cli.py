"""The ``pypods`` command: create, inspect, build, call and clean pods (click + rich).

Tables and colour on a terminal, plain tab-separated text when piped, ``--json`` for scripts.
Errors go to stderr with exit code 1 (2 for bad usage, as click does).
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import click

from . import __version__
from ._env import cache, pythons, store, tools
from ._env.layout import PodLayout, PodSettings, list_pods, resolve_root
from ._env.progress import BuildReport
from ._errors import PodError


class Output:
    """Print tables and messages for people (rich on a terminal) or for pipes (plain text)."""

    def __init__(self, as_json: bool = False) -> None:
        self.as_json = as_json
        self.tty = sys.stdout.isatty()
        self._console: Any = None
        if self.tty and not as_json:
            from rich.console import Console

            self._console = Console(highlight=False)

    def table(self, title: str, columns: list[str], rows: list[list[Any]], records: list[dict[str, Any]]) -> None:
        if self.as_json:
            click.echo(json.dumps(records, indent=2, default=str))
        elif self._console is not None:
            from rich.table import Table

            table = Table(title=title, title_justify="left")
            for column in columns:
                table.add_column(column)
            for row in rows:
                table.add_row(*(str(cell) for cell in row))
            self._console.print(table)
        else:
            click.echo("\t".join(columns))
            for row in rows:
                click.echo("\t".join(str(cell) for cell in row))

    def say(self, text: str, style: str = "") -> None:
        if self._console is not None:
            self._console.print(f"[{style}]{text}[/]" if style else text)
        elif not self.as_json:
            click.echo(text)


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"pypods: error: {message}", err=True)
    sys.exit(code)


def _layout(root: Path, name: str) -> PodLayout:
    try:
        layout = PodLayout.at(name, root)
    except ValueError as exc:
        _fail(str(exc), 2)
        raise  # pragma: no cover - _fail exits
    if not layout.exists():
        known = ", ".join(list_pods(root)) or "none"
        _fail(f"no pod {name!r} under {root / 'pods'} (pods here: {known})")
    return layout


def _settings(layout: PodLayout) -> PodSettings:
    try:
        return PodSettings.load(layout, {})
    except ValueError as exc:
        _fail(str(exc))
        raise  # pragma: no cover


def _size(path: Path) -> int:
    total = 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover


def _cached_functions(layout: PodLayout, settings: PodSettings) -> list[dict[str, Any]] | None:
    marker = store.read_marker(layout)
    if marker is None:
        return None
    try:
        interpreter = store.resolve_python(layout, settings.python, marker)
    except PodError:
        return None
    return cache.load(layout, store.env_key(layout, interpreter))


def _describe(layout: PodLayout, progress: bool | None = None) -> list[dict[str, Any]]:
    """The pod's functions: from the cache, else by loading the pod (building it if needed)."""
    settings = _settings(layout)
    functions = _cached_functions(layout, settings)
    if functions is not None:
        return functions
    from ._loader import Pod

    try:
        with Pod(layout.name, root=layout.root, create=False, start="lazy", progress=progress) as pod:
            return [fn.__wrapped_info__ for fn in pod.functions.values()]  # type: ignore[attr-defined]
    except PodError as exc:
        _fail(str(exc))
        raise  # pragma: no cover


def _signature(info: dict[str, Any]) -> str:
    from ._proxy import signature_of

    signature = signature_of(info)
    return f"{info['name']}{signature}" if signature is not None else f"{info['name']}(...)"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pypods")
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="PYPODS_ROOT",
    help="Project folder holding pods/ (default: $PYPODS_ROOT, else the current directory).",
)
@click.pass_context
def cli(ctx: click.Context, root: Path | None) -> None:
    """Manage and call pods: folders with their own Python environment, served by a persistent worker."""
    ctx.obj = resolve_root(root)


@cli.command()
@click.argument("name")
@click.option("--python", "python", help="Python for the pod: a version like 3.9, or a path.")
@click.option("-r", "--requirement", "requirements", multiple=True, help="A requirement to add (repeatable).")
@click.option("--no-build", is_flag=True, help="Only write the files; build on first load.")
@click.pass_obj
def new(root: Path, name: str, python: str | None, requirements: tuple[str, ...], no_build: bool) -> None:
    """Create pod NAME from the template and build its environment."""
    try:
        layout = PodLayout.at(name, root)
    except ValueError as exc:
        _fail(str(exc), 2)
        return
    if layout.exists():
        _fail(f"pod {name!r} already exists at {layout.pod_dir}")
    layout.create()
    if requirements:
        with open(layout.requirements, "a", encoding="utf-8") as handle:
            handle.writelines(f"{req}\n" for req in requirements)
    if python:
        text = layout.settings.read_text(encoding="utf-8")
        layout.settings.write_text(f'python = "{python}"\n' + text, encoding="utf-8")
    out = Output()
    if not no_build:
        try:
            started = time.perf_counter()
            store.ensure_ready(layout, python, BuildReport(name, True if out.tty else False))
            out.say(f"built pod {name!r} in {time.perf_counter() - started:.2f}s", "green")
        except PodError as exc:
            _fail(str(exc))
    out.say(f"created {layout.pod_dir}: add functions to {layout.pod_py}")


@cli.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def list_(root: Path, as_json: bool) -> None:
    """List the pods under the root: Python, environment state, functions and disk size."""
    records: list[dict[str, Any]] = []
    for name in list_pods(root):
        layout = PodLayout.at(name, root)
        try:
            settings = PodSettings.load(layout, {})
            state = store.state(layout, settings.python)
            functions = _cached_functions(layout, settings)
        except ValueError as exc:
            state, functions = store.EnvState("broken", str(exc)), None
        marker = store.read_marker(layout) or {}
        python = ".".join(map(str, marker.get("version", []))) or "-"
        records.append(
            {
                "name": name,
                "python": python,
                "state": state.state,
                "why": state.why,
                "functions": None if functions is None else len(functions),
                "size": _size(layout.pod_dir),
            }
        )
    rows = [
        [
            r["name"],
            r["python"],
            r["state"] + (f" ({r['why']})" if r["why"] else ""),
            "?" if r["functions"] is None else r["functions"],
            _human(r["size"]),
        ]
        for r in records
    ]
    Output(as_json).table(f"pods in {root / 'pods'}", ["pod", "python", "state", "functions", "size"], rows, records)


@cli.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def describe(root: Path, name: str, as_json: bool) -> None:
    """Show pod NAME's functions with their signatures and the first line of their docstrings."""
    layout = _layout(root, name)
    functions = _describe(layout)
    records = [
        {"name": f["name"], "signature": _signature(f), "doc": (f.get("doc") or "").split("\n", 1)[0]}
        for f in functions
    ]
    rows = [[r["signature"], r["doc"]] for r in records]
    Output(as_json).table(f"pod {name}", ["function", "doc"], rows, records)


def _sync_one(layout: PodLayout, show: bool) -> tuple[str, str, float]:
    started = time.perf_counter()
    try:
        settings = PodSettings.load(layout, {})
        store.ensure_ready(layout, settings.python, BuildReport(layout.name, show))
    except (PodError, ValueError) as exc:
        return layout.name, f"failed: {str(exc).splitlines()[0]}", time.perf_counter() - started
    return layout.name, "ready", time.perf_counter() - started


@cli.command()
@click.argument("names", nargs=-1)
@click.option("-j", "--jobs", default=2, show_default=True, help="Pods built at once.")
@click.pass_obj
def sync(root: Path, names: tuple[str, ...], jobs: int) -> None:
    """Build or re-sync the environments of NAMES (all pods when none are named)."""
    layouts = [_layout(root, name) for name in names] if names else [PodLayout.at(n, root) for n in list_pods(root)]
    out = Output()
    with ThreadPoolExecutor(max_workers=max(jobs, 1)) as pool:
        results = list(pool.map(lambda layout: _sync_one(layout, out.tty), layouts))
    failed = False
    for name, result, took in results:
        failed = failed or result != "ready"
        out.say(f"{name}: {result} ({took:.2f}s)", "red" if result != "ready" else "green")
    if failed:
        sys.exit(1)


def _parse_argument(text: str) -> Any:
    """A CLI argument as JSON, else as a Python literal, else as the string itself."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


@cli.command()
@click.argument("name")
@click.argument("function")
@click.argument("args", nargs=-1)
@click.option("-k", "--kwarg", "kwargs", multiple=True, help="A keyword argument KEY=VALUE (repeatable).")
@click.option("--timeout", type=float, help="Seconds before the call is abandoned.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def call(
    root: Path, name: str, function: str, args: tuple[str, ...], kwargs: tuple[str, ...], timeout: float | None,
    as_json: bool,
) -> None:  # fmt: skip
    """Call FUNCTION of pod NAME with ARGS (JSON or Python literals) and print the result."""
    layout = _layout(root, name)
    keywords: dict[str, Any] = {}
    for item in kwargs:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            _fail(f"--kwarg {item!r}: expected KEY=VALUE", 2)
        keywords[key] = _parse_argument(value)
    from ._loader import Pod

    try:
        with Pod(name, root=layout.root, create=False, start="lazy") as pod:
            if function not in pod.functions:
                offered = ", ".join(sorted(pod.functions)) or "none"
                _fail(f"pod {name!r} has no function {function!r} (it offers: {offered})")
            result = pod.call(function, *map(_parse_argument, args), timeout=timeout, **keywords)
            if hasattr(result, "__next__"):
                result = list(result)
    except PodError as exc:
        _fail(f"{type(exc).__name__}: {exc!s}")
        return
    if as_json:
        click.echo(json.dumps(result, default=repr))
    else:
        click.echo(result if isinstance(result, str) else repr(result))


@cli.command()
@click.argument("names", nargs=-1)
@click.pass_obj
def stubs(root: Path, names: tuple[str, ...]) -> None:
    """Write typed access to pods (all when none are named) into ROOT/pods_typed/ for editors and mypy."""
    from . import _stubs

    chosen = names or tuple(list_pods(root))
    pods = {name: _describe(_layout(root, name)) for name in chosen}
    if names:  # keep the overloads of the pods not named this time
        for other in list_pods(root):
            if other not in pods:
                cached = _cached_functions(PodLayout.at(other, root), _settings(PodLayout.at(other, root)))
                if cached is not None and (root / _stubs.PACKAGE / f"{other}.pyi").exists():
                    pods[other] = cached
    written = _stubs.write(root, pods)
    Output().say(f"wrote {len(written)} files to {root / _stubs.PACKAGE}: " + ", ".join(sorted(pods)))


@cli.command()
@click.argument("name")
@click.option("--all", "whole", is_flag=True, help="Remove the whole pod folder, code included.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def rm(root: Path, name: str, whole: bool, yes: bool) -> None:
    """Remove pod NAME's environment (it is rebuilt on the next load), or with --all the whole pod."""
    layout = _layout(root, name)
    target = layout.pod_dir if whole else layout.venv
    if whole and not yes and not click.confirm(f"Delete {layout.pod_dir} and everything in it?", default=False):
        _fail("not removed")
    size = _size(target) if target.exists() else 0
    shutil.rmtree(target, ignore_errors=True)
    if not whole:
        shutil.rmtree(layout.state, ignore_errors=True)
    Output().say(f"removed {target} ({_human(size)})")


@cli.command()
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
@click.pass_obj
def gc(root: Path, dry_run: bool) -> None:
    """Remove what nothing refers to: environments of deleted pods and uv's unused cache."""
    freed = 0
    out = Output()
    pods_dir = root / "pods"
    candidates: list[Path] = []
    if pods_dir.is_dir():
        for folder in pods_dir.iterdir():
            if folder.is_dir() and not (folder / "pod.py").exists():
                candidates += [p for p in (folder / "venv", folder / ".pypods") if p.exists()]
    for path in candidates:
        size = _size(path) if path.is_dir() else path.stat().st_size
        freed += size
        out.say(f"{'would remove' if dry_run else 'removed'} {path} ({_human(size)})")
        if not dry_run:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    if not dry_run and tools.uv_binary() is not None:
        result = tools.run_uv(["cache", "prune"], str(root))
        out.say(f"uv cache prune: {(result.stderr or result.stdout).strip().splitlines()[-1:] or ['done']}")
    out.say(f"freed {_human(freed)} of pod environments")


@cli.command()
@click.pass_obj
def doctor(root: Path) -> None:
    """Check this machine and the pods under the root, with a hint for each problem."""
    out = Output()
    problems: list[str] = []
    out.say(f"pypods {__version__} on Python {sys.version.split()[0]} ({sys.executable})")
    out.say(f"root: {root}" + ("" if (root / "pods").is_dir() else " (no pods/ folder yet)"))
    uv = tools.uv_version()
    out.say(f"uv: {uv or 'not found'}")
    if uv is None:
        problems.append("uv cannot run: builds fall back to venv + pip. Hint: pip install uv")
    out.say("interpreters:")
    for interpreter in pythons.installed():
        out.say(f"  {interpreter.version_text:8} {interpreter.path}")
    for name in list_pods(root):
        layout = PodLayout.at(name, root)
        try:
            settings = PodSettings.load(layout, {})
        except ValueError as exc:
            problems.append(f"pod {name}: {exc}")
            continue
        state = store.state(layout, settings.python)
        out.say(f"pod {name}: {state.state}" + (f" ({state.why})" if state.why else ""))
        if state.state != "ready":
            problems.append(f"pod {name} is {state.state}. Hint: pypods sync {name}")
    if problems:
        out.say("problems:", "bold red")
        for problem in problems:
            out.say(f"  - {problem}", "red")
        sys.exit(1)
    out.say("no problems found", "green")


def main() -> None:
    """Entry point of the ``pypods`` console script."""
    cli(prog_name="pypods")
