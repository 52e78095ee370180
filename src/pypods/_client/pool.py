"""N connections for one pod: least-busy pick, replacement, a crash brake, idle stop, drain; sync and asyncio.

``slots.Slots`` holds every rule and the pool's ``PoolState``; ``WorkerPool`` and ``AsyncWorkerPool``
add only locking and the I/O of starting and stopping. Any backend plugs in through ``spawn()``.
Every wait of a call honours the one absolute ``deadline`` (``time.monotonic()``) the loader
computed when the user called.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from typing import TYPE_CHECKING, Any

from .._errors import PodClosedError, PodCrashedError, PodError, PodTimeoutError, PodWorkerError
from . import forking
from .base import AsyncConnection, Connection
from .connection import NotSentError
from .objects import ObjectRef
from .slots import PoolRetired, PoolState, Slots, remaining

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from .brake import CrashBrake

__all__ = ["AsyncWorkerPool", "PoolRetired", "PoolState", "WorkerPool"]

DRAIN_STEP = 0.05  # seconds between two looks at a draining pool's open streams


def _settle(future: concurrent.futures.Future[Any], outcome: Any) -> bool:
    """Complete *future* with a value or an exception, unless it is done already (False then)."""
    try:
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
    except concurrent.futures.InvalidStateError:
        return False
    return True


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
        forking.track(self)

    def _forget_after_fork(self) -> None:
        """In a forked child (``forking.py``): locks anew (a parent's thread may have held one), no workers."""
        self._lock = threading.Lock()
        self._forget_slots()
        self._starts = [None] * self.size  # the parent's start threads do not exist here
        self._stopped = threading.Event()
        if self._idle_timeout is not None and self._state is PoolState.OPEN:  # threads do not survive a fork
            threading.Thread(target=self._reap_idle, name=f"pypods-{self.pod}-idle", daemon=True).start()

    def start(self, count: int | None = None, deadline: float | None = None) -> None:
        """Start workers now (all of them by default) rather than on the first call, waiting until *deadline*."""
        for index in range(count if count is not None else self.size):
            self._ensure(index, deadline, "(start)", None)

    def _ensure(self, index: int, deadline: float | None, name: str, timeout: float | None) -> tuple[Connection, bool]:
        """The live connection in slot *index* and whether this call started it; a start runs in its own
        thread (bounded by ``start_timeout``), so a call's deadline ends only its wait for it."""
        launched: concurrent.futures.Future[Connection] | None = None  # ours until its thread runs
        thread: threading.Thread | None = None
        try:
            with self._lock:
                conn, old = self._live(index)
                if conn is not None:
                    return conn, False
                refused = self._refused()
                start = self._starts[index]
                launch = start is None and refused is None
                if launch:
                    launched = start = concurrent.futures.Future()
                    self._starts[index] = start
            if refused is not None:
                if old is not None:
                    old.close(kill=True)
                raise refused
            assert start is not None
            if launch:
                thread = threading.Thread(
                    target=self._start, args=(index, start, old), name=f"pypods-{self.pod}-start", daemon=True
                )
                thread.start()
                launched = None
        except BaseException:
            if launched is not None:  # Ctrl-C before its thread ran: every later call would wait on it for ever
                self._unlaunched(index, launched, thread, old)
            raise
        try:
            return start.result(remaining(deadline)), launch
        except concurrent.futures.TimeoutError:
            raise self._start_timeout(name, timeout) from None

    def _unlaunched(
        self,
        index: int,
        start: concurrent.futures.Future[Connection],
        thread: threading.Thread | None,
        old: Connection | None,
    ) -> None:
        """A start whose thread may never run (the caller was interrupted launching it): fail it, so
        the next call starts the worker anew, unless the thread did start after all."""
        if thread is not None:  # interrupted in Thread.start(): it may have started the thread
            until = time.monotonic() + 1.0
            while not (start.done() or thread.is_alive()) and time.monotonic() < until:
                time.sleep(0.01)
            if start.done() or thread.is_alive():
                return
        with self._lock:
            if self._starts[index] is start:
                self._starts[index] = None
        _settle(start, PodWorkerError(f"pod {self.pod!r}: starting a worker was interrupted"))
        if old is not None:
            old.close(kill=True)

    def _start(self, index: int, start: concurrent.futures.Future[Connection], old: Connection | None) -> None:
        try:
            if old is not None:
                old.close(kill=True)
            fresh = self._spawn()
        except BaseException as exc:
            with self._lock:
                if self._starts[index] is start:
                    self._starts[index] = None
                self._start_failed(exc)
            _settle(start, exc)
            return
        with self._lock:
            if self._starts[index] is start:
                self._starts[index] = None
            installed = self._install(index, fresh)
        if not installed:
            fresh.close(kill=True)
            _settle(start, PodClosedError(f"pod {self.pod!r} was closed"))
        else:
            _settle(start, fresh)  # False if _unlaunched gave up on it: the worker serves the next calls

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
                result = conn.call(_released(conn) + name, args, kwargs, timeout, deadline=deadline)
                if type(result) is ObjectRef:  # it stays in that worker: calls on it go there
                    result.conn, result.index, result.pool = conn, index, self
                return result
            except NotSentError as exc:
                self._drop(index, conn, exc)
                if attempt == 2:
                    raise self._resend_failed(exc, fresh) from exc
                conn = None
            except PodCrashedError as exc:
                self._drop(index, conn, exc)  # counted toward the brake now, not at the next pick
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def call_on(
        self,
        ref: ObjectRef,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        deadline: float | None = None,
    ) -> Any:
        """Run *name* (a method of *ref*, or a call with handles among its arguments) in *ref*'s worker.

        Raises:
            PodObjectLostError: that worker died or was killed before this call.
            PodTimeoutError: no answer in time; the worker was killed, and its objects with it.
        """
        with self._lock:
            self._admit_object(ref)
        conn = ref.conn
        try:
            result = conn.call(_released(conn) + name, args, kwargs, timeout, deadline=deadline)
            if type(result) is ObjectRef:
                result.conn, result.index, result.pool = conn, ref.index, self
            return result
        except PodCrashedError as exc:
            self._drop(ref.index, conn, exc)
            raise
        except PodTimeoutError as exc:
            raise self._took_objects(exc, ref) from exc
        finally:
            with self._lock:
                self._done(ref.index)

    def _drop(self, index: int, conn: Connection, error: PodError) -> None:
        old = None
        try:
            with self._lock:
                old = self._retire(index, conn, error)
        finally:  # a Ctrl-C here must not leave a retired connection unclosed (its pipes leak)
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
        forking.track(self)

    def _forget_after_fork(self) -> None:
        """In a forked child (``forking.py``): no workers, and locks and tasks of no loop yet."""
        self._forget_slots()
        self._starts = [None] * self.size  # tasks of the parent's loop
        self._tasks = set()  # the parent loop's (its idle reaper too: not restarted in the child)

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
            return await asyncio.wait_for(asyncio.shield(start), remaining(deadline)), launch
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
                    result = await conn.call(_released(conn) + name, args, kwargs, timeout, deadline=deadline)
                    if type(result) is ObjectRef:  # it stays in that worker: calls on it go there
                        result.conn, result.index, result.pool = conn, index, self
                    return result
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

    async def call_on(
        self,
        ref: ObjectRef,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        deadline: float | None = None,
    ) -> Any:
        """Await *name* in *ref*'s worker (see ``WorkerPool.call_on``)."""
        self._admit_object(ref)
        conn = ref.conn
        try:
            result = await conn.call(_released(conn) + name, args, kwargs, timeout, deadline=deadline)
            if type(result) is ObjectRef:
                result.conn, result.index, result.pool = conn, ref.index, self
            return result
        except PodCrashedError as exc:
            await self._drop(ref.index, conn, exc)
            raise
        except PodTimeoutError as exc:
            raise self._took_objects(exc, ref) from exc
        finally:
            self._done(ref.index)

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


def _released(conn: Any) -> str:
    """The releases a call to *conn* carries ahead of its name (handles closed or collected since)."""
    ledger = getattr(getattr(conn, "proto", None), "objects", None)
    return "" if ledger is None or not ledger.pending else ledger.prefix()
