"""N workers for one pod: least-busy dispatch, replacement of dead workers, a crash-loop brake, idle stop."""

from __future__ import annotations

import collections
import threading
import time
from typing import TYPE_CHECKING, Any

from .._errors import PodClosedError, PodCrashedError
from .connection import NotSentError, ProcessConnection

if TYPE_CHECKING:
    from collections.abc import Callable

CRASH_LIMIT = 5
CRASH_WINDOW = 10.0


class CrashBrake:
    """Stop restarting a pod whose workers keep dying: CRASH_LIMIT crashes within CRASH_WINDOW seconds."""

    def __init__(self, pod: str) -> None:
        self.pod = pod
        self._crashes: collections.deque[float] = collections.deque(maxlen=CRASH_LIMIT)

    def note(self) -> str | None:
        """Record a crash; return why to stop restarting, or None to go on."""
        now = time.monotonic()
        self._crashes.append(now)
        if len(self._crashes) == CRASH_LIMIT and now - self._crashes[0] < CRASH_WINDOW:
            return (
                f"pod {self.pod!r}: its worker crashed {CRASH_LIMIT} times in {CRASH_WINDOW:.0f}s; "
                "not restarting it again. Fix the cause, then load the pod again."
            )
        return None


class WorkerPool:
    """Serve one pod with ``size`` worker processes, started lazily and replaced when they die."""

    def __init__(
        self,
        pod: str,
        spawn: Callable[[], ProcessConnection],
        size: int = 1,
        idle_timeout: float | None = None,
    ) -> None:
        self.pod = pod
        self._spawn = spawn
        self._slots: list[ProcessConnection | None] = [None] * size
        self._lock = threading.Lock()
        self._brake = CrashBrake(pod)
        self._closed: str | None = None
        self._last_used = time.monotonic()
        self.description: list[dict[str, Any]] | None = None
        self._idle_timeout = idle_timeout
        if idle_timeout is not None:
            threading.Thread(target=self._reap_idle, name=f"pypods-{pod}-idle", daemon=True).start()

    @property
    def size(self) -> int:
        return len(self._slots)

    def start(self, count: int | None = None) -> None:
        """Start workers now (all of them by default) rather than on the first call."""
        with self._lock:
            for index in range(count if count is not None else len(self._slots)):
                self._ensure(index)

    def pids(self) -> list[int]:
        return [conn.worker.pid for conn in self._slots if conn is not None and conn.broken is None]

    def _ensure(self, index: int) -> ProcessConnection:
        """The live connection in slot *index*, starting or replacing it (hold ``_lock``)."""
        if self._closed is not None:
            raise PodClosedError(self._closed)
        conn = self._slots[index]
        if conn is not None and conn.broken is None and conn.worker.alive():
            return conn
        if conn is not None:
            self._slots[index] = None
            crashed = not isinstance(conn.broken, PodClosedError)  # died while idle counts too
            conn.close(kill=True)
            if crashed:
                self._note_crash()
        conn = self._spawn()
        self._slots[index] = conn
        if self.description is None:
            self.description = conn.description
        return conn

    def _note_crash(self) -> None:
        reason = self._brake.note()
        if reason is not None:
            self._closed = reason
            raise PodCrashedError(reason)

    def _pick(self) -> ProcessConnection:
        slots = self._slots
        if len(slots) == 1:
            conn = slots[0]
            if conn is not None and conn.broken is None:
                return conn
            with self._lock:
                return self._ensure(0)
        best, best_load = 0, None
        for index, conn in enumerate(slots):
            load = -1 if conn is None else conn.in_flight()
            if conn is not None and conn.broken is None and load == 0:
                return conn
            if best_load is None or load < best_load:
                best, best_load = index, load
        with self._lock:
            return self._ensure(best)

    def call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None) -> Any:
        """Run *name* on the least busy worker; a worker found dead before the send is replaced."""
        self._last_used = time.monotonic()
        conn = self._pick()
        try:
            return conn.call(name, args, kwargs, timeout)
        except NotSentError:
            with self._lock:
                conn = self._ensure(self._slots.index(conn) if conn in self._slots else 0)
            return conn.call(name, args, kwargs, timeout)

    def in_flight(self) -> int:
        return sum(conn.in_flight() for conn in self._slots if conn is not None)

    def _reap_idle(self) -> None:
        assert self._idle_timeout is not None
        step = max(min(self._idle_timeout / 4, 5.0), 0.05)
        while self._closed is None:
            time.sleep(step)
            if time.monotonic() - self._last_used < self._idle_timeout:
                continue
            with self._lock:
                for index, conn in enumerate(self._slots):
                    if conn is not None and conn.in_flight() == 0:
                        self._slots[index] = None
                        conn.close()

    def close(self) -> None:
        """Stop every worker; later calls raise PodClosedError."""
        with self._lock:
            self._closed = f"pod {self.pod!r} was closed"
            slots, self._slots = self._slots, [None] * len(self._slots)
        for conn in slots:
            if conn is not None:
                conn.close()
