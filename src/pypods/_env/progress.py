"""Tell the user what a build is doing: one line per step on stderr (terminal or not), and the log.

Jupyter, CI and IDEs give stderr no terminal, and a first build there used to be silent for
minutes; so lines are printed whatever stderr is. A failure is not printed here: it is raised, and
whoever catches it prints it once.
"""

from __future__ import annotations

import logging
import sys
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

log = logging.getLogger("pypods")


class BuildReport:
    """Print ``pypods: <pod>: <step>`` per build step, and ``ready`` at the end.

    Args:
        pod: the pod's name.
        show: None or True print the lines; False only logs them (``progress=False``).
        installer: let uv draw its own progress on a terminal (not when several builds run at once).
    """

    def __init__(self, pod: str, show: bool | None = None, installer: bool = True) -> None:
        self.pod = pod
        self.show = show is not False
        self.installer = installer  # False: never hand the terminal to uv (builds running side by side)
        self.started = time.perf_counter()
        self.steps = 0

    @property
    def live(self) -> bool:
        """True if the installer's own progress (downloads) should reach the user's terminal."""
        return self.show and self.installer and sys.stderr.isatty()

    def _say(self, text: str) -> None:
        if self.show:
            sys.stderr.write(f"pypods: {self.pod}: {text}\n")
            sys.stderr.flush()

    @contextmanager
    def step(self, text: str) -> Iterator[None]:
        begin = time.perf_counter()
        self.steps += 1
        log.debug("[%s] %s", self.pod, text)
        self._say(text)
        yield
        log.info("[%s] %s: done in %.2fs", self.pod, text, time.perf_counter() - begin)

    def done(self) -> None:
        """Say the pod is ready, if any step ran."""
        if self.steps:
            took = time.perf_counter() - self.started
            log.info("[%s] ready in %.2fs", self.pod, took)
            self._say(f"ready ({took:.2f}s)")

    def fail(self, text: str) -> None:
        """Log a failure at debug level only: the raised error is what the user sees, once."""
        log.debug("[%s] build failed: %s", self.pod, text)
