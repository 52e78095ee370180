"""Keep a pod's environment ready: a key of what it was built from, a file lock, a marker written last.

The marker ``venv/.pypods-ready`` holds the key; it is removed before any change to the environment
and written (atomically) only after a build succeeded, so a build that dies halfway leaves a pod
that is simply not ready, and the next load builds it again. Checking a ready pod costs a few stats
and small reads: no subprocess.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import TYPE_CHECKING, Any

from filelock import FileLock

from . import pythons
from .builders import EnvBuilder, default_builder, included_lines, requirement_lines
from .pythons import Interpreter

if TYPE_CHECKING:
    from .layout import PodLayout
    from .progress import BuildReport

ENV_FORMAT = 1
MARKER = ".pypods-ready"


@dataclasses.dataclass(frozen=True)
class EnvState:
    """What ``pypods list`` shows: ready, stale (with why), missing or broken."""

    state: str
    why: str = ""


def _read(path: os.PathLike[str]) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return ""


def env_key(layout: PodLayout, interpreter: Interpreter) -> str:
    """Hash of everything the environment is built from."""
    requirements = requirement_lines(_read(layout.requirements))
    basis: dict[str, Any] = {
        "format": ENV_FORMAT,
        "python": [interpreter.path, list(interpreter.version)],
        "requirements": requirements,
        "lock": _read(layout.lock),
    }
    included = included_lines(layout, requirements)
    if included:  # -r base.txt: an edit there is a rebuild too (absent otherwise: existing keys unchanged)
        basis["included"] = included
    return hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()


def read_marker(layout: PodLayout) -> dict[str, Any] | None:
    text = _read(layout.venv / MARKER)
    if not text:
        return None
    try:
        marker = json.loads(text)
    except ValueError:
        return None
    return marker if isinstance(marker, dict) else None


def _stat_id(path: str) -> list[int]:
    st = os.stat(path)
    return [st.st_mtime_ns, st.st_size, st.st_ino]


def resolve_python(layout: PodLayout, request: str | None, marker: dict[str, Any] | None) -> Interpreter:
    """The pod's interpreter; reuses the marker's answer while that file is unchanged (no probe).

    A pod without a ``python`` setting keeps the Python it was first built with, so clients on
    different Pythons (and the ``pypods`` command) do not rebuild it back and forth.
    """
    if marker is not None and marker.get("request") == request:
        built = marker_interpreter(marker)
        if built is not None:
            return built
    return pythons.find(request)


def marker_interpreter(marker: dict[str, Any]) -> Interpreter | None:
    """The interpreter the marker names, if that file is unchanged since the build (stat only, never run)."""
    path = marker.get("python")
    try:
        if isinstance(path, str) and marker.get("python_stat") == _stat_id(path):
            major, minor, patch = marker["version"]
            return Interpreter(path, (int(major), int(minor), int(patch)))
    except (OSError, KeyError, TypeError, ValueError):
        pass
    return None


def _write_marker(layout: PodLayout, key: str, request: str | None, interpreter: Interpreter) -> None:
    marker = {
        "key": key,
        "request": request,
        "python": interpreter.path,
        "python_stat": _stat_id(interpreter.path),
        "version": list(interpreter.version),
        "built": time.time(),
    }
    tmp = layout.venv / (MARKER + ".tmp")
    tmp.write_text(json.dumps(marker), encoding="utf-8")
    os.replace(tmp, layout.venv / MARKER)


def state(layout: PodLayout, request: str | None) -> EnvState:
    """Say whether the pod's environment is ready, and if not, why, from what is on disk.

    Runs no interpreter (neither the pod's nor one named in its ``pod.toml``): ``pypods list`` and
    ``pypods doctor`` must not execute a pod's files just to show its state.
    """
    if not layout.venv.exists():
        return EnvState("missing", "no venv/ yet")
    marker = read_marker(layout)
    if marker is None:
        return EnvState("broken", "venv/ exists but no build finished: interrupted or failed")
    built = marker_interpreter(marker)
    if built is None:
        return EnvState("stale", f"its Python {marker.get('python')} changed or is gone")
    if request is not None and marker.get("request") != request and not _same_version(request, built):
        return EnvState("stale", f"python setting changed to {request!r} (built with {built.version_text})")
    if not layout.venv_python.exists():
        return EnvState("broken", "venv/ has no Python")
    if marker.get("key") != env_key(layout, built):
        return EnvState("stale", "requirements changed")
    return EnvState("ready")


def _same_version(request: str, built: Interpreter) -> bool:
    parts = request.strip().removeprefix("python").split(".")
    return parts == [str(n) for n in built.version[: len(parts)]]


def ensure_ready(
    layout: PodLayout, request: str | None, report: BuildReport, builder: EnvBuilder | None = None
) -> Interpreter:
    """Return the pod's interpreter, building or re-syncing ``venv/`` first if its key changed.

    Raises:
        PodBuildError: the environment cannot be built; the pod stays not ready.
    """
    marker = read_marker(layout)
    interpreter = resolve_python(layout, request, marker)
    key = env_key(layout, interpreter)
    if marker is not None and marker.get("key") == key and layout.venv_python.exists():
        return interpreter
    layout.state.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(layout.state / "build.lock"))
    with lock:
        # Another process may have built it while we waited for the lock.
        marker = read_marker(layout)
        key = env_key(layout, interpreter)
        if marker is not None and marker.get("key") == key and layout.venv_python.exists():
            return interpreter
        try:
            os.unlink(layout.venv / MARKER)
        except FileNotFoundError:
            pass
        try:
            (builder or default_builder()).build(layout, interpreter, report)
        except BaseException as exc:
            report.fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            raise
        _write_marker(layout, env_key(layout, interpreter), request, interpreter)
    report.done()
    return interpreter
