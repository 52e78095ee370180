"""Put each worker in a cgroup v2 of its own where this user may make one, so ``cgroup.kill`` ends all it started.

Probed once per client process: the cgroup2 mount (``/proc/self/mountinfo``) and our own cgroup
(the ``0::`` line of ``/proc/self/cgroup``). If we may create ``pypods-<client pid>`` there (a
delegated subtree, as systemd gives a user's services) and the kernel has ``cgroup.kill`` (5.14+),
each worker is moved into ``pypods-<client pid>/<worker pid>`` right after it starts, and killing
it kills every process in that cgroup at once: also those that left its session and were orphaned
after it died, which no walk from the worker can find. Anything refused turns this off silently;
the subreaper walk (``_worker/reaper.py``) and the group kill apply either way.
"""

from __future__ import annotations

import atexit
import os
import sys
import time
from pathlib import Path

from . import forking

_UNPROBED = Path("/nonexistent/unprobed")
_base: Path | None = _UNPROBED


def _forget_base() -> None:
    global _base
    _base = _UNPROBED  # a forked child makes its own (pypods-<its pid>), never uses the parent's


forking.on_fork(_forget_base)


def probe() -> Path | None:
    """Where this process puts its workers' cgroups (made now if needed), or None: no cgroups here."""
    global _base
    if _base is _UNPROBED:
        _base = _make_base()
    return _base


def _make_base() -> Path | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        ours = next(
            line[3:].strip() for line in Path("/proc/self/cgroup").read_text().splitlines() if line[:3] == "0::"
        )
        mount = next(
            fields[4]
            for fields in (line.split() for line in Path("/proc/self/mountinfo").read_text().splitlines())
            if "-" in fields and fields[fields.index("-") + 1] == "cgroup2"
        )
    except (OSError, StopIteration, IndexError):
        return None
    parent = Path(mount) / ours.lstrip("/")
    base = parent / f"pypods-{os.getpid()}"
    try:
        base.mkdir(exist_ok=True)
    except OSError:
        return None
    sweep(parent)
    if not (base / "cgroup.kill").exists():
        _rmdir(base, 0)
        return None
    atexit.register(_rmdir, base, 0)  # runs after process.py's handler has ended the workers
    return base


def sweep(parent: Path | None = None) -> None:
    """Remove the emptied cgroups of clients that are gone (killed, or left by ``os._exit``: no atexit ran).

    Only those of dead client pids, and only empty ones: the kernel refuses to remove a cgroup that
    still has processes, so a worker that still runs keeps its cgroup.
    """
    if parent is None:
        base = probe()
        if base is None:
            return
        parent = base.parent
    try:
        stale = [entry for entry in parent.iterdir() if entry.name.startswith("pypods-")]
    except OSError:
        return
    for entry in stale:
        pid = entry.name[len("pypods-") :]
        if not pid.isdigit() or os.path.exists(f"/proc/{pid}"):
            continue
        try:
            workers = [child for child in entry.iterdir() if child.is_dir()]
        except OSError:
            continue
        for child in workers:
            _rmdir(child, 0)
        _rmdir(entry, 0)


class WorkerCgroup:
    """One worker's cgroup: ``enter`` it right after the spawn, ``kill`` all of it, ``remove`` it after."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def enter(cls, pid: int) -> WorkerCgroup | None:
        """Move process *pid* into a cgroup of its own; None where cgroups are not available to us."""
        base = probe()
        if base is None:
            return None
        path = base / str(pid)
        try:
            path.mkdir()
            (path / "cgroup.procs").write_text(f"{pid}\n")
        except OSError:
            _rmdir(path, 0)
            return None
        return cls(path)

    def kill(self) -> bool:
        """SIGKILL every process in the cgroup at once; False if the kernel refused."""
        try:
            (self.path / "cgroup.kill").write_text("1\n")
        except OSError:
            return False
        return True

    def remove(self) -> None:
        """Remove the (emptied) cgroup; its killed members may take a moment to leave it."""
        _rmdir(self.path, 1.0)


def _rmdir(path: Path, wait: float) -> None:
    deadline = time.monotonic() + wait
    while True:
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() >= deadline:
                return
            time.sleep(0.01)
