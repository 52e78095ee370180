"""N connections for one pod: least-busy pick, replacement, a crash brake, idle stop; sync and asyncio.

``Slots`` holds every rule (which slot to use, when a connection is dead, what counts as a crash);
``WorkerPool`` and ``AsyncWorkerPool`` add only locking and the I/O of starting and stopping, as
httpx keeps everything but ``send`` in its base client. Any backend plugs in through ``spawn()``.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import threading
import time
from typing import TYPE_CHECKING, Any, Generic, TypeVar, Union

from .._errors import PodClosedError, PodCrashedError, PodCrashLoopError, PodError
from . import forking
from .base import AsyncConnection, Connection
from .connection import NotSentError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

CRASH_LIMIT = 5
CRASH_WINDOW = 10.0

C = TypeVar("C", bound=Union[Connection, AsyncConnection])


class CrashBrake:
    """Stop restarting a pod whose workers keep dying: CRASH_LIMIT crashes within CRASH_WINDOW seconds.

    Only crashes count (a worker that died, also while starting); timeouts, protocol errors and
    closes never do.
    """

    def __init__(self, pod: str) -> None:
        self.pod = pod
        self._crashes: collections.deque[tuple[float, str]] = collections.deque(maxlen=CRASH_LIMIT)

    def note(self, error: PodError | None) -> PodCrashLoopError | None:
        """Record a crash; return the error that stops restarting, or None to go on."""
        now = time.monotonic()
        first = str(error).split("\n", 1)[0] if error is not None else "died while idle"
        self._crashes.append((now, first))
        if len(self._crashes) == CRASH_LIMIT and now - self._crashes[0][0] < CRASH_WINDOW:
            crashes = [text for _, text in self._crashes]
            listed = "".join(f"\n  {i}. {text}" for i, text in enumerate(crashes, 1))
            return PodCrashLoopError(
                f"pod {self.pod!r}: its worker crashed {CRASH_LIMIT} times in {CRASH_WINDOW:.0f}s; not restarting "
                f"it again. Fix the cause, then load the pod again. The crashes:{listed}",
                crashes=crashes,
            )
        return None


class Slots(Generic[C]):
    """The pool's state and rules, without locks or I/O (shared by the sync and asyncio pools)."""

    def __init__(self, pod: str, size: int, idle_timeout: float | None) -> None:
        self.pod = pod
        self._slots: list[C | None] = [None] * size
        self._brake = CrashBrake(pod)
        self._closed: PodError | None = None
        self._idle_timeout = idle_timeout
        self._last_used = time.monotonic()
        self._pending: set[int] = set()  # slots whose worker is starting
        self.description: list[dict[str, Any]] | None = None

    @property
    def size(self) -> int:
        return len(self._slots)

    def pids(self) -> list[int]:
        return [conn.pid for conn in self._slots if conn is not None and conn.broken is None]

    def in_flight(self) -> int:
        return sum(conn.in_flight() for conn in self._slots if conn is not None)

    def _check_open(self) -> None:
        if self._closed is not None:
            raise copy.copy(self._closed)

    def _pick(self) -> tuple[int, C | None]:
        """The slot to use: an idle live worker, else an empty slot (start one), else the least busy,
        else a slot whose worker is starting (wait for it).

        Returns the slot and its connection, or None when the caller must start one there (or
        wait for the start under way).
        """
        self._last_used = time.monotonic()
        free: int | None = None
        starting: int | None = None
        best, best_load = 0, -1
        for index, conn in enumerate(self._slots):
            if conn is None or conn.broken is not None:
                if index in self._pending:
                    starting = index if starting is None else starting
                elif free is None:
                    free = index
                continue
            load = conn.in_flight()
            if load == 0:
                return index, conn
            if best_load < 0 or load < best_load:
                best, best_load = index, load
        if free is not None:
            return free, None
        if best_load < 0 and starting is not None:
            return starting, None
        return best, self._slots[best]

    def _live(self, index: int) -> tuple[C | None, C | None]:
        """Slot *index*'s connection if usable, else ``(None, the dead one to close or None)``."""
        self._check_open()
        conn = self._slots[index]
        if conn is not None and conn.broken is None:
            return conn, None
        old = self._retire(index) if conn is not None else None
        return None, old

    def _start_failed(self, error: BaseException) -> None:
        """A worker died while it started: that is a crash too (a pod that segfaults on import)."""
        if isinstance(error, PodCrashedError) and self._closed is None:
            stop = self._brake.note(error)
            if stop is not None:
                self._closed = stop

    def _retire(self, index: int) -> C | None:
        """Take a dead connection out of slot *index* (the caller closes it); a crash feeds the brake."""
        conn = self._slots[index]
        self._slots[index] = None
        if conn is not None and isinstance(conn.broken, PodCrashedError):
            stop = self._brake.note(conn.broken)
            if stop is not None:
                self._closed = stop
        return conn

    def _install(self, index: int, conn: C) -> bool:
        """Put a fresh connection in slot *index*; False if the pool was closed while it started."""
        if self._closed is not None:
            return False  # the caller closes it and raises: no worker outlives close()
        self._last_used = time.monotonic()  # a worker just started is not idle yet
        self._slots[index] = conn
        if self.description is None:
            self.description = conn.description
        return True

    def _idle(self) -> list[C]:
        """Connections to stop because the pod has been idle for ``idle_timeout``."""
        if self._idle_timeout is None or time.monotonic() - self._last_used < self._idle_timeout:
            return []
        idle = []
        for index, conn in enumerate(self._slots):
            if conn is not None and conn.in_flight() == 0:
                self._slots[index] = None
                idle.append(conn)
        return idle

    def _idle_step(self) -> float:
        assert self._idle_timeout is not None
        return max(min(self._idle_timeout / 4, 5.0), 0.05)

    def _forget_slots(self) -> None:
        """In a forked child: the workers are the parent's; the next call starts the child's own."""
        self._slots = [None] * len(self._slots)
        self._pending = set()
        self._brake = CrashBrake(self.pod)

    def _close_all(self) -> list[C]:
        if self._closed is None or not isinstance(self._closed, PodClosedError):
            self._closed = PodClosedError(f"pod {self.pod!r} was closed")
        slots, self._slots = self._slots, [None] * len(self._slots)
        return [conn for conn in slots if conn is not None]


def _resend_failed(pod: str, exc: NotSentError) -> PodCrashedError:
    return PodCrashedError(
        f"pod {pod!r}: a fresh worker was gone again before the call was sent: {exc}",
        returncode=exc.returncode,
        stderr=exc.stderr,
    )


class WorkerPool(Slots[Connection]):
    """Serve one pod with ``size`` connections from ``spawn()``, started lazily and replaced when they die."""

    def __init__(
        self, pod: str, spawn: Callable[[], Connection], size: int = 1, idle_timeout: float | None = None
    ) -> None:
        super().__init__(pod, size, idle_timeout)
        self._spawn = spawn
        self._lock = threading.Lock()  # held only for decisions, never while a worker starts
        self._starting = [threading.Lock() for _ in range(size)]  # one start per slot at a time
        self._stopped = threading.Event()  # set by close(): the idle reaper ends at once, not at its next look
        if idle_timeout is not None:
            threading.Thread(target=self._reap_idle, name=f"pypods-{pod}-idle", daemon=True).start()
        forking.track(self)

    def _forget_after_fork(self) -> None:
        """In a forked child (``forking.py``): locks anew (a parent's thread may have held one), no workers."""
        self._lock = threading.Lock()
        self._starting = [threading.Lock() for _ in self._starting]
        self._forget_slots()
        self._stopped = threading.Event()
        if self._idle_timeout is not None and self._closed is None:  # threads do not survive a fork
            threading.Thread(target=self._reap_idle, name=f"pypods-{self.pod}-idle", daemon=True).start()

    def start(self, count: int | None = None) -> None:
        """Start workers now (all of them by default) rather than on the first call."""
        for index in range(count if count is not None else self.size):
            self._ensure(index)

    def _ensure(self, index: int) -> Connection:
        """The live connection in slot *index*, starting or replacing it (close() does not wait for a start)."""
        with self._starting[index]:
            with self._lock:
                conn, old = self._live(index)
            if conn is not None:
                return conn
            if old is not None:
                old.close(kill=True)
            self._check_open()  # the brake may have tripped on that one
            with self._lock:
                self._pending.add(index)
            try:
                fresh = self._spawn()
            except BaseException as exc:
                with self._lock:
                    self._pending.discard(index)
                    self._start_failed(exc)
                raise
            with self._lock:
                self._pending.discard(index)
                installed = self._install(index, fresh)
            if not installed:
                fresh.close(kill=True)
                self._check_open()
            return fresh

    def call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None) -> Any:
        """Run *name* on the least busy worker; a worker found dead before the send is replaced once."""
        self._check_open()
        with self._lock:  # the idle reaper decides under the same lock, after this pick's _last_used
            index, conn = self._pick()
        if conn is None:
            conn = self._ensure(index)
        try:
            return conn.call(name, args, kwargs, timeout)
        except NotSentError:
            conn = self._ensure(index)
        try:
            return conn.call(name, args, kwargs, timeout)
        except NotSentError as exc:
            self._ensure_retired(index)
            raise _resend_failed(self.pod, exc) from exc

    def _ensure_retired(self, index: int) -> None:
        with self._lock:
            old = self._retire(index)
        if old is not None:
            old.close(kill=True)

    def _reap_idle(self) -> None:
        while not self._stopped.wait(self._idle_step()) and self._closed is None:
            with self._lock:
                idle = self._idle()
            for conn in idle:
                conn.close()

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
    ) -> None:
        super().__init__(pod, size, idle_timeout)
        self._spawn = spawn
        self._lock = asyncio.Lock()
        self._starting = [asyncio.Lock() for _ in range(size)]  # one start per slot at a time
        self._tasks: set[asyncio.Task[Any]] = set()  # strong references: the loop keeps only weak ones
        if idle_timeout is not None:
            self._keep(asyncio.get_running_loop().create_task(self._reap_idle()))
        forking.track(self)

    def _forget_after_fork(self) -> None:
        """In a forked child (``forking.py``): no workers, and locks and tasks of no loop yet."""
        self._forget_slots()
        self._tasks = set()  # the parent loop's (its idle reaper too: not restarted in the child)
        self._lock = asyncio.Lock()
        self._starting = [asyncio.Lock() for _ in self._starting]

    def _keep(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start(self, count: int | None = None) -> None:
        for index in range(count if count is not None else self.size):
            await self._ensure(index)

    async def _ensure(self, index: int) -> AsyncConnection:
        async with self._starting[index]:
            conn, old = self._live(index)
            if conn is not None:
                return conn
            if old is not None:
                await old.aclose(kill=True)
            self._check_open()  # the brake may have tripped on that one
            self._pending.add(index)
            try:
                fresh = await self._spawn()
            except BaseException as exc:
                self._start_failed(exc)
                raise
            finally:
                self._pending.discard(index)
            if not self._install(index, fresh):
                await fresh.aclose(kill=True)
                self._check_open()
            return fresh

    async def call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None) -> Any:
        self._check_open()
        index, conn = self._pick()
        if conn is None:
            conn = await self._ensure(index)
        try:
            return await conn.call(name, args, kwargs, timeout)
        except NotSentError:
            conn = await self._ensure(index)
        try:
            return await conn.call(name, args, kwargs, timeout)
        except NotSentError as exc:
            async with self._lock:
                old = self._retire(index)
            if old is not None:
                await old.aclose(kill=True)
            raise _resend_failed(self.pod, exc) from exc

    async def _reap_idle(self) -> None:
        while self._closed is None:
            await asyncio.sleep(self._idle_step())
            for conn in self._idle():
                await conn.aclose()

    def abandon(self) -> None:
        """The pod was dropped without ``aclose()``: end its workers now, without awaiting."""
        for conn in self._close_all():
            abandon = getattr(conn, "abandon", None)  # a process connection kills its worker at once
            if abandon is not None:
                abandon()

    async def aclose(self) -> None:
        conns = self._close_all()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*(conn.aclose() for conn in conns), return_exceptions=True)
