"""Say, in a crash report, who ended a worker and why as far as the client knows, and its peak RSS."""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

from .._errors import describe_exit
from .limits import human

if TYPE_CHECKING:
    from collections.abc import Sequence

# Signals a process gets from its own fault (or abort), not from someone else's kill.
FAULTS = {
    getattr(signal, name)
    for name in ("SIGSEGV", "SIGBUS", "SIGILL", "SIGFPE", "SIGABRT", "SIGSYS", "SIGTRAP")
    if hasattr(signal, name)
}


def explain(
    code: int | None,
    killed_by: str,
    memory: int | None,
    peaks: Sequence[int | None],
    cgroup_oom: bool,
    killed_at: int | None,
) -> str:
    """The note after ``worker (pid N) died: <status>``.

    Args:
        code: the exit status as ``Popen.returncode`` (negative: a signal), None if unknown.
        killed_by: why pypods ended the worker, if it did: ``"limit"``, ``"close"``, ``"kill"`` or "".
        memory: the worker's memory limit in bytes, if any.
        peaks: the peak sizes known (rusage, the watch, the cgroup's memory.peak): the largest of the
            last two, else rusage (which may include the parent's high-water mark at the fork).
        cgroup_oom: the kernel killed in the worker's cgroup for its memory.max (``memory.events``).
        killed_at: the size at which the memory watch killed it.
    """
    measured = [value for value in peaks[1:] if value]  # the watch and the cgroup saw this worker itself
    known = measured or [value for value in peaks[:1] if value]
    peak = f"peak RSS {human(max(known))}" if known else "peak RSS unknown"
    limit = human(memory)
    if cgroup_oom:
        return (f"it exceeded its memory limit of {limit} (memory setting, enforced as the cgroup's "
                f"memory.max): the kernel killed it; {peak}")  # fmt: skip
    if killed_by == "limit":
        return (
            f"it exceeded its memory limit of {limit} (memory setting): pypods killed it at {human(killed_at)}; {peak}"
        )
    if killed_by == "close":
        return f"pypods killed it while closing the pod; {peak}"
    if killed_by:
        return f"pypods killed it (a call timed out, or the worker broke the protocol); {peak}"
    if code is not None and code < 0:
        if -code in FAULTS:
            return f"the worker crashed by itself ({describe_exit(code)}: a fault in native code or an abort); {peak}"
        return f"killed from outside the client (for example by the kernel's OOM killer); {peak}"
    return peak
