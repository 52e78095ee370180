"""Put each worker in a cgroup v2 of its own where this user may make one, so ``cgroup.kill`` ends all it started.

Probed once per client process: the cgroup2 mount (``/proc/self/mountinfo``) and our own cgroup
(the ``0::`` line of ``/proc/self/cgroup``). If we may create ``pypods-<client pid>`` there (a
delegated subtree, as systemd gives a user's services) and the kernel has ``cgroup.kill`` (5.14+),
each worker is moved into ``pypods-<client pid>/<worker pid>`` right after it starts, and killing
it kills every process in that cgroup at once: also those that left its session and were orphaned
after it died, which no walk from the worker can find. Anything refused turns this off silently;
the subreaper walk (``_worker/reaper.py``) and the group kill apply either way.

A worker with a ``memory`` setting also gets ``memory.max`` (and ``memory.oom.group``, so the
kernel's OOM kill inside the cgroup takes the whole tree, and ``memory.swap.max = 0``, so the limit
is not dodged by swapping) where the memory controller can be enabled for ``pypods-<client pid>``:
then the kernel enforces it and ``memory.events`` (``oom_kill``) tells it was the limit. Where it
cannot (the controller is not delegated to us, cgroup v1 holds it), ``limits.py`` watches instead.
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
_memory: bool | None = None  # whether worker cgroups may take memory.max (probed with the base)


def _forget_base() -> None:
    global _base, _memory
    _base = _UNPROBED
    _memory = None  # a forked child makes its own (pypods-<its pid>), never uses the parent's


forking.on_fork(_forget_base)


def probe() -> Path | None:
    """Where this process puts its workers' cgroups (made now if needed), or None: no cgroups here."""
    global _base
    if _base is _UNPROBED:
        _base = _make_base()
    return _base


def memory_supported() -> bool:
    """Whether worker cgroups here may take ``memory.max``: the memory controller enabled below our base."""
    global _memory
    if _memory is None:
        base = probe()
        _memory = base is not None and _enable_memory(base)
    return _memory


def _enable_memory(base: Path) -> bool:
    try:
        if "memory" not in (base / "cgroup.controllers").read_text().split():
            return False
        (base / "cgroup.subtree_control").write_text("+memory\n")
        return "memory" in (base / "cgroup.subtree_control").read_text().split()
    except OSError:
        return False


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

    def __init__(self, path: Path, memory: int | None = None) -> None:
        self.path = path
        self.memory = memory  # the memory.max the kernel enforces here, or None

    @classmethod
    def enter(cls, pid: int, memory: int | None = None) -> WorkerCgroup | None:
        """Move process *pid* into a cgroup of its own, capped at *memory* bytes where the kernel can.

        None where cgroups are not available to us. The returned cgroup's ``memory`` is None when
        no cap could be set (the caller then watches the worker, ``limits.py``).
        """
        base = probe()
        if base is None:
            return None
        path = base / str(pid)
        try:
            path.mkdir()
        except OSError:
            return None
        capped = None
        if memory is not None and memory_supported():
            try:  # the cap before the move: the worker is never in the cgroup without it
                (path / "memory.max").write_text(f"{memory}\n")
                (path / "memory.oom.group").write_text("1\n")
                capped = memory
            except OSError:
                capped = None
            try:
                (path / "memory.swap.max").write_text("0\n")
            except OSError:
                pass  # no swap accounting: nothing to dodge the limit with
        try:
            (path / "cgroup.procs").write_text(f"{pid}\n")
        except OSError:
            _rmdir(path, 0)
            return None
        return cls(path, capped)

    def oom_killed(self) -> bool:
        """Whether the kernel killed a process here for the cgroup's memory.max (``memory.events`` oom_kill)."""
        try:
            for line in (self.path / "memory.events").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value) > 0
        except (OSError, ValueError):
            pass
        return False

    def peak(self) -> int | None:
        """The most memory the cgroup used (``memory.peak``, kernel 5.19+), or None."""
        try:
            return int((self.path / "memory.peak").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

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
