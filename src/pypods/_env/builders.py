"""Build a pod's ``venv/`` from its requirements: ``UvBuilder`` (fast, the default) or ``VenvBuilder``.

Both resolve ``requirements.txt`` into ``requirements.lock`` (kept when it is already current) and
then make the environment hold exactly the locked set, changing only the difference.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
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


def requirements_digest(layout: PodLayout, interpreter: Interpreter) -> str:
    """What a lock was resolved from: the requirement lines and the Python ``major.minor``."""
    text = layout.requirements.read_text(encoding="utf-8") if layout.requirements.exists() else ""
    major, minor = interpreter.version[:2]
    basis = "\n".join(requirement_lines(text)) + f"\npython={major}.{minor}"
    return hashlib.sha256(basis.encode()).hexdigest()


def lock_is_current(layout: PodLayout, digest: str) -> bool:
    if not layout.lock.exists():
        return False
    head = layout.lock.read_text(encoding="utf-8").splitlines()[:3]
    return any(line == LOCK_MARK + digest for line in head)


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


def _fail(layout: PodLayout, what: str, output: str) -> PodBuildError:
    """A build error naming the pod, the requirements that uv's output mentions, and its last lines."""
    text = layout.requirements.read_text(encoding="utf-8") if layout.requirements.exists() else ""
    reqs = [line for line in requirement_lines(text) if not line.startswith("-")]
    names = [req for req in reqs if (m := _NAME.match(req)) and m[1].lower() in output.lower()]
    named = ", ".join(names or reqs) or "(no requirements)"
    tail = "\n".join(output.strip().splitlines()[-15:])
    message = (
        f"pod {layout.name!r}: {what} failed for requirement(s) {named} "
        f"(from {layout.requirements}).\nThe installer said:\n{tail}\n"
        "Fix requirements.txt; the pod is not ready until a build succeeds."
    )
    return PodBuildError(message, pod=layout.name, output=output)


def _add_options(layout: PodLayout, lock_text: str, digest: str) -> str:
    """Stamp the lock with its digest and carry index options over (uv emits only some of them)."""
    text = layout.requirements.read_text(encoding="utf-8") if layout.requirements.exists() else ""
    options = [line for line in requirement_lines(text) if _OPTION.match(line + " ")]
    existing = set(lock_text.splitlines())
    header = [LOCK_MARK + digest] + [line for line in options if line not in existing]
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
        digest = requirements_digest(layout, interpreter)
        if not lock_is_current(layout, digest):
            self._lock(layout, python, digest, report)
        with report.step("installing locked requirements"):
            result = tools.run_uv(
                ["pip", "sync", "--no-config", "--allow-empty-requirements", "--python", python, str(layout.lock)], cwd
            )
            if result.returncode != 0:
                raise _fail(layout, "installing", result.stderr + result.stdout)

    def _lock(self, layout: PodLayout, python: str, digest: str, report: BuildReport) -> None:
        text = layout.requirements.read_text(encoding="utf-8") if layout.requirements.exists() else ""
        if not any(not line.startswith("-") for line in requirement_lines(text)):
            layout.lock.write_text(_add_options(layout, "", digest), encoding="utf-8")
            return
        with report.step("resolving requirements"):
            # The old lock, if any, stays as uv's preference: versions only move where they must.
            args = ["pip", "compile", "--no-config", "--python", python, "--emit-find-links", "--emit-index-url"]
            args += ["--quiet", "--no-header", str(layout.requirements), "-o", str(layout.lock)]
            result = tools.run_uv(args, str(layout.pod_dir))
            if result.returncode != 0:
                raise _fail(layout, "resolving", result.stderr + result.stdout)
            locked = layout.lock.read_text(encoding="utf-8") if layout.lock.exists() else ""
            locked = "\n".join(line for line in locked.splitlines() if not line.startswith(LOCK_MARK))
            layout.lock.write_text(_add_options(layout, locked.lstrip("\n"), digest), encoding="utf-8")


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
        digest = requirements_digest(layout, interpreter)
        current = lock_is_current(layout, digest)
        source = layout.lock if current else layout.requirements
        text = source.read_text(encoding="utf-8") if source.exists() else ""
        if any(not line.startswith("-") for line in requirement_lines(text)):
            with report.step("installing requirements with pip"):
                pip = [python, "-m", "pip", "install", "--disable-pip-version-check", "-q", "-r", str(source)]
                self._run(layout, pip, cwd, "installing")
        if not current:
            frozen = self._run(layout, [python, "-m", "pip", "freeze", "--exclude-editable"], cwd, "locking")
            layout.lock.write_text(_add_options(layout, frozen, digest), encoding="utf-8")

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
