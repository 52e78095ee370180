"""The pool's state and rules without locks or I/O: ``PoolState``, pick, replace, idle, and the brake's hooks.

``Slots`` is shared by the sync and asyncio pools of ``pool.py``, as httpx keeps everything but
``send`` in its base client: which slot a call uses, when a connection is dead, what counts as a
crash (the pod's ``brake.CrashBrake`` decides what follows), what the idle stop may end.
"""

from __future__ import annotations

import copy
import enum
import time
from typing import TYPE_CHECKING, Any, Generic, TypeVar, Union

from .._errors import (
    PodClosedError,
    PodCrashedError,
    PodCrashLoopError,
    PodError,
    PodObjectLostError,
    PodTimeoutError,
)
from .base import AsyncConnection, Connection
from .brake import CrashBrake

if TYPE_CHECKING:
    from .connection import NotSentError
    from .objects import ObjectRef

C = TypeVar("C", bound=Union[Connection, AsyncConnection])


class PoolState(enum.Enum):
    """Where a pool is in its life; calls are admitted only while OPEN (or TRIPPED and due a probe)."""

    OPEN = "open"
    DRAINING = "draining"  # replaced by a reload: calls in flight finish, new ones go to the current pool
    CLOSED = "closed"  # the user closed the pod (PodClosedError), or a drained pool ended
    TRIPPED = "tripped"  # the pod's crash brake tripped: calls fail fast until its backoff passed


class PoolRetired(Exception):  # an internal signal: it never reaches users
    """The pool was drained for a reload before this call was admitted: send it to the current pool."""


class Slots(Generic[C]):
    """The pool's state and rules, without locks or I/O (shared by the sync and asyncio pools).

    A call counts as in flight on its slot from the moment it is picked (``_busy``) until it returns,
    so neither the idle stop nor a drain ends a worker a call is still encoding arguments for.
    """

    def __init__(self, pod: str, size: int, idle_timeout: float | None, brake: CrashBrake | None) -> None:
        self.pod = pod
        self._slots: list[C | None] = [None] * size
        self._busy = [0] * size  # calls picked on each slot and not yet returned
        self._brake = brake if brake is not None else CrashBrake(pod)  # one per pod, shared by its reloads
        self._state = PoolState.OPEN  # OPEN, DRAINING or CLOSED; TRIPPED is read from the shared brake
        self._closed_by: Exception | None = None  # None: the user's close; PoolRetired: a drain ended
        self._idle_timeout = idle_timeout
        self._last_used = time.monotonic()
        self.description: list[dict[str, Any]] | None = None

    @property
    def size(self) -> int:
        return len(self._slots)

    @property
    def state(self) -> PoolState:
        if self._state is PoolState.OPEN and self._brake.tripped is not None:
            return PoolState.TRIPPED
        return self._state

    def _forget_slots(self) -> None:
        """In a forked child: the workers are the parent's; the next call starts the child's own."""
        self._slots = [None] * len(self._slots)
        self._busy = [0] * len(self._slots)
        self._brake.forget_after_fork()
        if self._state is PoolState.DRAINING:  # the parent drains it; the child's calls go to the current pool
            self._state, self._closed_by = PoolState.CLOSED, PoolRetired()

    def pids(self) -> list[int]:
        return [conn.pid for conn in self._slots if conn is not None and conn.broken is None]

    def in_flight(self) -> int:
        """Calls picked and not returned, and open streams (the larger of the two on each slot)."""
        return sum(max(busy, conn.in_flight() if conn else 0) for busy, conn in zip(self._busy, self._slots))

    def _admit(self) -> bool:
        """Let a call in, or raise why not; True if it is the crash brake's probe after a backoff."""
        if self._state is PoolState.CLOSED:
            raise copy.copy(self._closed_by or PodClosedError(f"pod {self.pod!r} was closed"))
        if self._state is PoolState.DRAINING:
            raise PoolRetired
        return self._brake.admit()

    def _pick(self) -> tuple[int, C | None]:
        """The slot for an admitted call, counted busy from now: an idle live worker, else an empty
        slot (start one there), else the least busy worker.

        Returns the slot and its live connection, or None when the caller must start one there (or
        wait for the start under way).
        """
        self._last_used = time.monotonic()
        chosen = free = best = starting = None
        best_load = 0
        for index, conn in enumerate(self._slots):
            if conn is not None and conn.broken is None:
                load = max(self._busy[index], conn.in_flight())
                if load == 0:
                    chosen = index
                    break
                if best is None or load < best_load:
                    best, best_load = index, load
            elif self._busy[index] == 0:
                free = index if free is None else free
            elif starting is None or self._busy[index] < self._busy[starting]:
                starting = index  # callers already wait for a start there
        for candidate in (chosen, free, best, starting):
            if candidate is not None:
                index = candidate
                break
        self._busy[index] += 1
        conn = self._slots[index]
        return index, conn if conn is not None and conn.broken is None else None

    def _done(self, index: int) -> None:
        self._busy[index] -= 1
        self._last_used = time.monotonic()

    def _live(self, index: int) -> tuple[C | None, C | None]:
        """Slot *index*'s connection if usable, else ``(None, the dead one to close or None)``."""
        conn = self._slots[index]
        if conn is not None and conn.broken is None:
            return conn, None
        return None, (self._retire(index, conn) if conn is not None else None)

    def _refused(self) -> Exception | None:
        """Why no worker may start now: the pod was closed, or retiring a dead one tripped the brake."""
        if self._state is PoolState.CLOSED:
            return copy.copy(self._closed_by or PodClosedError(f"pod {self.pod!r} was closed"))
        try:
            self._brake.check()
        except PodCrashLoopError as exc:
            return exc
        return None

    def _retire(self, index: int, conn: C, error: PodError | None = None) -> C | None:
        """Take dead *conn* out of slot *index* once (the caller closes it); a crash feeds the brake."""
        if self._slots[index] is not conn:
            return None  # another call retired it already (and counted its crash)
        self._slots[index] = None
        crash = conn.broken if conn.broken is not None else error
        if isinstance(crash, PodCrashedError):
            self._brake.crashed(crash)
        return conn

    def _start_failed(self, error: BaseException) -> None:
        """A worker died while it started: that is a crash too (a pod that segfaults on import)."""
        if isinstance(error, PodCrashedError) and self._state is not PoolState.CLOSED:
            self._brake.crashed(error)

    def _install(self, index: int, conn: C) -> bool:
        """Put a fresh connection in slot *index*; False if the pool was closed while it started."""
        if self._state is PoolState.CLOSED:
            return False  # the caller closes it: no worker outlives close()
        self._last_used = time.monotonic()  # a worker just started is not idle yet
        self._slots[index] = conn
        if self.description is None:
            self.description = conn.description
        return True

    def _ended(self, probe: bool, error: BaseException | None) -> None:
        """After an admitted call: the brake's probe re-arms it unless its worker crashed."""
        if probe:
            self._brake.probed(crashed=isinstance(error, (PodCrashedError, PodCrashLoopError)))

    def _start_timeout(self, name: str, timeout: float | None) -> PodTimeoutError:
        return PodTimeoutError(
            f"pod {self.pod!r}, function {name!r}: no answer within {timeout}s: its worker was still starting "
            "(the start goes on, bounded by start_timeout, for the next calls)"
        )

    def _resend_failed(self, exc: NotSentError, fresh: bool) -> PodCrashedError:
        what = "a fresh worker was gone again" if fresh else "the worker was gone"
        return PodCrashedError(
            f"pod {self.pod!r}: {what} before the call was sent: {exc}", returncode=exc.returncode, stderr=exc.stderr
        )

    def _idle(self) -> list[C]:
        """Connections to stop because the pod has been idle for ``idle_timeout`` (none busy or streaming)."""
        if self._idle_timeout is None or time.monotonic() - self._last_used < self._idle_timeout:
            return []
        idle = []
        for index, conn in enumerate(self._slots):
            if conn is not None and self._busy[index] == 0 and conn.in_flight() == 0 and not _holds_objects(conn):
                self._slots[index] = None
                idle.append(conn)
        return idle

    def _admit_object(self, ref: ObjectRef) -> None:
        """Let a call on live object *ref* in (counted busy on its slot), or raise why not.

        A draining pool still serves its live objects: they exist only in its workers.
        """
        if self._state is PoolState.CLOSED and isinstance(self._closed_by, PoolRetired):
            raise PodObjectLostError(f"pod {self.pod!r}: {ref.label()} is lost: the pod reloaded (its code changed)")
        if self._state is PoolState.CLOSED:
            raise copy.copy(self._closed_by or PodClosedError(f"pod {self.pod!r} was closed"))
        conn: Any = ref.conn
        current: Any = self._slots[ref.index] if 0 <= ref.index < len(self._slots) else None
        if conn is None or current is not conn or conn.broken is not None:
            why = conn.broken if conn is not None and conn.broken is not None else "it was stopped"
            raise PodObjectLostError(
                f"pod {self.pod!r}: {ref.label()} is lost: its worker (pid {getattr(conn, 'pid', '?')}) ended: {why}"
            )
        self._busy[ref.index] += 1
        self._last_used = time.monotonic()

    def _took_objects(self, exc: PodTimeoutError, ref: ObjectRef) -> PodTimeoutError:
        return PodTimeoutError(f"{exc}; its live objects ({ref.label()} among them) were lost with it")

    def _idle_step(self) -> float:
        assert self._idle_timeout is not None
        return max(min(self._idle_timeout / 4, 5.0), 0.05)

    def _close_all(self, error: Exception | None = None) -> list[C]:
        if self._state is not PoolState.CLOSED:
            self._state = PoolState.CLOSED
            self._closed_by = error
        slots, self._slots = self._slots, [None] * len(self._slots)
        return [conn for conn in slots if conn is not None]


def remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(deadline - time.monotonic(), 0.0)


def _holds_objects(conn: Any) -> bool:
    """Whether *conn*'s worker holds live objects (the idle stop must not end them)."""
    ledger = getattr(getattr(conn, "proto", None), "objects", None)
    return ledger is not None and bool(ledger.live)
