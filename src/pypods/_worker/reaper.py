"""End a process's every descendant for sure: a child subreaper, a walk of ``/proc``, stop, then kill.

Both sides use it (standard library only, Python 3.8 syntax). The worker makes itself a child
subreaper, so a process the pod started that loses its parent (a helper whose parent exited, a
double-forked daemon) is reparented to the worker rather than to init: it stays a descendant, which
``setsid()``/``setpgid()`` cannot undo, unlike membership of the worker's process group. Ending the
tree stops every descendant first (``SIGSTOP``; a stopped process cannot fork a new one), walking
again until no new one shows up, then kills them all. Linux only; elsewhere only the group kill
(``os.killpg``) of the callers applies.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Dict, List, Optional, Tuple

PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>
ROUNDS = 50  # walks of /proc at most: each stops what the last one found, so few are ever needed


def become_subreaper() -> bool:
    """Adopt our orphaned descendants (``prctl(PR_SET_CHILD_SUBREAPER)``); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError, ImportError):
        return False


def _table() -> Dict[int, Tuple[int, int]]:
    """``pid -> (ppid, pgrp)`` of every live (not zombie) process we can see."""
    table: Dict[int, Tuple[int, int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return table
    for entry in entries:
        if not entry.isdigit():
            continue
        stat = _stat(int(entry))
        if stat is not None:
            table[int(entry)] = stat
    return table


def _stat(pid: int) -> Optional[Tuple[int, int]]:
    try:
        with open("/proc/%d/stat" % pid, "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()  # the name may hold spaces and ")"
        if fields[0] in (b"Z", b"X"):
            return None
        return int(fields[1]), int(fields[2])  # state, ppid, pgrp
    except (OSError, ValueError, IndexError):
        return None


def descendants(root: int, group: bool = True, table: Optional[Dict[int, Tuple[int, int]]] = None) -> List[int]:
    """Live descendants of *root* (and, with *group*, the members of the group *root* leads), not *root*."""
    table = _table() if table is None else table
    children: Dict[int, List[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: List[int] = []
    seen = {root}
    frontier = [root]
    if group:
        frontier += [pid for pid, (_, pgrp) in table.items() if pgrp == root and pid != root]
    while frontier:
        pid = frontier.pop()
        if pid not in seen:
            seen.add(pid)
            found.append(pid)
        frontier.extend(child for child in children.get(pid, ()) if child not in seen)
    return found


def _open(pid: int) -> Optional[int]:
    """A pidfd for *pid* (Linux 5.3+, Python 3.9+), so a later signal cannot hit a reused pid."""
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return None
    try:
        return int(pidfd_open(pid))
    except OSError:
        return None


def _send(pid: int, pidfd: Optional[int], signum: int) -> None:
    try:
        send = getattr(signal, "pidfd_send_signal", None)
        if pidfd is not None and send is not None:
            send(pidfd, signum)
        else:
            os.kill(pid, signum)
    except OSError:
        pass


def end_tree(root: int, group: bool = True) -> None:
    """SIGKILL every descendant of *root* (see ``descendants``), stopping them all first; not *root*.

    A pid is signalled only while it still looks like a descendant after we hold a pidfd for it (where
    there are pidfds): a process that exited meanwhile and whose pid was reused is never hit.
    """
    if not os.path.isdir("/proc"):
        return
    held: Dict[int, Optional[int]] = {}
    try:
        for _ in range(ROUNDS):
            table = _table()
            fresh = [pid for pid in descendants(root, group, table) if pid not in held]
            if not fresh:
                break
            for pid in fresh:
                pidfd = _open(pid)
                if pidfd is not None and _stat(pid) != table[pid]:  # gone (or its pid reused) meanwhile
                    os.close(pidfd)
                    continue
                held[pid] = pidfd
                _send(pid, pidfd, signal.SIGSTOP)
        for pid, pidfd in held.items():
            _send(pid, pidfd, signal.SIGKILL)
    finally:
        for pidfd in held.values():
            if pidfd is not None:
                os.close(pidfd)
