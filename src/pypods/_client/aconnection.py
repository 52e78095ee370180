"""One worker's connection on an asyncio event loop: the I/O shell around ``core.CallProtocol``.

The loop watches the worker's output pipe, its pidfd and the shared-memory socket (``add_reader``)
and hands each raw reply to its call's queue; the call decodes it (in a thread when big buffers
came with it). Writes are non-blocking: frames and their attachments leave through one queue as the
pipe and the socket take them (``add_writer``), a few milliseconds of copying at a time, so a large
argument never stalls the loop. Killing and reaping a worker run in a thread, and every task is
kept referenced.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import os
import time
from typing import TYPE_CHECKING, Any

from .._errors import PodClosedError, PodCrashedError, PodError, PodProtocolError, PodTimeoutError
from .._worker import messages
from .._worker.framing import FrameError, FrameReader
from .._worker.sharedmem import SHM_TAG, SharedMemoryError, Upload
from . import callbacks, forking
from .base import AsyncStream
from .connection import DEFAULT_START_TIMEOUT, NotSentError, open_pidfd
from .core import START, Outcome, StreamCursor, WorkerConnection

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine

    from .base import WorkerHandle
    from .core import Attachments

_BROKEN: dict[str, Any] = {"broken": True}  # put in every queue when the connection ends
PUMP_BUDGET = 0.004  # seconds of memfd copying per loop turn: a heartbeat never waits much longer


class AsyncProcessConnection(WorkerConnection):
    """Calls to one worker process from one event loop."""

    _calls: dict[int, asyncio.Queue[bytes | dict[str, Any]]]  # raw replies for each call in flight

    def __init__(self, worker: WorkerHandle) -> None:
        super().__init__(worker)
        self._loop = asyncio.get_running_loop()
        self._reader = FrameReader(worker.read_fd)
        self._dying = False
        self._tasks: set[asyncio.Task[Any]] = set()
        # Frames waiting for their attachments to go, in order; then their bytes wait in _out.
        self._queue: collections.deque[tuple[Upload | None, bytes | bytearray]] = collections.deque()
        self._out = bytearray()
        self._out_done: asyncio.Future[None] | None = None
        self._pidfd = open_pidfd(worker.pid)
        self._sock = None if self.channel is None else self.channel.fileno()
        os.set_blocking(worker.read_fd, False)
        os.set_blocking(worker.write_fd, False)
        self._calls[0] = asyncio.Queue()
        self._loop.add_reader(worker.read_fd, self._on_readable)
        if self._pidfd is not None:
            self._loop.add_reader(self._pidfd, self._on_exit)
        if self._sock is not None:
            self._loop.add_reader(self._sock, self._on_attachments)
        forking.track(self)

    def _forget_after_fork(self) -> None:
        """In a forked child (``forking.py``): the worker is the parent's. Drop our copies of its pipes
        and pidfd, and never touch the inherited loop: its epoll set is shared with the parent's.

        That loop may still watch the numbers, so they stay taken by ``/dev/null``: a callback it
        still runs reads an end of file (and the connection, broken already, ignores it), never a
        file that would otherwise get the number next.
        """
        self._broken = PodClosedError(f"pod {self.pod!r}: this worker belongs to the process that forked")
        self._dying = True
        self._tasks = set()
        forget = getattr(self.worker, "_forget_after_fork", None)
        if forget is not None:
            forget()  # closes the pipes (once)
        taken = {fd for fd in (self.worker.read_fd, self.worker.write_fd, self._pidfd, self._sock) if fd is not None}
        devnull = os.open(os.devnull, os.O_RDONLY)  # may get one of those numbers itself: then it keeps it
        for fd in taken - {devnull}:
            os.dup2(devnull, fd, inheritable=False)
        if devnull not in taken:
            os.close(devnull)

    def _unwatch(self) -> None:
        """Stop watching the worker's fds (idempotent)."""
        watched: list[tuple[Callable[[int], object], int | None]] = [
            (self._loop.remove_reader, self.worker.read_fd),
            (self._loop.remove_reader, self._pidfd),
            (self._loop.remove_writer, self.worker.write_fd),
            (self._loop.remove_reader, self._sock),
            (self._loop.remove_writer, self._sock),
        ]
        for remove, fd in watched:
            if fd is None:
                continue
            try:
                remove(fd)
            except (ValueError, OSError):
                pass

    @property
    def broken(self) -> PodError | None:
        """As ``WorkerConnection.broken``, and already a crash once the worker's exit is seen (end of
        file or pidfd), before its exit status is read: no call may be sent to it in that gap."""
        if self._broken is None and self._dying:
            return PodCrashedError(f"pod {self.pod!r}: worker (pid {self.worker.pid}) died")
        return self._broken

    def _spawn_task(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = self._loop.create_task(coro)
        self._tasks.add(task)  # the loop keeps only a weak reference
        task.add_done_callback(self._tasks.discard)

    async def start(self, timeout: float | None = DEFAULT_START_TIMEOUT) -> None:
        """Wait for the worker's hello (its functions, or why importing pod.py failed); clean up on failure."""
        try:
            encoding = self._started(await self._next(0, timeout, START, self._deadline(timeout)))
            if encoding is not None:  # codec: fast1 negotiation, before the first call (docs/encoding.md)
                try:
                    await self._write(encoding)
                except NotSentError:  # it died right after its hello: a crash at start, not a retry
                    code, tail = await asyncio.to_thread(self.worker.exit_report)
                    raise self.proto.crash_error(self.worker.pid, code, tail, self.worker.exit_note(code)) from None
        except BaseException:
            await self.aclose(kill=True)
            raise
        finally:
            self._calls.pop(0, None)

    # -- reading -------------------------------------------------------------------------------

    def _on_readable(self) -> None:
        try:
            data = os.read(self.worker.read_fd, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._unwatch()
            self._crash_soon()
            return
        self._reader.feed(data)
        self._route()

    def _route(self) -> None:
        """Hand every whole frame in the buffer, undecoded, to its call's queue (its call decodes it)."""
        while self._broken is None:
            item: bytes | dict[str, Any]
            try:
                frame = self._reader.pop()
                if frame is None:
                    return
                item = frame
                call_id = messages.peek_id(frame)
                if call_id == 0 and 0 not in self._calls:  # not where every reply has its id: check it here
                    self._take_attachments()
                    item = self.proto.decode(frame)
                    call_id = item["id"]
            except FrameError as exc:
                self._break(self.proto.protocol_error(exc))
                return
            except PodProtocolError as exc:
                self._break(exc)
                return
            queue = self._calls.get(call_id)
            if queue is not None:
                if queue.qsize() >= self.proto.max_pending:
                    self._break(self.proto.flooded(call_id))
                    return
                queue.put_nowait(item)
            # else: a reply to an abandoned call or a stray id: dropped.

    def _on_attachments(self) -> None:
        """The shared-memory socket is readable: move what came into the inbox (a bounded number)."""
        if self._broken is None and not self._take_attachments():
            if self._sock is not None:
                self._loop.remove_reader(self._sock)  # the worker closed it: the pipe or pidfd says how

    def _take_attachments(self) -> bool:
        """Drain the shared-memory socket into the inbox; a flood or a malformed message breaks us."""
        if self.channel is None or self.inbox is None:
            return True
        try:
            return self.channel.receive(self.inbox, self.inbox.limit + 1)
        except SharedMemoryError as exc:
            self._break(self.proto.protocol_error(exc))
            return True

    def _on_exit(self) -> None:
        """The pidfd says the worker exited: take what it wrote before dying, then fail the rest."""
        self._loop.remove_reader(self._pidfd)  # type: ignore[arg-type]
        while self._broken is None:
            try:
                data = os.read(self.worker.read_fd, 1 << 16)
            except OSError:
                break
            if not data:
                break
            self._reader.feed(data)
            self._route()
        self._unwatch()
        self._crash_soon()

    def _crash_soon(self) -> None:
        if not self._dying:
            self._dying = True
            self._spawn_task(self._crashed())

    async def _crashed(self) -> None:
        code, tail = await asyncio.to_thread(self.worker.exit_report)
        self._fail(self.proto.crash_error(self.worker.pid, code, tail, self.worker.exit_note(code)))

    def _break(self, error: PodError) -> None:
        """End the connection with *error* and kill the worker (in a thread: never block the loop)."""
        self._unwatch()
        self._fail(error)
        self._spawn_task(self._kill())

    async def _kill(self) -> None:
        await asyncio.to_thread(self.worker.kill)

    def _fail(self, error: PodError) -> None:
        if self._broken is None:
            self._broken = error
        for queue in self._calls.values():
            queue.put_nowait(_BROKEN)
        while self._queue:  # frames never sent: their memfds are closed, nothing is left behind
            upload = self._queue.popleft()[0]
            if upload is not None:
                upload.abort()
        if self._out_done is not None and not self._out_done.done():
            self._out_done.set_exception(copy.copy(self._broken))
            self._out_done.exception()  # retrieved: nobody may be waiting on it

    # -- writing -------------------------------------------------------------------------------

    async def _write(self, data: bytes | bytearray) -> None:
        pending = self._send(data)
        if pending is not None:
            await asyncio.shield(pending)

    def _send(self, data: bytes | bytearray, attachments: Attachments | None = None) -> asyncio.Future[None] | None:
        """Send *data* (after its *attachments*) now if the pipe takes it (None); else queue it and
        return what to await. The frame is queued whole at once, so a cancelled caller never leaves
        half a frame behind."""
        broken = self.broken
        if broken is not None:
            if isinstance(broken, PodClosedError):
                raise copy.copy(broken)
            # Another call ended this worker first: this frame was never sent (the pool resends it).
            raise NotSentError(f"pod {self.pod!r}: the worker was lost before the call was sent ({broken})")
        upload = None if not attachments or self.channel is None else Upload(self.channel, attachments)
        if upload is None and not self._queue and not self._out:
            try:
                sent = os.write(self.worker.write_fd, data)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                self._crash_soon()
                raise NotSentError(f"pod {self.pod!r}: worker was gone before the call was sent") from exc
            if sent == len(data):
                return None
            self._out += memoryview(data)[sent:]
        else:
            self._queue.append((upload, data))
        self._pump()
        if not self._queue and not self._out:
            return None
        if self._out_done is None or self._out_done.done():
            self._out_done = self._loop.create_future()
        return self._out_done

    def _pump(self) -> None:
        """Move queued frames on: their attachments to the socket (a budget at a time), then their bytes."""
        while self._queue and self._broken is None:
            upload, data = self._queue[0]
            if upload is not None:
                try:
                    finished = upload.pump(PUMP_BUDGET)
                except OSError:
                    self._crash_soon()
                    return
                if not finished:
                    # The socket is full (the worker reads it as it can) or the budget is spent (the
                    # socket is still writable, so the loop calls back at once, after other tasks).
                    assert self._sock is not None
                    self._loop.add_writer(self._sock, self._pump)
                    return
            self._queue.popleft()
            self._out += data
        if self._sock is not None:
            self._loop.remove_writer(self._sock)
        if self._out:
            self._on_writable()

    def _on_writable(self) -> None:
        try:
            sent = os.write(self.worker.write_fd, self._out)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._loop.remove_writer(self.worker.write_fd)
            self._crash_soon()
            return
        del self._out[:sent]
        if self._out:
            self._loop.add_writer(self.worker.write_fd, self._on_writable)
            return
        self._loop.remove_writer(self.worker.write_fd)
        if not self._queue and self._out_done is not None and not self._out_done.done():
            self._out_done.set_result(None)

    def send_control(self, message: bytearray) -> None:
        """Queue a message that expects no reply (credit, cancel) without waiting for it to be written."""
        if self._broken is None:
            self._spawn_task(self._send_quietly(message))

    async def _send_quietly(self, message: bytearray) -> None:
        try:
            await self._write(message)
        except PodError:
            pass

    # -- calls ---------------------------------------------------------------------------------

    def _deadline(self, timeout: float | None) -> float | None:
        return None if timeout is None else self._loop.time() + timeout

    async def _next(self, call_id: int, timeout: float | None, name: str, deadline: float | None) -> dict[str, Any]:
        """Await *call_id*'s next reply and decode it here, in its own task."""
        queue = self._calls[call_id]
        item: bytes | dict[str, Any] = await self._within(queue.get(), timeout, name, deadline)
        if item is _BROKEN:
            assert self._broken is not None
            raise copy.copy(self._broken)
        if isinstance(item, dict):
            return item
        if SHM_TAG in item:  # its buffers were sent before it: they are all on the socket
            self._take_attachments()
        try:
            if self.inbox:  # big buffers to copy out: off the loop, so it keeps its beat
                return await asyncio.to_thread(self.proto.decode, item)
            return self.proto.decode(item)
        except PodProtocolError as exc:
            self._break(exc)
            raise

    async def _within(self, step: Awaitable[Any], timeout: float | None, name: str, deadline: float | None) -> Any:
        """Await *step* until the call's deadline (*timeout* from now unless *deadline* is given)."""
        if timeout is None:
            return await step
        timeout_left = timeout if deadline is None else max(deadline - self._loop.time(), 0)
        try:
            return await asyncio.wait_for(step, timeout_left)
        except asyncio.TimeoutError:
            self._break(self.proto.killed_error(name))
            raise self.proto.timeout_error(name, timeout) from None

    async def _sent(
        self,
        data: bytearray,
        timeout: float | None,
        name: str,
        deadline: float | None,
        attachments: Attachments | None = None,
    ) -> None:
        """Write a request under the call's deadline (at once, in the usual case of a pipe with room)."""
        pending = self._send(data, attachments)
        if pending is not None:
            await self._within(asyncio.shield(pending), timeout, name, deadline)

    def _checked(self, step: Callable[[str, dict[str, Any]], Outcome], name: str, reply: dict[str, Any]) -> Outcome:
        """Apply a core step to a reply; a malformed reply breaks the connection (it is replaced)."""
        try:
            return step(name, reply)
        except PodProtocolError as exc:
            self._break(exc)
            raise

    async def call(
        self,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        deadline: float | None = None,
    ) -> Any:
        """Send one call and await its reply; a generator's items come as an ``AsyncStream``.

        *deadline* (``time.monotonic()``) is the caller's, else *timeout* from now.
        """
        proto = self.proto
        # One deadline covers writing the request too: a worker busy with another call reads nothing.
        send_by = deadline if deadline is not None or timeout is None else time.monotonic() + timeout
        deadline = None if send_by is None else self._loop.time() + (send_by - time.monotonic())  # the loop's clock
        registry = proto.registry_frame()
        if registry is not None:
            await self._sent(registry, timeout, name, deadline)
        call_id = proto.next_id()
        # The worker bounds its own waits for this call by what is left of the deadline.
        left = None if send_by is None else max(send_by - time.monotonic(), 0.0)
        data, attachments = proto.encode_call(call_id, name, args, kwargs, left)
        if send_by is not None and time.monotonic() >= send_by:  # passed while encoding (or before): send nothing
            raise PodTimeoutError(f"pod {self.pod!r}, function {name!r}: no answer within {timeout}s "
                                  "(it passed before sending, while encoding; nothing was sent)")  # fmt: skip
        self._calls[call_id] = asyncio.Queue()
        stream = False
        try:
            await self._sent(data, timeout, name, deadline, attachments)
            outcome = self._checked(proto.outcome, name, await self._next(call_id, timeout, name, deadline))
            while outcome.kind == Outcome.CALLBACK:  # the pod calls back (callbacks.py): run it on this loop
                await self._sent(await callbacks.arun(call_id, outcome.value), timeout, name, deadline)
                outcome = self._checked(proto.outcome, name, await self._next(call_id, timeout, name, deadline))
            stream = outcome.kind == Outcome.STREAM
        except asyncio.CancelledError:
            self.send_control(proto.control(call_id, "cancel"))  # the worker drops it if not yet started
            raise
        finally:
            if proto.callbacks:
                proto.ended(call_id)
            if not stream:
                self._calls.pop(call_id, None)
        if stream:
            return AsyncProcessStream(self, StreamCursor(call_id, name, timeout, proto.window))
        return outcome.value

    async def next_item(self, cursor: StreamCursor) -> tuple[bool, Any]:
        """Await a stream's next reply: ``(True, item)``, or ``(False, None)`` at its end."""
        try:
            reply = await self._next(cursor.call_id, cursor.timeout, cursor.name, self._deadline(cursor.timeout))
            more, item, grant = cursor.advance(self._checked(self.proto.stream_item, cursor.name, reply))
        except asyncio.CancelledError:
            self.cancel_stream(cursor)
            raise
        except BaseException:
            cursor.done = True
            self._calls.pop(cursor.call_id, None)
            raise
        if grant is not None:
            self.send_control(grant)
        if not more:
            self._calls.pop(cursor.call_id, None)
        return more, item

    def cancel_stream(self, cursor: StreamCursor) -> None:
        """End a stream and cancel its generator without waiting; from any thread (``__del__``)."""
        cancel = cursor.cancel()
        if cancel is None or self._loop.is_closed():
            return
        try:
            on_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            self._end_stream(cursor.call_id, cancel)
        else:  # the call table and the pipe belong to the loop's thread
            try:
                self._loop.call_soon_threadsafe(self._end_stream, cursor.call_id, cancel)
            except RuntimeError:  # the loop closed meanwhile
                pass

    def _end_stream(self, call_id: int, cancel: bytearray) -> None:
        self._calls.pop(call_id, None)
        self.send_control(cancel)

    async def aclose(self, kill: bool = False) -> None:
        """Stop the worker (killed if calls are in flight); calls still waiting get PodClosedError."""
        busy = self.in_flight() > 0
        if self._dying and self._broken is None:
            await self._crashed()  # it died first: calls in flight get its crash, not PodClosedError
        self._fail(PodClosedError(f"pod {self.pod!r} was closed"))
        self._unwatch()
        if kill or busy:
            await asyncio.to_thread(self.worker.kill)
        else:
            await asyncio.to_thread(self.worker.stop, 0.5)
        self.worker.release()
        if self.inbox is not None:
            self.inbox.clear()  # buffers no frame claimed (a pod that sent orphans)
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None

    def abandon(self) -> None:
        """Its pod was dropped without aclose(): kill the worker now (from any thread, as the garbage
        collector may run anywhere) and release the descriptors on the loop."""
        self.worker.kill()
        if not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._release_abandoned)
            except RuntimeError:  # the loop closed meanwhile
                pass

    def _release_abandoned(self) -> None:
        self._fail(PodClosedError(f"pod {self.pod!r} was dropped without aclose()"))
        self._unwatch()
        self.worker.release()
        if self.inbox is not None:
            self.inbox.clear()  # buffers no frame claimed (a pod that sent orphans)
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None


class AsyncProcessStream(AsyncStream):
    """The items of a generator running in a worker, awaited; dropped or closed, it cancels the generator."""

    def __init__(self, conn: AsyncProcessConnection, cursor: StreamCursor) -> None:
        self._conn = conn
        self._cursor = cursor

    async def __anext__(self) -> Any:
        if self._cursor.done:
            raise StopAsyncIteration
        more, item = await self._conn.next_item(self._cursor)
        if more:
            return item
        raise StopAsyncIteration

    def close_soon(self) -> None:
        """Cancel the generator in the pod without waiting (also from ``__del__``, from any thread)."""
        self._conn.cancel_stream(self._cursor)

    async def aclose(self) -> None:
        self.close_soon()

    def __del__(self) -> None:
        try:
            self.close_soon()
        except Exception:
            pass
