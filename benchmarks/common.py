"""Shared helpers for the benchmarks: interleaved timing, medians and p99, machine description, markdown."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

ROOT = Path(__file__).resolve().parent.parent


def interleaved(contenders: dict[str, Callable[[], object]], rounds: int, batch: int) -> dict[str, list[float]]:
    """Time each contender's call *batch* times per round, contenders in turn, so noise hits all alike."""
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, call in contenders.items():
            record = samples[name].append
            clock = time.perf_counter
            for _ in range(batch):
                began = clock()
                call()
                record(clock() - began)
    return samples


def rate(call: Callable[[], object], threads: int, total: int) -> float:
    """Calls per second when *threads* threads make *total* calls between them."""
    import threading

    per_thread = total // threads

    def work() -> None:
        for _ in range(per_thread):
            call()

    pool = [threading.Thread(target=work) for _ in range(threads)]
    began = time.perf_counter()
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return per_thread * threads / (time.perf_counter() - began)


def median(values: list[float]) -> float:
    return statistics.median(values)


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def fmt_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} cores, Python {sys.version.split()[0]}"


def table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def arguments(
    doc: str | None, argv: list[str] | None, extra: Callable[[argparse.ArgumentParser], object] | None = None
) -> argparse.Namespace:
    """The options every benchmark takes: ``--quick`` (a smoke run) and ``--write FILE``."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few iterations: a smoke test, not a measurement")
    parser.add_argument("--write", type=Path, help="write the tables into this markdown file")
    if extra is not None:
        extra(parser)
    return parser.parse_args(argv)


def measured_on(detail: str = "") -> str:
    """The line that opens every section: which machine, which day (and *detail*)."""
    return f"Measured on: {machine()}, {time.strftime('%Y-%m-%d')}{detail}.\n\n"


def publish(path: Path | None, title: str, body: str) -> None:
    """Print a section and, with ``--write``, put it into the markdown file."""
    print(body)
    if path is not None:
        write_section(path, title, body)


def write_section(path: Path, title: str, body: str) -> None:
    """Replace (or append) the section headed *title* in the markdown file at *path*."""
    text = path.read_text() if path.exists() else "# PyPods performance\n"
    marker = f"\n## {title}\n"
    start = text.find(marker)
    section = f"{marker}\n{body.strip()}\n"
    if start == -1:
        text = text.rstrip() + "\n" + section
    else:
        end = text.find("\n## ", start + len(marker))
        text = text[:start] + section + (text[end:] if end != -1 else "")
    path.write_text(text)
