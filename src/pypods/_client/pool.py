"""N connections for one pod: least-busy pick, replacement, a crash brake, idle stop; sync and asyncio.

``Slots`` holds every rule (which slot to use, when a connection is dead, what counts as a crash, the
pool's ``PoolState``); ``WorkerPool`` and ``AsyncWorkerPool`` add only locking and the I/O of starting
and stopping, as httpx keeps everything but ``send`` in its base client. Any backend plugs in through
``spawn()``. Every wait of a call honours the one absolute ``deadline`` (``time.monotonic()``) the
loader computed when the user called.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import enum
import threading
import time
from typing import TYPE_CHECKING, Any, Generic, TypeVar, Union

from .._errors import PodClosedError, PodCrashedError, PodCrashLoopError, PodError, PodTimeoutError
from .base import AsyncConnection, Connection
from .brake import CrashBrake
from .connection import NotSentError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

C = TypeVar("C", bound=Union[Connection, AsyncConnection])
DRAIN_STEP = 0.05  # seconds between two looks at a draining pool's open streams


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
            if conn is not None and self._busy[index] == 0 and conn.in_flight() == 0:
                self._slots[index] = None
                idle.append(conn)
        return idle

    def _idle_step(self) -> float:
        assert self._idle_timeout is not None
        return max(min(self._idle_timeout / 4, 5.0), 0.05)

    def _close_all(self, error: Exception | None = None) -> list[C]:
        if self._state is not PoolState.CLOSED:
            self._state = PoolState.CLOSED
            self._closed_by = error
        slots, self._slots = self._slots, [None] * len(self._slots)
        return [conn for conn in slots if conn is not None]


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(deadline - time.monotonic(), 0.0)


class WorkerPool(Slots[Connection]):
    """Serve one pod with ``size`` connections from ``spawn()``, started lazily and replaced when they die."""

    def __init__(
        self,
        pod: str,
        spawn: Callable[[], Connection],
        size: int = 1,
        idle_timeout: float | None = None,
        brake: CrashBrake | None = None,
    ) -> None:
        super().__init__(pod, size, idle_timeout, brake)
        self._spawn = spawn
        self._lock = threading.Lock()  # held only for decisions, never while a worker starts
        self._starts: list[concurrent.futures.Future[Connection] | None] = [None] * size  # one start per slot
        self._stopped = threading.Event()  # set by close(): the idle reaper ends at once, not at its next look
        if idle_timeout is not None:
            threading.Thread(target=self._reap_idle, name=f"pypods-{pod}-idle", daemon=True).start()

    def start(self, count: int | None = None, deadline: float | None = None) -> None:
        """Start workers now (all of them by default) rather than on the first call, waiting until *deadline*."""
        for index in range(count if count is not None else self.size):
            self._ensure(index, deadline, "(start)", None)

    def _ensure(self, index: int, deadline: float | None, name: str, timeout: float | None) -> tuple[Connection, bool]:
        """The live connection in slot *index* and whether this call started it; a start runs in its own
        thread (bounded by ``start_timeout``), so a call's deadline ends only its wait for it."""
        with self._lock:
            conn, old = self._live(index)
            if conn is not None:
                return conn, False
            refused = self._refused()
            start = self._starts[index]
            launch = start is None and refused is None
            if launch:
                start = self._starts[index] = concurrent.futures.Future()
        if refused is not None:
            if old is not None:
                old.close(kill=True)
            raise refused
        assert start is not None
        if launch:
            threading.Thread(
                target=self._start, args=(index, start, old), name=f"pypods-{self.pod}-start", daemon=True
            ).start()
        try:
            return start.result(_remaining(deadline)), launch
        except concurrent.futures.TimeoutError:
            raise self._start_timeout(name, timeout) from None

    def _start(self, index: int, start: concurrent.futures.Future[Connection], old: Connection | None) -> None:
        try:
            if old is not None:
                old.close(kill=True)
            fresh = self._spawn()
        except BaseException as exc:
            with self._lock:
                self._starts[index] = None
                self._start_failed(exc)
            start.set_exception(exc)
            return
        with self._lock:
            self._starts[index] = None
            installed = self._install(index, fresh)
        if not installed:
            fresh.close(kill=True)
            start.set_exception(PodClosedError(f"pod {self.pod!r} was closed"))
        else:
            start.set_result(fresh)

    def call(
        self,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        deadline: float | None = None,
    ) -> Any:
        """Run *name* on the least busy worker by *deadline* (default: *timeout* from now); a worker found
        dead before the send is replaced once.

        Raises:
            PoolRetired: the pool is draining for a reload (internal: the loader uses the current pool).
        """
        if deadline is None and timeout is not None:
            deadline = time.monotonic() + timeout
        with self._lock:  # the idle reaper and drain decide under the same lock, after this pick
            probe = self._admit()
            index, conn = self._pick()
        error: BaseException | None = None
        try:
            return self._run(index, conn, name, args, kwargs, timeout, deadline)
        except BaseException as exc:
            error = exc
            raise
        finally:
            with self._lock:
                self._done(index)
                self._ended(probe, error)

    def _run(
        self,
        index: int,
        conn: Connection | None,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        deadline: float | None,
    ) -> Any:
        fresh = False
        for attempt in (1, 2):
            if conn is None:
                conn, fresh = self._ensure(index, deadline, name, timeout)
            try:
                return conn.call(name, args, kwargs, timeout, deadline=deadline)
            except NotSentError as exc:
                self._drop(index, conn, exc)
                if attempt == 2:
                    raise self._resend_failed(exc, fresh) from exc
                conn = None
            except PodCrashedError as exc:
                self._drop(index, conn, exc)  # counted toward the brake now, not at the next pick
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _drop(self, index: int, conn: Connection, error: PodError) -> None:
        with self._lock:
            old = self._retire(index, conn, error)
        if old is not None:
            old.close(kill=True)

    def _reap_idle(self) -> None:
        while not self._stopped.wait(self._idle_step()) and self._state is not PoolState.CLOSED:
            with self._lock:
                idle = self._idle()
            for conn in idle:
                conn.close()

    def drain(self, then: Callable[[], None] | None = None) -> None:
        """Take no more calls (they go to the pod's current pool); close once those in flight ended."""
        with self._lock:
            if self._state is not PoolState.CLOSED:
                self._state = PoolState.DRAINING
        if self.in_flight() == 0:
            self._drained(then)
        else:
            threading.Thread(target=self._drained, args=(then,), name=f"pypods-{self.pod}-drain", daemon=True).start()

    def _drained(self, then: Callable[[], None] | None) -> None:
        while self.in_flight() > 0 and self._state is PoolState.DRAINING:
            time.sleep(DRAIN_STEP)
        with self._lock:  # a call that took this pool just before the reload still goes on (PoolRetired)
            conns = self._close_all(PoolRetired())
        self._stopped.set()
        for conn in conns:
            conn.close()
        if then is not None:
            then()

    def close(self) -> None:
        """Stop every worker; later calls raise PodClosedError."""
        with self._lock:
            conns = self._close_all()
        self._stopped.set()
        for conn in conns:
            conn.close()


class AsyncWorkerPool(Slots[AsyncConnection]):
    """The asyncio twin of ``WorkerPool``: ``spawn``, ``call`` and ``aclose`` are awaited."""

    def __init__(
        self,
        pod: str,
        spawn: Callable[[], Awaitable[AsyncConnection]],
        size: int = 1,
        idle_timeout: float | None = None,
        brake: CrashBrake | None = None,
    ) -> None:
        super().__init__(pod, size, idle_timeout, brake)
        self._spawn = spawn
        self._starts: list[asyncio.Task[AsyncConnection] | None] = [None] * size  # one start per slot
        self._tasks: set[asyncio.Task[Any]] = set()  # strong references: the loop keeps only weak ones
        if idle_timeout is not None:
            self._keep(asyncio.get_running_loop().create_task(self._reap_idle()))

    def _keep(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start(self, count: int | None = None, deadline: float | None = None) -> None:
        for index in range(count if count is not None else self.size):
            await self._ensure(index, deadline, "(start)", None)

    async def _ensure(
        self, index: int, deadline: float | None, name: str, timeout: float | None
    ) -> tuple[AsyncConnection, bool]:
        conn, old = self._live(index)
        if conn is not None:
            return conn, False
        refused = self._refused()
        if refused is not None:
            if old is not None:
                await old.aclose(kill=True)
            raise refused
        start = self._starts[index]
        launch = start is None
        if start is None:
            start = self._starts[index] = asyncio.get_running_loop().create_task(self._start(index, old))
            start.add_done_callback(lambda task: task.cancelled() or task.exception())  # retrieved
        try:
            return await asyncio.wait_for(asyncio.shield(start), _remaining(deadline)), launch
        except asyncio.TimeoutError:
            raise self._start_timeout(name, timeout) from None

    async def _start(self, index: int, old: AsyncConnection | None) -> AsyncConnection:
        try:
            if old is not None:
                await old.aclose(kill=True)
            fresh = await self._spawn()
        except BaseException as exc:
            self._start_failed(exc)
            raise
        finally:
            self._starts[index] = None
        if not self._install(index, fresh):
            await fresh.aclose(kill=True)
            raise PodClosedError(f"pod {self.pod!r} was closed")
        return fresh

    async def call(
        self,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        deadline: float | None = None,
    ) -> Any:
        if deadline is None and timeout is not None:
            deadline = time.monotonic() + timeout
        probe = self._admit()
        index, conn = self._pick()
        error: BaseException | None = None
        try:
            fresh = False
            for attempt in (1, 2):
                if conn is None:
                    conn, fresh = await self._ensure(index, deadline, name, timeout)
                try:
                    return await conn.call(name, args, kwargs, timeout, deadline=deadline)
                except NotSentError as exc:
                    await self._drop(index, conn, exc)
                    if attempt == 2:
                        raise self._resend_failed(exc, fresh) from exc
                    conn = None
                except PodCrashedError as exc:
                    await self._drop(index, conn, exc)
                    raise
            raise AssertionError("unreachable")  # pragma: no cover
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._done(index)
            self._ended(probe, error)

    async def _drop(self, index: int, conn: AsyncConnection, error: PodError) -> None:
        old = self._retire(index, conn, error)
        if old is not None:
            await old.aclose(kill=True)

    async def _reap_idle(self) -> None:
        while self._state is not PoolState.CLOSED:
            await asyncio.sleep(self._idle_step())
            for conn in self._idle():
                await conn.aclose()

    def drain(self, then: Callable[[], None] | None = None) -> None:
        """Take no more calls (they go to the pod's current pool); close once those in flight ended."""
        if self._state is not PoolState.CLOSED:
            self._state = PoolState.DRAINING
        self._keep(asyncio.get_running_loop().create_task(self._drained(then)))

    async def _drained(self, then: Callable[[], None] | None) -> None:
        while self.in_flight() > 0 and self._state is PoolState.DRAINING:
            await asyncio.sleep(DRAIN_STEP)
        await self.aclose(cancel=False, retired=True)
        if then is not None:
            then()

    def abandon(self) -> None:
        """The pod was dropped without ``aclose()``: end its workers now, without awaiting."""
        for conn in self._close_all():
            abandon = getattr(conn, "abandon", None)  # a process connection kills its worker at once
            if abandon is not None:
                abandon()

    async def aclose(self, cancel: bool = True, retired: bool = False) -> None:
        conns = self._close_all(PoolRetired() if retired else None)
        if cancel:
            current = asyncio.current_task()
            for task in list(self._tasks):
                if task is not current:
                    task.cancel()
        await asyncio.gather(*(conn.aclose() for conn in conns), return_exceptions=True)
