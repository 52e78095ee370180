"""Build a pod's ``venv/`` from its requirements: ``UvBuilder`` (fast, the default) or ``VenvBuilder``.

Both resolve ``requirements.txt`` into ``requirements.lock`` (kept when it is already current) and
then make the environment hold exactly the locked set, changing only the difference.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import stat
import subprocess
from typing import TYPE_CHECKING, Protocol

from .._errors import PodBuildError
from . import tools

if TYPE_CHECKING:
    from pathlib import Path

    from .layout import PodLayout
    from .progress import BuildReport
    from .pythons import Interpreter

log = logging.getLogger("pypods")
LOCK_MARK = "# pypods-requirements-sha256: "
_OPTION = re.compile(r"^\s*(--no-index|--index-url|-i\s|--extra-index-url|--find-links|-f\s)")
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
# pip's short options take their value attached too (-e../lib, -egit+https://..., -rbase.txt).
_EDITABLE = re.compile(r"^(-e|--editable(\s|=|$))")
_INCLUDE = re.compile(r"^(-r|--requirement(\s|=|$))")  # -r base.txt: its requirements count
_NESTED = re.compile(r"^(?:-r|--requirement|-c|--constraint)(?:\s+|=)?(\S.*)$")  # files a resolution reads
MAX_NESTED = 20  # -r/-c files followed for the lock's digest


class EnvBuilder(Protocol):
    """Make ``layout.venv`` an environment of *interpreter* holding the pod's requirements."""

    name: str

    def build(self, layout: PodLayout, interpreter: Interpreter, report: BuildReport) -> None: ...


def requirement_lines(text: str) -> list[str]:
    """The meaningful lines of a requirements file (no comments, no blanks)."""
    lines = []
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if line:
            lines.append(line)
    return lines


def is_requirement(line: str) -> bool:
    """Whether a meaningful line names something to install: a package, a path, or ``-e``/``--editable``.

    Every other line starting with ``-`` is an option (``--no-index``, ``--find-links ...``).
    """
    return not line.startswith("-") or _EDITABLE.match(line) is not None or _INCLUDE.match(line) is not None


def requirements_digest(layout: PodLayout) -> str:
    """What a lock was resolved from: the requirement lines only (a lock is universal, not per Python).

    The lines of the files they include (``-r base.txt``, ``-c constraints.txt``, relative to the
    file naming them, as pip and uv read them) count too, so an edit of ``base.txt`` re-resolves.
    """
    text = layout.requirements.read_text(encoding="utf-8") if layout.requirements.exists() else ""
    lines = requirement_lines(text) + included_lines(layout, requirement_lines(text))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def included_lines(layout: PodLayout, lines: list[str]) -> list[str]:
    """The meaningful lines of the files *lines* include (``-r``/``-c``, recursively, at most ``MAX_NESTED``)."""
    found: list[str] = []
    pending = [(layout.requirements.parent, line) for line in lines]
    seen: set[str] = set()
    while pending and len(seen) < MAX_NESTED:
        folder, line = pending.pop(0)
        match = _NESTED.match(line)
        if match is None:
            continue
        path = (folder / os.path.expanduser(match.group(1).strip())).resolve()
        if str(path) in seen:
            continue
        seen.add(str(path))
        nested = requirement_lines(_read_nested(path))
        found += [f"# {match.group(1).strip()}", *nested]
        pending += [(path.parent, item) for item in nested]
    return found


def _read_nested(path: Path) -> str:
    """An included requirements file: a regular file, its first MiB (a pod may point ``-r`` at a FIFO)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return "<unreadable>"
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return "<not a file>"
        return os.read(fd, 1 << 20).decode("utf-8", "replace")
    except OSError:
        return "<unreadable>"
    finally:
        os.close(fd)


def lock_stamp(digest: str, interpreter: Interpreter) -> str:
    """The lock's first line: the requirements' digest and the oldest Python the lock was resolved for."""
    major, minor = interpreter.version[:2]
    return f"{LOCK_MARK}{digest} python>={major}.{minor}"


def lock_is_current(layout: PodLayout, digest: str, interpreter: Interpreter) -> bool:
    """True if the lock was resolved from these requirements for this Python or an older one.

    A lock resolved with ``uv pip compile --universal`` holds every platform's and every newer
    Python's pins (with markers), so building on another machine or Python leaves it unchanged.
    """
    if not layout.lock.exists():
        return False
    for line in layout.lock.read_text(encoding="utf-8").splitlines()[:3]:
        if not line.startswith(LOCK_MARK):
            continue
        found, _, floor = line[len(LOCK_MARK) :].partition(" python>=")
        try:
            oldest = tuple(int(part) for part in floor.split("."))
        except ValueError:
            return False
        return found == digest and oldest <= interpreter.version[:2]
    return False


def _venv_version(venv: Path) -> str | None:
    cfg = venv / "pyvenv.cfg"
    if not cfg.exists():
        return None
    for line in cfg.read_text(encoding="utf-8").splitlines():
        key, _, value = line.partition("=")
        if key.strip() in ("version_info", "version"):
            return value.strip()
    return None


def venv_matches(layout: PodLayout, interpreter: Interpreter) -> bool:
    """True if ``venv/`` is a whole environment of *interpreter*'s exact version."""
    version = _venv_version(layout.venv)
    return (
        layout.venv_python.exists()
        and version is not None
        and version.split(".")[:3] == [str(part) for part in interpreter.version]
    )


_NETWORK = re.compile(
    r"error sending request|tcp connect error|dns error|failed to lookup address|connection (refused|reset)"
    r"|timed out|network (connectivity )?(is|was) disabled|request failed after|certificate|proxy",
    re.IGNORECASE,
)
_UV_DETAIL = re.compile(r"^\s*(error|cause|hint|warning)\b|^\s*[\u00d7\u2570\u2502]")


def _fail(layout: PodLayout, what: str, output: str) -> PodBuildError:
    """A build error naming the pod, the requirements that uv's output mentions, uv's causes and a hint."""
    text = layout.requirements.read_text(encoding="utf-8") if layout.requirements.exists() else ""
    reqs = [line for line in requirement_lines(text) if is_requirement(line)]
    names = [req for req in reqs if (m := _NAME.match(req)) and m[1].lower() in output.lower()]
    named = ", ".join(names or reqs) or "(no requirements)"
    lines = output.strip().splitlines()
    if len(lines) > 40:  # keep every error/cause/hint line, and the end
        lines = [line for line in lines[:-15] if _UV_DETAIL.match(line)] + lines[-15:]
    said = "\n".join("  " + line for line in lines)
    if _NETWORK.search(output):
        hint = (
            "hint: the package index could not be reached (or uv is offline: UV_OFFLINE): check the network "
            "(or proxy), or point requirements.txt at a reachable index (--index-url, --find-links)"
        )
    else:
        hint = f"hint: fix {layout.requirements} and load the pod again"
    message = (
        f"pod {layout.name!r}: {what} failed for requirement(s) {named}.\nThe installer (uv) said:\n{said}\n"
        f"{hint}; the pod is not ready until a build succeeds."
    )
    return PodBuildError(message, pod=layout.name, output=output)


def _add_options(layout: PodLayout, lock_text: str, stamp: str) -> str:
    """Stamp the lock and carry index options over (uv emits only some of them)."""
    text = layout.requirements.read_text(encoding="utf-8") if layout.requirements.exists() else ""
    options = [line for line in requirement_lines(text) if _OPTION.match(line + " ")]
    existing = set(lock_text.splitlines())
    header = [stamp] + [line for line in options if line not in existing]
    return "\n".join(header) + "\n" + lock_text


class UvBuilder:
    """Build with uv: ``uv venv``, ``uv pip compile`` to the lock, ``uv pip sync`` from it."""

    name = "uv"

    def build(self, layout: PodLayout, interpreter: Interpreter, report: BuildReport) -> None:
        cwd = str(layout.pod_dir)
        if not venv_matches(layout, interpreter):
            with report.step(f"creating venv with Python {interpreter.version_text}"):
                result = tools.run_uv(
                    ["venv", "--clear", "--no-project", "--no-config", "--python", interpreter.path, str(layout.venv)],
                    cwd,
                )
                if result.returncode != 0:
                    raise _fail(layout, "creating the environment", result.stderr + result.stdout)
        python = str(layout.venv_python)
        if not lock_is_current(layout, requirements_digest(layout), interpreter):
            self._lock(layout, interpreter, report)
        with report.step("installing locked requirements"):
            args = ["pip", "sync", "--no-config", "--allow-empty-requirements", "--python", python, str(layout.lock)]
            result = tools.run_uv(args, cwd, live=report.live)
            if result.returncode != 0:
                raise _fail(layout, "installing", result.stderr + result.stdout)

    def _lock(self, layout: PodLayout, interpreter: Interpreter, report: BuildReport) -> None:
        text = layout.requirements.read_text(encoding="utf-8") if layout.requirements.exists() else ""
        stamp = lock_stamp(requirements_digest(layout), interpreter)
        if not any(is_requirement(line) for line in requirement_lines(text)):
            layout.lock.write_text(_add_options(layout, "", stamp), encoding="utf-8")
            return
        with report.step("resolving requirements (for every platform)"):
            # Universal: one lock for every platform and every Python from the pod's up, so a lock made
            # on macOS keeps Linux-only dependencies. The old lock, if any, stays as uv's preference:
            # versions only move where they must.
            version = "{}.{}".format(*interpreter.version[:2])
            args = ["pip", "compile", "--no-config", "--universal", "--python-version", version]
            args += ["--emit-find-links", "--quiet", "--no-header"]  # index options: only the pod's own
            args += [str(layout.requirements), "-o", str(layout.lock)]
            result = tools.run_uv(args, str(layout.pod_dir), live=report.live)
            if result.returncode != 0:
                raise _fail(layout, "resolving", result.stderr + result.stdout)
            locked = layout.lock.read_text(encoding="utf-8") if layout.lock.exists() else ""
            locked = "\n".join(line for line in locked.splitlines() if not line.startswith(LOCK_MARK))
            layout.lock.write_text(_add_options(layout, locked.lstrip("\n"), stamp), encoding="utf-8")


class VenvBuilder:
    """Fallback where uv cannot run: stdlib ``venv`` and the environment's own pip (much slower)."""

    name = "venv"

    def build(self, layout: PodLayout, interpreter: Interpreter, report: BuildReport) -> None:
        cwd = str(layout.pod_dir)
        if not venv_matches(layout, interpreter):
            with report.step(f"creating venv with Python {interpreter.version_text} (stdlib venv)"):
                shutil.rmtree(layout.venv, ignore_errors=True)
                self._run(layout, [interpreter.path, "-m", "venv", str(layout.venv)], cwd, "creating the environment")
        python = str(layout.venv_python)
        current = lock_is_current(layout, requirements_digest(layout), interpreter)
        source = layout.lock if current else layout.requirements
        text = source.read_text(encoding="utf-8") if source.exists() else ""
        if any(is_requirement(line) for line in requirement_lines(text)):
            with report.step("installing requirements with pip"):
                pip = [python, "-m", "pip", "install", "--disable-pip-version-check", "-q", "-r", str(source)]
                self._run(layout, pip, cwd, "installing")
        if not current:
            frozen = self._run(layout, [python, "-m", "pip", "freeze", "--exclude-editable"], cwd, "locking")
            # pip freeze pins this platform only: the fallback's lock is not universal.
            layout.lock.write_text(
                _add_options(layout, frozen, lock_stamp(requirements_digest(layout), interpreter)), encoding="utf-8"
            )

    @staticmethod
    def _run(layout: PodLayout, args: list[str], cwd: str, what: str) -> str:
        result = subprocess.run(args, cwd=cwd, env=tools.clean_environ(), capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise _fail(layout, what, result.stderr + result.stdout)
        return result.stdout


_warned = False


def default_builder() -> EnvBuilder:
    """uv when it can run here, else stdlib venv + pip (saying so once)."""
    global _warned
    if tools.uv_binary() is not None:
        return UvBuilder()
    if not _warned:
        log.warning("uv cannot run here; building pod environments with venv + pip (slower)")
        _warned = True
    return VenvBuilder()
