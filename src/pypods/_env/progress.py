"""Tell the user what a build is doing: a line per step with its time on a terminal, always in the log."""

from __future__ import annotations

import logging
import sys
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator

log = logging.getLogger("pypods")


class BuildReport:
    """Print build steps to stderr when it is a terminal (or when forced), and log them always."""

    def __init__(self, pod: str, show: bool | None = None) -> None:
        self.pod = pod
        self.show = sys.stderr.isatty() if show is None else show
        self._console: Any = None
        if self.show:
            from rich.console import Console

            self._console = Console(stderr=True, highlight=False)
        self.started = time.perf_counter()

    @contextmanager
    def step(self, text: str) -> Iterator[None]:
        begin = time.perf_counter()
        log.info("[%s] %s", self.pod, text)
        if self._console is not None:
            with self._console.status(f"[bold]{self.pod}[/]: {text}", spinner="dots"):
                yield
            took = time.perf_counter() - begin
            self._console.print(f"[green]✓[/] [bold]{self.pod}[/]: {text} [dim]({took:.2f}s)[/]")
        else:
            yield
            took = time.perf_counter() - begin
        log.info("[%s] %s: done in %.2fs", self.pod, text, took)

    def fail(self, text: str) -> None:
        log.error("[%s] %s", self.pod, text)
        if self._console is not None:
            self._console.print(f"[red]✗[/] [bold]{self.pod}[/]: {text}")
