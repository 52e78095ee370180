"""Edit and go: notice that a loaded pod's code changed, cheaply (a few ``stat`` calls every half second).

The pod's folder is the pod's to shape, and the walk runs on the caller's thread at each call: it
is bounded (``MAX_DEPTH`` folders deep, ``MAX_ENTRIES`` entries, iterative so no ``RecursionError``)
and any error in it means "no reload", logged, never an exception in the user's call.
"""

from __future__ import annotations

import collections
import logging
import os
import stat
import sys
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

CHECK_EVERY = 0.5  # seconds between two looks at the files
MAX_DEPTH = 16  # folders below the pod's folder that are searched for modules
MAX_ENTRIES = 10_000  # directory entries looked at per walk; the rest is not watched
_SKIP = {"venv", ".pypods", "__pycache__", ".git"}
log = logging.getLogger("pypods")


def interactive() -> bool:
    """True in a REPL, ``python -i`` or IPython/Jupyter: where reloading on edit is the default."""
    if sys.flags.interactive or hasattr(sys, "ps1"):
        return True
    return "IPython" in sys.modules and getattr(sys.modules["IPython"], "get_ipython", lambda: None)() is not None


def pod_sources(pod_dir: Path) -> list[str]:
    """The pod's own Python files: ``pod.py`` and the modules of its folder (not its venv).

    Iterative and bounded: folders deeper than ``MAX_DEPTH`` and entries past ``MAX_ENTRIES`` are
    not searched (logged once per walk); symlinked folders are not entered; unreadable folders skipped.
    Breadth first, so the cap cuts the deepest folders; ``pod.py`` is watched even past the cap
    (a pod folder with 20,000 data files at its top still reloads on an edit of ``pod.py``).
    """
    top = os.path.join(os.fspath(pod_dir), "pod.py")
    found: list[str] = [top] if _regular(top) else []
    pending = collections.deque([(os.fspath(pod_dir), 0)])
    entries = 0
    while pending:
        folder, depth = pending.popleft()
        try:
            with os.scandir(folder) as listing:
                for entry in listing:
                    entries += 1
                    if entries > MAX_ENTRIES:
                        log.warning(
                            "pypods: %r has over %d entries; watching only the first", str(pod_dir), MAX_ENTRIES
                        )
                        return sorted(found)
                    if entry.is_dir(follow_symlinks=False):
                        if entry.name in _SKIP or entry.name.startswith("."):
                            continue
                        if depth < MAX_DEPTH:
                            pending.append((entry.path, depth + 1))
                        else:
                            log.warning("pypods: not watching %r: over %d folders deep", entry.path, MAX_DEPTH)
                    elif entry.name.endswith(".py") and entry.path != top and _file(entry):
                        found.append(entry.path)
        except OSError:
            continue  # vanished or unreadable: nothing to watch there
    return sorted(found)


def _regular(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _file(entry: os.DirEntry[str]) -> bool:
    try:
        return stat.S_ISREG(entry.stat().st_mode)  # a symlinked module counts, a FIFO named x.py does not
    except OSError:
        return False


class SourceWatch:
    """Remembers the stat of a pod's sources; ``changed()`` says (at most every CHECK_EVERY s) if they moved.

    The folder is walked once (and again after each change); each check then only stats the files
    found, so a pod folder holding large data costs nothing per call.
    """

    def __init__(self, pod_dir: Path) -> None:
        self.pod_dir = pod_dir
        self._next = 0.0
        # One look at a time: two threads calling at once must not both see one edit (two reloads).
        self._looking = threading.Lock()
        self._files = self._sources() or []
        self._seen = self._snapshot()

    def _sources(self) -> list[str] | None:
        """The pod's sources, or None (logged) if the walk failed: the pod's folder never breaks a call."""
        try:
            return pod_sources(self.pod_dir)
        except Exception as exc:
            log.warning(
                "pypods: cannot watch %s for edits (%s: %r); no reload", self.pod_dir, type(exc).__name__, str(exc)
            )
            return None

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
        """Whether the sources changed since the last look (never raises: an error is "no", logged).

        Thread-safe: while one thread looks, the others get "no" at once (the looking one reloads).
        """
        if not self._looking.acquire(blocking=False):
            return False
        try:
            return self._look()
        finally:
            self._looking.release()

    def _look(self) -> bool:
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + CHECK_EVERY
        try:
            if self._snapshot() == self._seen:
                return False
            files = self._sources()  # a new module may have come with the change
            if files is not None:
                self._files = files
            self._seen = self._snapshot()  # after a failed walk: the same files, not looked at again until they move
        except Exception as exc:
            log.warning(
                "pypods: cannot check %s for edits (%s: %r); no reload", self.pod_dir, type(exc).__name__, str(exc)
            )
            return False
        return files is not None
