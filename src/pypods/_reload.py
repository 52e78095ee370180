"""Edit and go: notice that a loaded pod's code changed, cheaply (a few ``stat`` calls every half second)."""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

CHECK_EVERY = 0.5  # seconds between two looks at the files
_SKIP = {"venv", ".pypods", "__pycache__", ".git"}


def interactive() -> bool:
    """True in a REPL, ``python -i`` or IPython/Jupyter: where reloading on edit is the default."""
    if sys.flags.interactive or hasattr(sys, "ps1"):
        return True
    return "IPython" in sys.modules and getattr(sys.modules["IPython"], "get_ipython", lambda: None)() is not None


def pod_sources(pod_dir: Path) -> list[str]:
    """The pod's own Python files: ``pod.py`` and the modules of its folder (not its venv)."""
    found: list[str] = []
    for folder, dirs, files in os.walk(pod_dir):
        dirs[:] = [d for d in dirs if d not in _SKIP and not d.startswith(".")]
        found.extend(os.path.join(folder, name) for name in files if name.endswith(".py"))
    return sorted(found)


class SourceWatch:
    """Remembers the stat of a pod's sources; ``changed()`` says (at most every CHECK_EVERY s) if they moved.

    The folder is walked once (and again after each change); each check then only stats the files
    found, so a pod folder holding large data costs nothing per call.
    """

    def __init__(self, pod_dir: Path) -> None:
        self.pod_dir = pod_dir
        self._next = 0.0
        self._files = pod_sources(pod_dir)
        self._seen = self._snapshot()

    def _snapshot(self) -> dict[str, tuple[int, int]]:
        seen = {}
        for path in self._files:
            try:
                info = os.stat(path)
            except OSError:
                continue
            seen[path] = (info.st_mtime_ns, info.st_size)
        return seen

    def changed(self) -> bool:
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + CHECK_EVERY
        if self._snapshot() == self._seen:
            return False
        self._files = pod_sources(self.pod_dir)  # a new module may have come with the change
        self._seen = self._snapshot()
        return True
