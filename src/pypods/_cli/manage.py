"""Commands that change pods: ``new``, ``add``, ``remove`` (edit requirements.txt and re-sync), ``rm`` and ``gc``."""

from __future__ import annotations

import re
import shutil
import time
from typing import TYPE_CHECKING, Any

import click

from .._env import store, tools
from .._env.builders import requirement_lines
from .._env.layout import PodLayout
from .._env.settings import PodSettings
from .._errors import PodError
from .common import CliError, Context, echo, emit, global_options, human, json_option, size_of

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def _checked_requirement(text: str) -> str:
    """One requirement line as given on the command line: no line breaks or other control characters."""
    if not text.strip() or any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise CliError(
            f"requirement {text!r} is empty or has control characters (one requirement per argument)", code=2
        )
    return text.strip()


def _project(line: str) -> str | None:
    """The normalized project name of a requirement line (PEP 503), or None for options and paths."""
    if line.startswith("-") or "/" in line.split(";")[0].split("@")[0]:
        return None
    match = _NAME.match(line)
    return re.sub(r"[-_.]+", "-", match[1]).lower() if match else None


def _build(ctx: Context, layout: PodLayout) -> float:
    """Make the pod's environment ready; return the seconds it took."""
    started = time.perf_counter()
    settings = ctx.settings(layout)
    store.ensure_ready(layout, settings.python, ctx.report(layout.name))
    return time.perf_counter() - started


@click.command()
@click.argument("name")
@click.option("--python", "python", help="Python for the pod: a version like 3.12, or a path (default: this one).")
@click.option("-r", "--requirement", "requirements", multiple=True, help="A requirement to add (repeatable).")
@click.option("--no-build", is_flag=True, help="Only write the files; build on first load.")
@json_option
@global_options
def new(name: str, python: str | None, requirements: tuple[str, ...], no_build: bool, as_json: bool) -> None:
    """Create pod NAME from the template (its pod.toml pins its Python) and build its environment."""
    ctx = Context()
    try:
        layout = PodLayout.at(name, ctx.root)
        ctx.check_trusted(name)
        if python is not None:
            PodSettings.from_mapping({"python": python}, "--python")
    except ValueError as exc:
        raise CliError(str(exc), code=2) from exc
    if layout.exists():
        raise CliError(
            f"pod {name!r} already exists at {layout.pod_dir}",
            hint=f"add requirements with `pypods add {name} REQ`, or start over with `pypods rm {name} --all`",
        )
    lines = [_checked_requirement(req) for req in requirements]
    existed = layout.pod_dir.exists()
    layout.create(python)
    if lines:
        with open(layout.requirements, "a", encoding="utf-8") as handle:
            handle.writelines(f"{line}\n" for line in lines)
    took = None
    if not no_build:
        try:
            took = _build(ctx, layout)
        except (PodError, CliError) as exc:
            if not existed:  # leave nothing behind, so a retry is not told the pod exists
                shutil.rmtree(layout.pod_dir, ignore_errors=True)
            hint = "the pod was not created; fix the requirement or --python and retry"
            raise CliError(_own_hint(exc), hint=hint) from exc
    record = {"name": name, "path": str(layout.pod_dir), "built": took is not None, "seconds": took}
    if as_json:
        emit(True, record, [], [])
        return
    built = f", built in {took:.2f}s" if took is not None else ""
    ctx.note(f"created pod {name!r} in {layout.pod_dir}{built}: add functions to {layout.pod_py}")


def _own_hint(exc: Exception) -> str:
    """The build error without its "fix requirements.txt and load again" hint, which ``new`` and ``add`` replace."""
    lines = str(exc).splitlines()
    if lines and lines[-1].startswith("hint: fix "):
        lines.pop()
    return "\n".join(lines)


class _Edit:
    """Edit a pod's requirements.txt, re-sync, and put the old files back if the build fails (as ``uv add``)."""

    def __init__(self, layout: PodLayout) -> None:
        self.layout = layout
        self.saved = {path: path.read_bytes() if path.exists() else None for path in (layout.requirements, layout.lock)}
        self.lines = (self.saved[layout.requirements] or b"").decode("utf-8").splitlines()

    def apply(self, ctx: Context, sync: bool) -> float | None:
        self.layout.requirements.write_text("\n".join(self.lines) + "\n", encoding="utf-8")
        if not sync:
            return None
        try:
            return _build(ctx, self.layout)
        except (PodError, CliError) as exc:
            self.restore()
            try:  # bring the environment back to what the old files say (from uv's cache: quick)
                _build(ctx, self.layout)
            except (PodError, CliError):
                pass
            raise CliError(_own_hint(exc), hint=f"{self.layout.requirements} was left as it was") from exc

    def restore(self) -> None:
        for path, data in self.saved.items():
            if data is None:
                path.unlink(missing_ok=True)
            else:
                path.write_bytes(data)


def _index(lines: list[str], project: str | None) -> Iterator[int]:
    for i, line in enumerate(lines):
        meaningful = requirement_lines(line)
        if project is not None and meaningful and _project(meaningful[0]) == project:
            yield i


@click.command()
@click.argument("name")
@click.argument("requirements", nargs=-1, required=True)
@click.option("--no-sync", is_flag=True, help="Only edit requirements.txt.")
@click.option("--create", is_flag=True, help="Create the pod from the template if it does not exist.")
@json_option
@global_options
def add(name: str, requirements: tuple[str, ...], no_sync: bool, create: bool, as_json: bool) -> None:
    """Add REQUIREMENTS to pod NAME (replacing the same project's line) and re-sync its environment."""
    ctx = Context()
    edit = _Edit(ctx.layout(name, create=create))
    for requirement in map(_checked_requirement, requirements):
        found = list(_index(edit.lines, _project(requirement)))
        if found:
            edit.lines[found[0]] = requirement
        else:
            edit.lines.append(requirement)
    took = edit.apply(ctx, not no_sync)
    if not _edited(as_json, edit, name, took):
        done = f"; synced in {took:.2f}s" if took is not None else ""
        ctx.note(f"added {', '.join(requirements)} to pod {name!r}{done}")


@click.command()
@click.argument("name")
@click.argument("requirements", nargs=-1, required=True)
@click.option("--no-sync", is_flag=True, help="Only edit requirements.txt.")
@json_option
@global_options
def remove(name: str, requirements: tuple[str, ...], no_sync: bool, as_json: bool) -> None:
    """Remove REQUIREMENTS (project names) from pod NAME and re-sync its environment."""
    ctx = Context()
    edit = _Edit(ctx.layout(name))
    for requirement in requirements:
        found = list(_index(edit.lines, _project(_checked_requirement(requirement))))
        if not found:
            present = [line for line in requirement_lines("\n".join(edit.lines)) if not line.startswith("-")]
            raise CliError(
                f"pod {name!r} does not require {requirement!r}",
                hint=f"its requirements: {', '.join(present) or 'none'}",
            )
        for i in reversed(found):
            del edit.lines[i]
    took = edit.apply(ctx, not no_sync)
    if not _edited(as_json, edit, name, took):
        done = f"; synced in {took:.2f}s" if took is not None else ""
        ctx.note(f"removed {', '.join(requirements)} from pod {name!r}{done}")


def _edited(as_json: bool, edit: _Edit, name: str, took: float | None) -> bool:
    """Print the result of ``add``/``remove`` as JSON if asked; say whether it did."""
    if as_json:
        record = {"name": name, "requirements": edit.lines, "synced": took is not None, "seconds": took}
        emit(True, record, [], [])
    return as_json


@click.command()
@click.argument("name")
@click.option("--all", "whole", is_flag=True, help="Remove the whole pod folder, code included.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
@global_options
def rm(name: str, whole: bool, yes: bool, as_json: bool) -> None:
    """Remove pod NAME's environment (rebuilt on the next load), or with --all the whole pod."""
    ctx = Context()
    layout = ctx.layout(name)
    target = layout.pod_dir if whole else layout.venv
    if whole and not yes and not _confirm(f"Delete {layout.pod_dir} and everything in it?"):
        if as_json:
            emit(True, {"name": name, "path": str(target), "removed": False, "bytes": 0}, [], [])
        ctx.note(f"kept {layout.pod_dir}: nothing removed")
        return
    size = size_of(target) if target.exists() else 0
    shutil.rmtree(target, ignore_errors=True)
    if not whole:
        shutil.rmtree(layout.state, ignore_errors=True)
    if as_json:
        emit(True, {"name": name, "path": str(target), "removed": True, "bytes": size}, [], [])
    else:
        ctx.note(f"removed {target} ({human(size)})")


def _confirm(question: str) -> bool:
    """Ask on stderr; no answer at all (stdin closed, as in a script) is "no", not an interruption."""
    try:
        return click.confirm(question, default=False, err=True)
    except click.Abort as exc:
        if isinstance(exc.__context__, EOFError):
            return False
        raise


def _garbage(ctx: Context) -> list[Path]:
    """Environments and private state of pods whose ``pod.py`` is gone (in folders of the user's own)."""
    found: list[Path] = []
    pods_dir = ctx.root / "pods"
    if pods_dir.is_dir():
        for folder in sorted(pods_dir.iterdir()):
            if folder.is_dir() and not (folder / "pod.py").exists() and ctx.distrusted(folder.name) is None:
                found += [p for p in (folder / "venv", folder / ".pypods") if p.exists()]
    return found


@click.command()
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
@json_option
@global_options
def gc(dry_run: bool, as_json: bool) -> None:
    """Remove what nothing refers to: environments of deleted pods and uv's unused cache."""
    ctx = Context()
    removed: list[dict[str, Any]] = []
    for path in _garbage(ctx):
        size = size_of(path) if path.is_dir() else path.lstat().st_size
        if not dry_run:
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        removed.append({"path": str(path), "size": size})
    freed = sum(item["size"] for item in removed)
    uv_said = ""
    if not dry_run and tools.uv_binary() is not None:
        result = tools.run_uv(["cache", "prune"], str(ctx.root))
        lines = (result.stderr or result.stdout).strip().splitlines()
        uv_said = lines[-1] if lines else "done"
    if as_json:
        emit(True, {"dry_run": dry_run, "removed": removed, "bytes": freed, "uv_cache_prune": uv_said}, [], [])
        return
    verb = "would remove" if dry_run else "removed"
    for item in removed:
        echo(f"{verb} {item['path']} ({human(item['size'])})")
    if uv_said:
        ctx.note(f"uv cache prune: {uv_said}")
    total = f"would free {human(freed)}" if dry_run else f"freed {human(freed)}"
    ctx.note(f"{total} of pod environments" + ("" if removed else " (nothing to remove)"))


COMMANDS = [new, add, remove, rm, gc]
