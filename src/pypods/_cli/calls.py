"""Commands that build or run pods: ``sync``, ``call``, ``run`` and ``stubs``."""

from __future__ import annotations

import ast
import difflib
import json
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import click

from .._env import store, tools
from .._env.layout import PodLayout, list_pods
from .._errors import PodError, PodRemoteError
from .._terminal import for_terminal
from .common import CliError, Context, cached_functions, describe, echo, emit, global_options, json_option

if TYPE_CHECKING:
    from .._env.progress import BuildReport

_STRUCTURED = tuple("[{(\"'0123456789+-.")


def _sync_one(ctx: Context, layout: PodLayout, report: BuildReport) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        store.ensure_ready(layout, ctx.settings(layout).python, report)
    except (PodError, CliError) as exc:
        return {"name": layout.name, "ready": False, "error": str(exc), "seconds": time.perf_counter() - started}
    return {"name": layout.name, "ready": True, "error": "", "seconds": time.perf_counter() - started}


@click.command()
@click.argument("names", nargs=-1)
@click.option("-j", "--jobs", type=click.IntRange(1, 64), default=2, show_default=True, help="Pods built at once.")
@json_option
@global_options
def sync(names: tuple[str, ...], jobs: int, as_json: bool) -> None:
    """Build or re-sync the environments of NAMES (all pods when none are named)."""
    ctx = Context()
    layouts = [ctx.layout(name) for name in names or list_pods(ctx.root)]  # each checked: the user's own
    if not layouts:
        ctx.note(f"no pods in {ctx.root / 'pods'} to sync")
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        alone = jobs == 1 or len(layouts) == 1  # uv's progress bars only when one build has the terminal
        results = list(pool.map(lambda layout: _sync_one(ctx, layout, ctx.report(layout.name, alone)), layouts))
    for result in results:
        if result["error"]:
            echo(f"pypods: error: {result['error']}", err=True)
    rows = [[r["name"], "ready" if r["ready"] else "failed", f"{r['seconds']:.2f}s"] for r in results]
    if results:
        emit(as_json, results, ["pod", "result", "time"], rows)
    if not all(r["ready"] for r in results):
        raise SystemExit(1)


def parse_argument(text: str) -> Any:
    """A CLI argument: JSON, else a Python literal, else (for a bare word) the string itself.

    Raises:
        click.BadParameter: it looks like a number, list, dict or quoted string but does not parse
            (a malformed ``[1, 2`` is refused rather than sent as a string).
    """
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        pass
    if text.startswith(_STRUCTURED):
        raise click.BadParameter(
            f"{text!r} is not valid JSON or a Python literal; to pass it as text, quote it: '{json.dumps(text)}'",
            param_hint="argument",
        )
    return text


def _timeout(_ctx: click.Context, _param: click.Parameter, value: float | None) -> float | None:
    if value is not None and (not math.isfinite(value) or value <= 0):
        raise click.BadParameter("must be a finite number of seconds above 0")
    return value


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("function")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option("-k", "--kwarg", "kwargs", multiple=True, help="A keyword argument KEY=VALUE (repeatable).")
@click.option("--timeout", type=float, callback=_timeout, help="Seconds before the call is abandoned.")
@click.option("--create", is_flag=True, help="Create the pod from the template if it does not exist.")
@json_option
@global_options
def call(
    name: str, function: str, args: tuple[str, ...], kwargs: tuple[str, ...], timeout: float | None, create: bool,
    as_json: bool,
) -> None:  # fmt: skip
    """Call FUNCTION of pod NAME with ARGS (JSON or Python literals; negative numbers work) and print the result."""
    ctx = Context()
    _allow_long_ints()
    for arg in args:
        if arg.startswith("-") and not _is_number(arg):
            raise click.NoSuchOption(arg.split("=", 1)[0])
    positional = [parse_argument(arg) for arg in args]
    keywords: dict[str, Any] = {}
    for item in kwargs:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint="'-k'")
        keywords[key] = parse_argument(value)
    layout = ctx.layout(name, create=create)
    ctx.settings(layout)
    from .._loader import Pod

    with Pod(name, root=layout.root, create=False, start="lazy", progress=False if ctx.quiet else None) as pod:
        functions = Pod.functions.__get__(pod)  # a pod function may be named `functions` (or `call`)
        if function not in functions:
            offered = ", ".join(sorted(functions)) or "none"
            close = difflib.get_close_matches(function, list(functions), n=1)
            guess = f"did you mean {close[0]!r}? " if close else ""
            raise CliError(f"pod {name!r} has no function {function!r}", hint=f"{guess}it offers: {offered}")
        try:
            result = Pod.call(pod, function, *positional, timeout=timeout, **keywords)
            if hasattr(result, "__next__"):
                result = list(result)
        except PodRemoteError as exc:
            hint = "run with -v for the pod's traceback" if not ctx.verbose else ""
            if ctx.verbose and exc.remote_traceback:
                click.echo(for_terminal(exc.remote_traceback.rstrip(), sys.stderr), err=True)
            raise CliError(for_terminal(str(exc).split("\n", 1)[0], sys.stderr), hint=hint) from exc
    try:
        text = json.dumps(result, default=repr) if as_json else result if isinstance(result, str) else repr(result)
    except ValueError as exc:  # an int beyond even _LONG_INT_DIGITS
        raise CliError(f"the result cannot be printed: {exc}") from exc
    click.echo(for_terminal(text, sys.stdout))  # the pod's own text: no escape sequence reaches a terminal


_LONG_INT_DIGITS = 1_000_000  # ints of any size cross; the CLI parses and prints them up to this (a second or so)


def _allow_long_ints() -> None:
    """Let ``call`` parse and print ints past Python's default 4,300 digits (its arguments are the user's own)."""
    getter = getattr(sys, "get_int_max_str_digits", None)
    if getter is not None and 0 < getter() < _LONG_INT_DIGITS:
        sys.set_int_max_str_digits(_LONG_INT_DIGITS)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("name")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--create", is_flag=True, help="Create the pod from the template if it does not exist.")
@global_options
def run(name: str, command: tuple[str, ...], create: bool) -> None:
    """Run COMMAND in pod NAME's environment, e.g. `pypods run geo -- python -i`.

    The pod's venv/bin comes first on PATH, VIRTUAL_ENV names it, pod.toml's [env] is set, and the
    project folder is on PYTHONPATH (so `import pods.NAME.pod` works from any folder under the project,
    or with --root); the command runs directly (no shell), in the current folder, and its exit code
    is pypods' exit code.
    """
    ctx = Context()
    argv = list(command[1:] if command[0] == "--" else command)
    if not argv:
        raise click.UsageError("no command given: pypods run NAME -- COMMAND [ARGS]...")
    layout = ctx.layout(name, create=create)
    settings = ctx.settings(layout)
    store.ensure_ready(layout, settings.python, ctx.report(name))
    env = tools.clean_environ(settings.env)
    env["VIRTUAL_ENV"] = str(layout.venv)
    env["PYTHONPATH"] = str(layout.root)  # the caller's own PYTHONPATH never leaks in (clean_environ)
    env["PATH"] = os.pathsep.join([str(layout.venv_python.parent), env.get("PATH", os.defpath)])
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as exc:
        raise CliError(
            f"cannot run {argv[0]!r} in pod {name!r}: {exc.strerror or exc}",
            hint=f"is it installed in the pod? `pypods add {name} PACKAGE` (the pod's venv/bin is first on PATH)",
            code=127 if isinstance(exc, FileNotFoundError) else 126,
        ) from exc


@click.command()
@click.argument("names", nargs=-1)
@json_option
@global_options
def stubs(names: tuple[str, ...], as_json: bool) -> None:
    """Write typed access to pods (all when none are named) into ROOT/pods_typed/ for editors and mypy."""
    from .. import _stubs

    ctx = Context()
    root = ctx.root
    pods: dict[str, list[dict[str, Any]]] = {}
    failed: list[str] = []
    for name in names or list_pods(root):
        try:
            pods[name] = describe(ctx, ctx.layout(name))
        except (PodError, CliError) as exc:
            if names:  # a pod named on the command line must work
                raise
            failed.append(name)  # one broken pod does not keep the others from their stubs
            ctx.note(f"skipped pod {name!r}: {str(exc).splitlines()[0]}")
    if names:  # keep the overloads of the pods not named this time
        for other in list_pods(root):
            if other not in pods and (root / _stubs.PACKAGE / f"{other}.pyi").exists() and not ctx.distrusted(other):
                cached = cached_functions(PodLayout.at(other, root))
                if cached is not None:
                    pods[other] = cached
    written = _stubs.write(root, pods)
    if as_json:
        emit(True, {"files": [str(path) for path in written], "pods": sorted(pods)}, [], [])
    else:
        ctx.note(f"wrote {len(written)} files to {root / _stubs.PACKAGE}: " + ", ".join(sorted(pods)))
    if failed:
        raise CliError(
            f"no stubs for {', '.join(map(repr, failed))}: describing failed",
            hint="fix the pod (`pypods describe NAME` shows the error), then run `pypods stubs` again",
        )


COMMANDS = [sync, call, run, stubs]
