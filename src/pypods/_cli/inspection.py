"""Commands that show pods without changing them: ``list``, ``describe`` and ``doctor``.

``list`` and ``doctor`` read only what is on disk (the ready marker, ``pyvenv.cfg``, ``pod.toml``):
they never run a pod's interpreter, nor one its ``pod.toml`` names.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from .. import __version__
from .._env import pythons, store, tools
from .._env.layout import PodLayout, ignored_folders, list_pods
from .._env.settings import PodSettings
from .._errors import PodError
from .common import (
    Context,
    cached_functions,
    describe as describe_pod,
    echo,
    emit,
    global_options,
    human,
    json_option,
    size_of,
)

if TYPE_CHECKING:
    from pathlib import Path


def _pod_record(ctx: Context, name: str) -> dict[str, Any]:
    """One pod's state from disk: its Python (as built, else as pinned), state and why, functions, size.

    A pod folder that is not the user's own under a found root is ``untrusted``: none of its files is read.
    """
    layout = PodLayout.at(name, ctx.root)
    why = ctx.distrusted(name)
    if why is not None:
        return {"name": name, "python": "-", "state": "untrusted", "why": why, "functions": None, "size": 0}
    marker = store.read_marker(layout) or {}
    python = ".".join(map(str, marker.get("version", [])))
    try:
        pinned = PodSettings.load(layout, {}).python
        state = store.state(layout, pinned)
    except PodError as exc:
        pinned, state = None, store.EnvState("broken", str(exc))
    functions = cached_functions(layout) if state.state == "ready" else None
    return {
        "name": layout.name,
        "python": python or (f"{pinned} (pinned)" if pinned else "-"),
        "state": state.state,
        "why": state.why,
        "functions": None if functions is None else len(functions),
        "size": size_of(layout.pod_dir),
    }


def _ignored_records(root: Path) -> list[dict[str, Any]]:
    return [
        {"name": name, "python": "-", "state": "ignored", "why": why, "functions": None, "size": 0}
        for name, why in ignored_folders(root).items()
    ]


@click.command(name="list")
@json_option
@global_options
def list_(as_json: bool) -> None:
    """List the pods under the root: Python, environment state, functions and disk size."""
    ctx = Context()
    records = [_pod_record(ctx, name) for name in list_pods(ctx.root)]
    records += _ignored_records(ctx.root)
    if not records:
        if as_json:
            emit(True, [], [], [])
        ctx.note(f"no pods in {ctx.root / 'pods'} yet; create one with `pypods new NAME`")
        return
    rows = [
        [
            r["name"],
            r["python"],
            r["state"] + (f" ({r['why']})" if r["why"] else ""),
            ("-" if r["state"] == "ignored" else "?") if r["functions"] is None else r["functions"],
            human(r["size"]) if r["state"] != "ignored" else "-",
        ]
        for r in records
    ]
    emit(as_json, records, ["pod", "python", "state", "functions", "size"], rows, f"pods in {ctx.root / 'pods'}")


def _signature(info: dict[str, Any]) -> str:
    from .._proxy import signature_of

    signature = signature_of(info)
    return f"{info['name']}{signature}" if signature is not None else f"{info['name']}(...)"


def _first_line(info: dict[str, Any]) -> str:
    doc = info.get("doc")
    return doc.split("\n", 1)[0] if isinstance(doc, str) else ""


@click.command()
@click.argument("name")
@json_option
@global_options
def describe(name: str, as_json: bool) -> None:
    """Show pod NAME's functions with their signatures and the first line of their docstrings."""
    ctx = Context()
    functions = describe_pod(ctx, ctx.layout(name))
    records = []
    for f in functions:
        kind = "class " if f.get("class") is True else ""  # its instances live in the pod (PodObject)
        records.append({"name": f["name"], "signature": kind + _signature(f), "doc": _first_line(f)})
        for method in (f.get("methods") or []) if kind else []:
            if isinstance(method, dict) and isinstance(method.get("name"), str):
                named = {**method, "name": f"{f['name']}.{method['name']}"}
                records.append({"name": named["name"], "signature": _signature(named), "doc": _first_line(method)})
    if not records and not as_json:
        ctx.note(f"pod {name!r} offers no functions yet: define some in {ctx.layout(name).pod_py}")
        return
    emit(as_json, records, ["function", "doc"], [[r["signature"], r["doc"]] for r in records], f"pod {name}")


@click.command()
@json_option
@global_options
def doctor(as_json: bool) -> None:
    """Check this machine and the pods under the root, with a hint for each problem (exit 1 if any)."""
    ctx = Context()
    root = ctx.root
    report: dict[str, Any] = {
        "pypods": __version__,
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "root": str(root),
        "uv": tools.uv_version(),
        "interpreters": [{"version": i.version_text, "path": i.path} for i in pythons.installed()],
        "pods": [_pod_record(ctx, name) for name in list_pods(root)],
        "problems": [],
    }
    problems: list[str] = report["problems"]
    if report["uv"] is None:
        problems.append("uv cannot run: builds fall back to venv + pip. hint: pip install uv")
    if not (root / "pods").is_dir():
        problems.append(f"no pods/ folder at {root}. hint: cd to your project, give --root, or `pypods new NAME`")
    for pod in report["pods"]:
        if pod["state"] == "untrusted":
            problems.append(
                f"pods/{pod['name']}/ {pod['why']}: pypods will not use it. "
                f"hint: if you trust it, give --root {root} (or PYPODS_ROOT); else remove it"
            )
        elif pod["state"] != "ready":
            why = f" ({pod['why']})" if pod["why"] else ""
            problems.append(f"pod {pod['name']} is {pod['state']}{why}. hint: pypods sync {pod['name']}")
    for name, why in ignored_folders(root).items():
        problems.append(f"pods/{name}/ is ignored: {why}. hint: rename the folder")
    if as_json:
        emit(True, report, [], [])
    else:
        lines = [
            f"pypods {report['pypods']} on Python {report['python']} ({report['executable']})",
            f"root: {root}",
            f"uv: {report['uv'] or 'not found'}",
            "interpreters:",
            *(f"  {i['version']:8} {i['path']}" for i in report["interpreters"]),
            *(f"pod {p['name']}: {p['state']}" + (f" ({p['why']})" if p["why"] else "") for p in report["pods"]),
        ]
        echo("\n".join(lines))  # pod.toml's python, a broken pod's error, pods/ folder names: escaped on a terminal
        echo("problems:\n" + "\n".join(f"  - {p}" for p in problems) if problems else "no problems found")
    if problems:
        raise SystemExit(1)


COMMANDS = [list_, describe, doctor]
