"""One worker's connection from threads: the I/O shell around ``core.CallProtocol``.

Reading is leader/follower: the first caller that needs a reply reads the pipe itself and hands
other callers' replies to them, so a call from one thread costs one write and one read, with no
thread hop, and many threads can still have calls in flight. Replies are handed over as raw frames,
routed by their leading id, and each caller decodes its own: an interrupted leader never loses or
delays another thread's reply. Writing is full duplex: a writer waiting for room on the pipe or the
shared-memory socket leads the read loop meanwhile (a worker blocked writing replies reads nothing).
Every wait is a ``poll`` with a deadline covering the whole frame; the worker's death is seen at once
through a pidfd polled beside the pipe (a forked child that keeps the pipe open cannot hide it), and
every call in flight then fails together.
"""

from __future__ import annotations

import atexit
import collections
import copy
import os
import select
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

from .._errors import PodClosedError, PodCrashedError, PodError, PodProtocolError, PodTimeoutError, PodWorkerError
from .._worker import messages
from .._worker.framing import FrameError, FrameReader, PipeClosed
from .._worker.sharedmem import SHM_TAG, SharedMemoryError, Upload
from . import callbacks, forking
from .core import START, Outcome, StreamCursor, WorkerConnection
from .pstream import ProcessStream

if TYPE_CHECKING:
    from collections.abc import Callable

    from .base import WorkerHandle
    from .core import Attachments

SPIN = float(os.environ.get("PYPODS_SPIN_US", "100")) / 1e6  # see FrameReader.spin
POLL_STEP = 0.5  # without a pidfd: how often a waiting reader checks that the worker still lives
WRITE_STEP = 0.05  # a writer waiting for room while another thread leads: how often it looks to lead
DEFAULT_START_TIMEOUT = 60.0
CANCEL_WAIT = 0.5  # the cancel after Ctrl-C waits this long at most for room (then goes with the next write)


class NotSentError(PodCrashedError):
    """The worker was gone when we wrote: the call never reached it, so the pool may resend it.

    Internal: the pool turns it into a retry (or a plain ``PodCrashedError``); it never reaches users.
    """


def open_pidfd(pid: int) -> int | None:
    """A descriptor that becomes readable when process *pid* exits (Linux 5.3+, Python 3.9+), or None."""
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return None
    try:
        return int(pidfd_open(pid))
    except OSError:
        return None


_open: weakref.WeakSet[ProcessConnection] = weakref.WeakSet()
_at_exit: list[bool] = []


def _close_inputs() -> None:
    """At exit, before the process module ends the workers: close our input copies, so each worker
    sees the end of its input at once rather than waiting to be killed."""
    for conn in list(_open):
        with conn._cv:
            if not conn._writers:
                conn._close_input()


class ProcessConnection(WorkerConnection):
    """Calls to one worker process; any number of threads may use it at once."""

    _calls: dict[int, collections.deque[bytes | dict[str, Any]]]  # raw replies for each call in flight

    def __init__(self, worker: WorkerHandle, start_timeout: float | None = DEFAULT_START_TIMEOUT) -> None:
        super().__init__(worker)
        self._reader = FrameReader(worker.read_fd)
        # Our own copy of the input pipe, closed only when no thread writes on it: the worker's
        # kill() closes its descriptor at once, and a writer blocked on that number could
        # otherwise wake to find it reused by another file and write the request there.
        self._wfd: int | None = os.dup(worker.write_fd)
        os.set_blocking(self._wfd, False)
        if not _at_exit:  # registered after process.py's handler, so it runs before it
            _at_exit.append(atexit.register(_close_inputs) is not None)
        _open.add(self)
        self._writers = 0  # threads writing on _wfd (under _cv)
        self._pidfd = open_pidfd(worker.pid)
        self._sock = None if self.channel is None else self.channel.fileno()
        self._waiter = self._poll()
        self._wlock = threading.Lock()
        self._cv = threading.Condition(threading.Lock())
        self._reading = False  # a thread leads the read loop (a caller waiting for a reply, or a writer)
        self._routed: bytes | None = None  # the last frame handed to its call (see _deliver)
        self._closed = False  # close() was called: the last reader or writer releases the descriptors
        self._deferred: list[bytearray] = []  # controls from finalizers, sent with the next write
        # Calls written and not yet answered, in the order the worker queues (and runs) them.
        self._unanswered: dict[int, None] = {}
        forking.track(self)
        try:
            self._handshake(start_timeout)
        except BaseException:
            self.close(kill=True)
            raise

    def _forget_after_fork(self) -> None:
        """In a forked child (``forking.py``): the worker is the parent's; new locks, our copies closed."""
        _open.discard(self)
        self._wlock = threading.Lock()
        self._cv = threading.Condition(threading.Lock())
        self._broken = PodClosedError(f"pod {self.pod!r}: this worker belongs to the process that forked")
        self._reading, self._writers, self._closed = False, 0, True
        self._deferred = []
        _close_fd(self._wfd)
        _close_fd(self._pidfd)
        self._wfd = self._pidfd = None

    def _handshake(self, timeout: float | None) -> None:
        # 1. The worker speaks first: protocol version, pid, Python, and its functions (or why not).
        with self._cv:
            self._calls[0] = collections.deque()
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            hello = self._decoded(self._receive(0, deadline, START, timeout))
        finally:
            self._abandon(0)
        encoding = self._started(hello)
        if encoding is not None:  # codec: fast1 negotiation, before the first call (docs/encoding.md)
            try:
                self._write(encoding, deadline, START, timeout)
            except NotSentError as exc:  # it died right after its hello: a crash at start, not a retry
                raise self._fail(exc) from exc

    # -- calls ---------------------------------------------------------------------------------

    def call(
        self,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        deadline: float | None = None,
    ) -> Any:
        """Send one call and wait for its reply (see ``Connection.call``)."""
        proto = self.proto
        call_id = proto.next_id()
        if deadline is None and timeout is not None:
            deadline = time.monotonic() + timeout
        # The worker bounds its own waits for this call by what is left of the deadline.
        left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        data, attachments = proto.encode_call(call_id, name, args, kwargs, left)
        if deadline is not None and time.monotonic() >= deadline:  # passed while encoding (or before): send nothing
            raise PodTimeoutError(f"pod {self.pod!r}, function {name!r}: no answer within {timeout}s "
                                  "(it passed before sending, while encoding; nothing was sent)")  # fmt: skip
        with self._cv:
            self._calls[call_id] = collections.deque()
        stream = False
        try:
            self._write(data, deadline, name, timeout, call_id, attachments)
            outcome = self._outcome(call_id, deadline, name, timeout, proto.outcome)
            while outcome.kind == Outcome.CALLBACK:  # the pod calls back (callbacks.py): run it on this thread
                self._write(callbacks.run(call_id, outcome.value), deadline, name, timeout, call_id)
                outcome = self._outcome(call_id, deadline, name, timeout, proto.outcome)
            stream = outcome.kind == Outcome.STREAM
        except KeyboardInterrupt:
            # The pod function gets the Ctrl-C too (SIGINT if it runs, cancel if not yet started);
            # the worker lives on, and the reply, if any, is dropped. A call queued behind another
            # thread's gets only the cancel: the SIGINT would stop that other call.
            # The SIGINT first: the cancel may have to wait for room behind another thread's
            # request, which waits for the worker, which runs this very call.
            with self._cv:
                running = next(iter(self._unanswered), None) == call_id
            if self._broken is None and running:
                self.worker.interrupt()
            until = time.monotonic() + CANCEL_WAIT
            self.send_control(
                proto.control(call_id, "cancel"), until=until if deadline is None else min(until, deadline)
            )
            raise
        finally:
            if proto.callbacks:
                proto.ended(call_id)
            if not stream:
                self._abandon(call_id)
        if stream:
            return ProcessStream(self, StreamCursor(call_id, name, timeout, proto.window))
        return outcome.value

    def next_item(self, cursor: StreamCursor) -> tuple[bool, Any]:
        """Wait for a stream's next reply: ``(True, item)``, or ``(False, None)`` at its end."""
        deadline = None if cursor.timeout is None else time.monotonic() + cursor.timeout
        try:
            outcome = self._outcome(cursor.call_id, deadline, cursor.name, cursor.timeout, self.proto.stream_item)
            more, item, grant = cursor.advance(outcome)
        except PodError:
            cursor.done = True  # the generator ended in the pod, or the worker did
            self._abandon(cursor.call_id)
            raise
        except BaseException:
            self.cancel_stream(cursor)  # interrupted while waiting (Ctrl-C): stop the generator in the pod too
            raise
        if grant is not None:
            self.send_control(grant)
        if not more:
            self._abandon(cursor.call_id)
        return more, item

    def cancel_stream(self, cursor: StreamCursor) -> None:
        """End a stream here and cancel its generator; never blocks (see ``ProcessStream.close``)."""
        cancel = cursor.cancel()
        if cancel is not None:
            self._abandon(cursor.call_id)
            self.send_control(cancel, deferred=True)

    def _outcome(
        self, call_id: int, deadline: float | None, name: str, timeout: float | None, step: Callable[..., Outcome]
    ) -> Outcome:
        """Wait for *call_id*'s next reply, decode it in this thread, and apply a core *step* to it."""
        reply = self._decoded(self._receive(call_id, deadline, name, timeout))
        try:
            return step(name, reply)
        except PodProtocolError as exc:  # a malformed reply breaks the connection (it is replaced)
            self._break(exc, kill=True)
            raise

    def _decoded(self, item: bytes | dict[str, Any]) -> dict[str, Any]:
        """A reply as a message: decoded here, by its own caller, with the attachments sent before it."""
        if isinstance(item, dict):  # decoded already by the reader (its id was not where we peek)
            return item
        if SHM_TAG in item:  # its buffers were sent before it: they are all on the socket now
            self._take_attachments()
        try:
            return self.proto.decode(item)
        except PodProtocolError as exc:
            raise self._break(exc, kill=True) from exc

    def _take_attachments(self) -> None:
        """Move the buffers waiting on the shared-memory socket into the inbox (never blocks)."""
        if self.channel is None or self.inbox is None:
            return
        try:
            self.channel.receive(self.inbox, self.inbox.limit + 1)
        except SharedMemoryError as exc:
            raise self._break(self.proto.protocol_error(exc), kill=True) from exc

    # -- writing -------------------------------------------------------------------------------

    def _write(
        self,
        data: bytes | bytearray,
        deadline: float | None,
        name: str,
        timeout: float | None,
        call_id: int | None = None,
        attachments: Attachments | None = None,
    ) -> None:
        """Send a frame's attachments, then the whole frame, or break the connection: a pipe is never
        left with half a frame. While it waits for room, it reads and routes replies (full duplex)."""
        with self._wlock:
            fd = self._enter_write()
            view = memoryview(data)
            deferred, self._deferred = self._deferred, []
            if call_id is not None:
                # Under the write lock, so the worker learns of registered classes before any call
                # that uses them, whichever thread sends first (and only once encoding succeeded).
                registry = self.proto.registry_frame()
                if registry is not None:
                    deferred.append(registry)
            upload = None if not attachments or self.channel is None else Upload(self.channel, attachments)
            try:
                for control in deferred:
                    self._write_frame(fd, memoryview(control), deadline, name, timeout)
                if upload is not None:
                    self._upload(upload, deadline, name, timeout)
                self._write_frame(fd, view, deadline, name, timeout)
                if call_id is not None:
                    with self._cv:
                        self._unanswered[call_id] = None  # under _wlock: in the order written
                while self._deferred:  # controls deferred while we wrote (a cancel): now, if there is room
                    if not self._write_soon(fd, self._deferred[0], None):
                        break
                    self._deferred.pop(0)
            except BaseException:
                if upload is not None and not upload.finished:
                    upload.abort()  # the frame never started: the worker forgets what went
                elif self._broken is None:  # interrupted mid-frame (Ctrl-C): this pipe is out of step
                    self._break(PodWorkerError(f"pod {self.pod!r}: a call was interrupted while sent"), kill=True)
                raise
            finally:
                self._exit_write()

    def _enter_write(self) -> int:
        """Our input descriptor, counted as in use until ``_exit_write`` (hold ``_wlock``)."""
        with self._cv:
            broken = self._broken
            if broken is not None and not isinstance(broken, PodClosedError):
                # Another call ended this worker while we waited to write: ours was never sent,
                # so the pool may send it to a fresh worker.
                raise NotSentError(f"pod {self.pod!r}: the worker was lost before the call was sent ({broken})")
            if broken is not None or self._wfd is None:
                raise copy.copy(broken or PodClosedError(f"pod {self.pod!r} was closed"))
            self._writers += 1
            return self._wfd

    def _exit_write(self) -> None:
        with self._cv:
            self._writers -= 1
            self._release_unused()

    def _upload(self, upload: Upload, deadline: float | None, name: str, timeout: float | None) -> None:
        """Send a frame's attachments as the socket takes them, reading replies while it is full."""
        while True:
            try:
                if upload.pump():
                    return
            except OSError as exc:  # the worker's end of the socket is gone: so is the worker
                self._fail(exc)
                raise NotSentError(f"pod {self.pod!r}: worker was gone before the call was sent") from exc
            assert self._sock is not None
            self._wait_io(deadline, name, timeout, self._sock, partial=False)

    def _write_frame(self, fd: int, view: memoryview, deadline: float | None, name: str, timeout: float | None) -> None:
        # The write fd is non-blocking: a worker that stops reading cannot hold us past the deadline,
        # and its death (the pidfd) wakes us even if a child of it keeps the pipe open.
        written = 0
        while written < len(view):
            try:
                written += os.write(fd, view[written:])
                continue
            except BlockingIOError:
                pass
            except OSError as exc:
                if written:
                    raise self._fail(exc) from exc
                self._fail(exc)
                raise NotSentError(f"pod {self.pod!r}: worker was gone before the call was sent") from exc
            self._wait_io(deadline, name, timeout, fd, partial=written > 0)

    def _wait_io(self, deadline: float | None, name: str, timeout: float | None, out: int, partial: bool) -> None:
        """Wait until *out* takes bytes; meanwhile lead the read loop if nobody does (full duplex).

        A worker blocked writing replies (a stream's items) reads nothing until they are read: a
        writer that only waited for room would wait for ever. poll, not select: a busy client may
        have descriptors above 1024, which select refuses.
        """
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise self._timed_out(name, timeout)
        with self._cv:
            lead = not self._reading
            if lead:
                self._reading = True
        try:
            masks: dict[int, int] = {out: select.POLLOUT}
            if lead:
                masks[self.worker.read_fd] = select.POLLIN
                if self._sock is not None:
                    masks[self._sock] = masks.get(self._sock, 0) | select.POLLIN
            if self._pidfd is not None:
                masks[self._pidfd] = select.POLLIN
            waiter = select.poll()
            for fd, mask in masks.items():
                waiter.register(fd, mask)
            # Not leading: look again soon, to take over the reading when its leader leaves.
            step = remaining if lead and self._pidfd is not None else min(remaining or POLL_STEP, WRITE_STEP)
            events = dict(waiter.poll(None if step is None else max(step, 0) * 1000))
            if lead:
                if events.get(self.worker.read_fd):
                    self._fill()
                    self._route_all()
                if self._sock is not None and events.get(self._sock, 0) & select.POLLIN:
                    self._take_attachments()
            gone = (self._pidfd is not None and self._pidfd in events) or (
                self._pidfd is None and not self.worker.alive()
            )
            if gone:
                if self._broken is not None or partial:
                    raise self._fail(PipeClosed("the worker exited"))
                self._fail(PipeClosed("the worker exited"))
                raise NotSentError(f"pod {self.pod!r}: worker was gone before the call was sent")
        finally:
            if lead:
                with self._cv:
                    self._reading = False
                    self._release_unused()
                    self._cv.notify_all()

    def send_control(self, message: bytearray, deferred: bool = False, until: float | None = None) -> None:
        """Send a message that expects no reply (credit, cancel).

        With *deferred* (closing a stream, from user code or a finalizer) it never blocks: if another
        thread is writing, or the pipe is full because the worker is busy, the message goes out
        with the next write. With *until* (the cancel after Ctrl-C) it waits for the lock and for
        room only until that time, then defers it the same way: a worker busy with a call reads
        nothing, and the user pressed Ctrl-C to get control back.
        """
        if self._broken is not None:
            return
        if until is not None:
            acquired = self._wlock.acquire(timeout=max(until - time.monotonic(), 0.0))
        else:
            acquired = self._wlock.acquire(blocking=not deferred)
        if not acquired:
            self._deferred.append(message)
            return
        try:
            fd = self._enter_write()
            try:
                if deferred or until is not None:
                    if not self._write_soon(fd, message, until):
                        self._deferred.append(message)
                else:
                    self._write_frame(fd, memoryview(message), None, "(control)", None)
            finally:
                self._exit_write()
        except PodError:
            pass
        finally:
            self._wlock.release()

    def _write_soon(self, fd: int, message: bytearray, until: float | None) -> bool:
        """Write a control frame whole if there is room by *until* (None: now); False if not."""
        while True:
            try:
                os.write(fd, message)  # a control frame is far below PIPE_BUF: all or none
                return True
            except BlockingIOError:
                pass
            except OSError:
                return True  # the worker is gone; its reader reports how
            left = None if until is None else until - time.monotonic()
            if left is None or left <= 0:
                return False
            waiter = select.poll()
            waiter.register(fd, select.POLLOUT)
            if self._pidfd is not None:
                waiter.register(self._pidfd, select.POLLIN)
            if any(ready == self._pidfd for ready, _ in waiter.poll(left * 1000)):
                return True  # it died: nothing left to cancel

    def _abandon(self, call_id: int) -> None:
        with self._cv:
            self._calls.pop(call_id, None)
            self._unanswered.pop(call_id, None)

    # -- reading -------------------------------------------------------------------------------

    def _receive(
        self, call_id: int, deadline: float | None, name: str, timeout: float | None
    ) -> bytes | dict[str, Any]:
        """Wait for the next raw reply to *call_id*, reading the pipe ourselves if nobody else is."""
        cv = self._cv
        with cv:
            while True:
                box = self._calls.get(call_id)
                if box:
                    return box.popleft()
                if self._broken is not None:
                    raise copy.copy(self._broken)
                if not self._reading:
                    self._reading = lead = True
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    lead = False
                    break
                cv.wait(remaining)
        if not lead:
            raise self._timed_out(name, timeout)  # outside the lock: it takes the lock itself
        try:
            return self._lead(call_id, deadline, name, timeout)
        finally:
            with cv:
                self._reading = False
                self._release_unused()
                cv.notify_all()

    def _lead(self, call_id: int, deadline: float | None, name: str, timeout: float | None) -> bytes | dict[str, Any]:
        while True:
            if self._reader.peek() is None:
                self._wait_readable(deadline, name, timeout)
            self._route_all()
            with self._cv:
                box = self._calls.get(call_id)
                if box:
                    return box.popleft()
            if deadline is not None and time.monotonic() > deadline:
                raise self._timed_out(name, timeout)  # a flood of other frames cannot stretch it

    def _route_all(self) -> None:
        """Hand every whole frame read so far to its call, undecoded: each caller decodes its own.

        The frame stays in the reader until it is in its call's box (peek, deliver, drop), so an
        interruption of the leader (Ctrl-C) never loses another thread's reply.
        """
        reader = self._reader
        while True:
            try:
                frame = reader.peek()
            except FrameError as exc:
                raise self._break(self.proto.protocol_error(exc), kill=True) from exc
            if frame is None:
                return
            self._deliver(frame)
            reader.drop()
            self._routed = None  # not pinned until the next frame (it may be a large one)

    def _deliver(self, frame: bytes) -> None:
        reply_id = messages.peek_id(frame)
        item: bytes | dict[str, Any] = frame
        if reply_id == 0 and 0 not in self._calls:
            # Not where every reply has its id: decode it here, to refuse it if it is malformed.
            item = self._decoded(frame)
            reply_id = item["id"]
        with self._cv:
            if frame is self._routed:
                return  # handed over already, just before an interruption
            self._unanswered.pop(reply_id, None)
            box = self._calls.get(reply_id)
            if box is not None:
                box.append(item)
                self._cv.notify_all()
            self._routed = frame
            # else: a reply to an abandoned call (interrupted, closed stream) or a stray id: dropped.
        if box is not None and len(box) > self.proto.max_pending:
            raise self._break(self.proto.flooded(reply_id), kill=True)

    def _fill(self) -> None:
        try:
            self._reader.fill()
        except BlockingIOError:
            pass
        except (PipeClosed, OSError) as exc:
            raise self._fail(exc) from exc

    def _wait_readable(self, deadline: float | None, name: str, timeout: float | None) -> None:
        """Block until bytes arrive and read them once; raise at the deadline or when the worker died.

        The shared-memory socket is drained whenever it is readable, so a peer may send any number
        of buffers before their frame."""
        self._reader.spin(SPIN)
        poll = self._waiter
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise self._timed_out(name, timeout)
            step = remaining if self._pidfd is not None else min(remaining or POLL_STEP, POLL_STEP)
            events = dict(poll.poll(None if step is None else max(step, 0) * 1000))
            if self._broken is not None:
                raise copy.copy(self._broken)
            if self._sock is not None and events.get(self._sock):
                self._take_attachments()
            if events.get(self.worker.read_fd):
                try:
                    self._reader.fill()
                except BlockingIOError:
                    continue
                except (PipeClosed, OSError) as exc:
                    raise self._fail(exc) from exc
                return
            if (self._pidfd is not None and self._pidfd in events) or (self._pidfd is None and not self.worker.alive()):
                # The worker is gone; whatever it wrote before dying is read above first.
                raise self._fail(PipeClosed("the worker exited"))

    def _poll(self) -> select.poll:
        """What the read loop waits on: the output pipe, the worker's pidfd, the shared-memory socket."""
        poll = select.poll()
        poll.register(self.worker.read_fd, select.POLLIN)
        for fd in (self._pidfd, self._sock):
            if fd is not None:
                poll.register(fd, select.POLLIN)
        return poll

    def _fail(self, cause: BaseException) -> PodError:
        """The worker died: fail every call in flight now, with its exit status and last stderr lines."""
        if self._broken is None:
            code, tail = self.worker.exit_report()
            self._set_broken(self.proto.crash_error(self.worker.pid, code, tail, self.worker.exit_note(code)))
        assert self._broken is not None
        return copy.copy(self._broken)

    def _break(self, error: PodError, kill: bool = False) -> PodError:
        """End this connection with *error* (the first one wins) and stop its worker."""
        self._set_broken(error)
        if kill:
            self.worker.kill()
        assert self._broken is not None
        return copy.copy(self._broken)

    def _timed_out(self, name: str, timeout: float | None) -> PodError:
        # The worker is stuck in this call; killing it is the only way to stop it. Other calls on it
        # get a PodWorkerError; none of this counts as a crash.
        self._break(self.proto.killed_error(name), kill=True)
        return self.proto.timeout_error(name, timeout)

    def _set_broken(self, error: PodError) -> None:
        with self._cv:
            if self._broken is None:
                self._broken = error
            self._cv.notify_all()

    def close(self, kill: bool = False) -> None:
        """Stop the worker (killed at once if calls are in flight); waiting calls get PodClosedError."""
        busy = self.in_flight() > 0
        self._set_broken(PodClosedError(f"pod {self.pod!r} was closed"))
        with self._cv:
            if not self._writers:
                self._close_input()  # first, so that stop() closing the worker's copy is an end of file
        try:
            if kill or busy:
                self.worker.kill()
            else:
                self.worker.stop(grace=0.5)
        finally:  # also after a Ctrl-C while it waited for the worker to exit: never leak the pipes
            with self._cv:
                self._closed = True
                self._release_unused()

    def _close_input(self) -> None:
        _close_fd(self._wfd)
        self._wfd = None

    def _release_unused(self) -> None:
        """After close(): release the descriptors once no thread reads or writes them (hold ``_cv``)."""
        if self._closed and not self._reading and not self._writers:
            self._release()

    def _release(self) -> None:
        """Close our pipes, the pidfd and the buffers no frame claimed; only when no thread can be
        polling them (hold ``_cv``)."""
        self._close_input()
        self.worker.release()
        _close_fd(self._pidfd)
        self._pidfd = None
        if self.inbox is not None:
            self.inbox.clear()


def _close_fd(fd: int | None) -> None:
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass
