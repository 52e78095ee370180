"""Cap a worker's memory where no cgroup can: sample its process tree's resident size and kill it at the limit.

One daemon thread per client process (started with the first watched worker, gone with the last)
reads ``/proc/<pid>/status`` of each watched worker and of its descendants (``task/*/children``)
every ``INTERVAL`` seconds: a bounded cost (a few reads per worker, 50 times a second) whatever the
pod does. A tree whose summed ``VmRSS`` passes its limit is killed at once, before the machine
runs short; the worker's ``VmHWM`` and the largest sum seen are its peak for the crash report. The
kernel's ``memory.max`` (``cgroups.py``) is preferred wherever it is available: it cannot be
outrun, and this watch can (an allocation faster than one interval goes past the limit by what
it touched in that interval).
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any, Protocol

from . import forking

INTERVAL = 0.02  # seconds between samples of a worker with a limit
PEAK_INTERVAL = 0.2  # ... of a worker watched only for its peak (one not our child: no rusage)


class Watched(Protocol):
    """What the watch needs of a worker (``process.WorkerProcess``)."""

    pid: int

    def over_limit(self, seen: int) -> None: ...


def human(size: int | None) -> str:
    """``209715200`` as ``'210 MB'`` (powers of 1000, as the sizes users write)."""
    if size is None:
        return "unknown"
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if size >= scale:
            text = f"{size / scale:.1f}".rstrip("0").rstrip(".")
            return f"{text} {unit}"
    return f"{size} bytes"


def _status(pid: int) -> tuple[int, int]:
    """VmRSS and VmHWM of *pid* in bytes (0, 0 if it is gone or a zombie)."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status", "rb") as file:
            for line in file:
                if line.startswith(b"VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith(b"VmHWM:"):
                    hwm = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return rss, hwm


def _descendants(pid: int, limit: int = 4096) -> list[int]:
    """*pid* and the processes below it (children of every thread), at most *limit* of them."""
    found = [pid]
    index = 0
    while index < len(found) and len(found) < limit:
        parent = found[index]
        index += 1
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children", "rb") as file:
                    found.extend(int(child) for child in file.read().split())
            except (OSError, ValueError):
                pass
    return found[:limit]


def sample(pid: int) -> tuple[int, int]:
    """The summed VmRSS of *pid*'s tree now, and *pid*'s own VmHWM (bytes)."""
    total = 0
    own_hwm = 0
    for index, member in enumerate(_descendants(pid)):
        rss, hwm = _status(member)
        total += rss
        if index == 0:
            own_hwm = hwm
    return total, own_hwm


class Peak:
    """The largest resident size seen of one worker (its tree's sum, or its own high-water mark)."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.value = 0
        self.killed_at: int | None = None  # the size that made the watch kill it

    def see(self, pid: int) -> int:
        total, hwm = sample(pid)
        self.value = max(self.value, total, hwm)
        return total


class _Watch:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.watched: weakref.WeakKeyDictionary[Any, Peak] = weakref.WeakKeyDictionary()
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None

    def add(self, worker: Watched, peak: Peak) -> None:
        with self.lock:
            self.watched[worker] = peak
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="pypods-memory-watch", daemon=True)
                self.thread.start()
        self.wake.set()

    def remove(self, worker: Watched) -> None:
        with self.lock:
            self.watched.pop(worker, None)

    def _run(self) -> None:
        while True:
            with self.lock:
                items = list(self.watched.items())
                if not items:
                    self.thread = None
                    return
            limited = False
            for worker, peak in items:
                seen = peak.see(worker.pid)
                if peak.limit is not None:
                    limited = True
                    if seen > peak.limit and peak.killed_at is None:
                        peak.killed_at = seen
                        worker.over_limit(seen)
            self.wake.wait(INTERVAL if limited else PEAK_INTERVAL)
            self.wake.clear()


_watch = _Watch()


def _new_watch() -> None:
    global _watch
    _watch = _Watch()  # the parent's thread is not in a forked child, nor are its workers ours


forking.on_fork(_new_watch)


def watch(worker: Watched, limit: int | None) -> Peak:
    """Sample *worker*'s tree from now on; with a *limit*, call ``worker.over_limit(size)`` once past it."""
    peak = Peak(limit)
    peak.see(worker.pid)
    _watch.add(worker, peak)
    return peak


def unwatch(worker: Watched) -> None:
    """Stop sampling *worker* (it ended)."""
    _watch.remove(worker)
