"""Find a Python interpreter for a pod: the client's own, a path, or a version installed on the machine.

Versions are looked up on PATH, under pyenv's ``$PYENV_ROOT/versions`` (read directly: pyenv's shims
fail for versions that are installed but not selected) and among uv-managed Pythons, in that order.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from .._errors import PodBuildError
from . import tools

MIN_VERSION = (3, 8)
_VERSION = re.compile(r"\A(?:python)?(\d+)\.(\d+)(?:\.(\d+))?\Z")
_PROBE = "import json, sys; print(json.dumps([list(sys.version_info[:3]), sys.executable]))"


@dataclasses.dataclass(frozen=True)
class Interpreter:
    """A Python found on this machine: where it is and its exact version."""

    path: str
    version: tuple[int, int, int]

    @property
    def version_text(self) -> str:
        return ".".join(map(str, self.version))


def current() -> Interpreter:
    """The interpreter running this client (no subprocess needed)."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    return Interpreter(base if os.path.exists(base) else sys.executable, tuple(sys.version_info[:3]))  # type: ignore[arg-type]


@functools.lru_cache(maxsize=64)
def probe(path: str) -> Interpreter:
    """Ask the interpreter at *path* its version.

    Raises:
        PodBuildError: it does not run, or is older than 3.8.
    """
    try:
        result = subprocess.run([path, "-I", "-c", _PROBE], capture_output=True, text=True, timeout=30, check=False)
    except OSError as exc:
        raise PodBuildError(f"cannot run Python interpreter {path}: {exc}") from exc
    if result.returncode != 0:
        raise PodBuildError(f"Python interpreter {path} failed to start: {result.stderr.strip()[-500:]}")
    version, _executable = json.loads(result.stdout)
    found = Interpreter(path, (version[0], version[1], version[2]))
    if found.version[:2] < MIN_VERSION:
        raise PodBuildError(f"{path} is Python {found.version_text}; pods need Python 3.8 or newer")
    return found


def _candidates(major: int, minor: int) -> list[str]:
    """Every place a ``major.minor`` interpreter may be, best first."""
    found: list[str] = []
    on_path = shutil.which(f"python{major}.{minor}")
    if on_path and "/shims/" not in on_path:
        found.append(on_path)
    pyenv_root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    versions = pyenv_root / "versions"
    if versions.is_dir():
        matches = [p for p in versions.iterdir() if re.fullmatch(rf"{major}\.{minor}\.\d+", p.name)]
        matches.sort(key=lambda p: int(p.name.rsplit(".", 1)[1]), reverse=True)
        found += [str(p / "bin" / "python") for p in matches if (p / "bin" / "python").exists()]
    return found


def searched_places() -> str:
    pyenv_root = os.environ.get("PYENV_ROOT") or str(Path.home() / ".pyenv")
    return f"PATH, {pyenv_root}/versions, and uv's managed Pythons (uv python find)"


def find(request: str | None) -> Interpreter:
    """Resolve a pod's ``python`` setting to an interpreter.

    Args:
        request: None for the client's own Python, a path to an interpreter, or a version such as
            ``"3.9"`` or ``"3.9.18"``.

    Raises:
        PodBuildError: nothing matches; the message lists the places searched.
    """
    if request is None:
        return current()
    if os.sep in request or request.startswith("."):
        given = Path(request).expanduser()
        if not given.exists():
            raise PodBuildError(f"python = {request!r}: no interpreter at {given}")
        return probe(str(given.absolute()))
    match = _VERSION.match(request.strip())
    if not match:
        raise PodBuildError(f"python = {request!r}: expected a version like '3.9' or a path to an interpreter")
    major, minor, patch = int(match[1]), int(match[2]), match[3]
    if (major, minor) < MIN_VERSION:
        raise PodBuildError(
            f'python = {request!r} is too old: pods need Python 3.8 or newer (set python in pod.toml, e.g. "3.11")'
        )
    here = current()
    if here.version[:2] == (major, minor) and (patch is None or here.version[2] == int(patch)):
        return here
    for path in _candidates(major, minor):
        try:
            found = probe(path)
        except PodBuildError:
            continue
        if patch is None or found.version[2] == int(patch):
            return found
    uv_path = tools.uv_python_find(request)
    if uv_path:
        found = probe(uv_path)
        if found.version[:2] == (major, minor):
            return found
    raise PodBuildError(
        f"no Python {request} found on this machine; searched {searched_places()}.\n"
        f"hint: install it (e.g. `uv python install {major}.{minor}`) or change `python` in the pod's pod.toml"
    )


def installed() -> list[Interpreter]:
    """Every interpreter (3.8+) this module can find, for ``pypods doctor``."""
    seen: dict[str, Interpreter] = {}
    here = current()
    seen[os.path.realpath(here.path)] = here
    for minor in range(8, 20):
        for path in _candidates(3, minor):
            real = os.path.realpath(path)
            if real in seen:
                continue
            try:
                seen[real] = probe(path)
            except PodBuildError:
                continue
    return sorted(seen.values(), key=lambda i: i.version)
