"""One worker's connection from threads: the I/O shell around ``core.CallProtocol``.

Reading is leader/follower: the first caller that needs a reply reads the pipe itself and hands
other callers' replies to them, so a call from one thread costs one write and one read, with no
thread hop, and many threads can still have calls in flight. Every wait has a deadline covering the
whole frame; the worker's death is seen at once through a pidfd polled beside the pipe (a forked
child that keeps the pipe open cannot hide it), and every call in flight then fails together.
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
from .._worker.framing import FrameError, FrameReader, PipeClosed
from . import forking
from .core import MAX_PENDING, START, Outcome, WorkerConnection
from .pstream import ProcessStream

if TYPE_CHECKING:
    from .base import WorkerHandle

SPIN = float(os.environ.get("PYPODS_SPIN_US", "100")) / 1e6  # see FrameReader.spin
POLL_STEP = 0.5  # without a pidfd: how often a waiting reader checks that the worker still lives
DEFAULT_START_TIMEOUT = 60.0


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

    _calls: dict[int, collections.deque[dict[str, Any]]]  # replies for each call in flight

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
        self._poll = select.poll()
        self._poll.register(worker.read_fd, select.POLLIN)
        if self._pidfd is not None:
            self._poll.register(self._pidfd, select.POLLIN)
        self._wlock = threading.Lock()
        self._cv = threading.Condition(threading.Lock())
        self._reading = False
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
            hello = self._receive(0, deadline, START, timeout)
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
        data, big = proto.encode_call(call_id, name, args, kwargs, deadline)
        if deadline is not None and time.monotonic() >= deadline:  # passed while encoding (or before): send nothing
            big.discard()
            raise PodTimeoutError(f"pod {self.pod!r}, function {name!r}: no answer within {timeout}s "
                                  "(it passed before sending, while encoding; nothing was sent)")  # fmt: skip
        with self._cv:
            self._calls[call_id] = collections.deque()
        stream = False
        try:
            self._write(data, deadline, name, timeout, call_id)
            big.sent()  # the frame is out: its buffers are the worker's now, nothing to forget
            reply = self._receive(call_id, deadline, name, timeout)
            outcome = self._checked(proto.outcome, name, reply)
            stream = outcome.kind == Outcome.STREAM
        except KeyboardInterrupt:
            # The pod function gets the Ctrl-C too (SIGINT if it runs, cancel if not yet started);
            # the worker lives on, and the reply, if any, is dropped. A call queued behind another
            # thread's gets only the cancel: the SIGINT would stop that other call.
            with self._cv:
                running = next(iter(self._unanswered), None) == call_id
            self.send_control(proto.control(call_id, "cancel"))
            if self._broken is None and running:
                self.worker.interrupt()
            raise
        finally:
            big.discard()
            if not stream:
                self._abandon(call_id)
        if stream:
            return ProcessStream(self, call_id, name, timeout)
        return outcome.value

    def _checked(self, step: Any, name: str, reply: dict[str, Any]) -> Outcome:
        """Apply a core step to a reply; a malformed reply breaks the connection (it is replaced)."""
        try:
            return step(name, reply)  # type: ignore[no-any-return]
        except PodProtocolError as exc:
            self._break(exc, kill=True)
            raise

    def _write(
        self,
        data: bytes | bytearray,
        deadline: float | None,
        name: str,
        timeout: float | None,
        call_id: int | None = None,
    ) -> None:
        """Write one whole frame, or break the connection: a pipe is never left with half a frame."""
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
            try:
                for control in deferred:
                    self._write_frame(fd, memoryview(control), deadline, name, timeout)
                self._write_frame(fd, view, deadline, name, timeout)
                if call_id is not None:
                    with self._cv:
                        self._unanswered[call_id] = None  # under _wlock: in the order written
            except BaseException:
                if self._broken is None:  # interrupted mid-frame (Ctrl-C): this pipe is out of step
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

    def _write_frame(self, fd: int, view: memoryview, deadline: float | None, name: str, timeout: float | None) -> None:
        # The write fd is non-blocking: a worker that stops reading cannot hold us past the deadline,
        # and its death (the pidfd) wakes us even if a child of it keeps the pipe open. poll, not
        # select: a busy client may have descriptors above 1024, which select refuses.
        written = 0
        waiter: select.poll | None = None
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
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise self._timed_out(name, timeout)
            if waiter is None:
                waiter = select.poll()
                waiter.register(fd, select.POLLOUT)
                if self._pidfd is not None:
                    waiter.register(self._pidfd, select.POLLIN)
            events = dict(waiter.poll(None if remaining is None else remaining * 1000))
            if self._pidfd is not None and self._pidfd in events:
                if self._broken is not None or written:
                    raise self._fail(PipeClosed("the worker exited"))
                self._fail(PipeClosed("the worker exited"))
                raise NotSentError(f"pod {self.pod!r}: worker was gone before the call was sent")

    def send_control(self, message: bytearray, deferred: bool = False) -> None:
        """Send a message that expects no reply (credit, cancel).

        With *deferred* (closing a stream, from user code or a finalizer) it never blocks: if another
        thread is writing, or the pipe is full because the worker is busy, the message goes out
        with the next write.
        """
        if self._broken is not None:
            return
        if not self._wlock.acquire(blocking=not deferred):
            self._deferred.append(message)
            return
        try:
            fd = self._enter_write()
            try:
                view = memoryview(message)
                if deferred:
                    try:
                        view = view[os.write(fd, view) :]  # a control frame is far below PIPE_BUF: all or none
                    except BlockingIOError:
                        self._deferred.append(message)
                        return
                    except OSError:
                        return  # the worker is gone; its reader reports how
                if len(view):
                    self._write_frame(fd, view, None, "(control)", None)
            finally:
                self._exit_write()
        except PodError:
            pass
        finally:
            self._wlock.release()

    def _abandon(self, call_id: int) -> None:
        with self._cv:
            self._calls.pop(call_id, None)
            self._unanswered.pop(call_id, None)

    def _receive(self, call_id: int, deadline: float | None, name: str, timeout: float | None) -> dict[str, Any]:
        """Wait for the next reply to *call_id*, reading the pipe ourselves if nobody else is."""
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

    def _lead(self, call_id: int, deadline: float | None, name: str, timeout: float | None) -> dict[str, Any]:
        reader = self._reader
        proto = self.proto
        while True:
            try:
                frame = reader.pop()
            except FrameError as exc:
                raise self._break(proto.protocol_error(exc), kill=True) from exc
            if frame is None:
                self._wait_readable(deadline, name, timeout)
                continue
            try:
                reply = proto.decode(frame)
            except PodProtocolError as exc:
                raise self._break(exc, kill=True) from exc
            reply_id = reply["id"]
            with self._cv:
                self._unanswered.pop(reply_id, None)
                if reply_id == call_id:
                    return reply
                box = self._calls.get(reply_id)
                if box is not None:
                    box.append(reply)
                    self._cv.notify_all()
                # else: a reply to an abandoned call (interrupted, closed stream) or a stray id: dropped.
            if box is not None and len(box) > MAX_PENDING:
                raise self._break(proto.flooded(reply_id), kill=True)
            if deadline is not None and time.monotonic() > deadline:
                raise self._timed_out(name, timeout)  # a flood of other frames cannot stretch it

    def _wait_readable(self, deadline: float | None, name: str, timeout: float | None) -> None:
        """Block until bytes arrive and read them once; raise at the deadline or when the worker died."""
        self._reader.spin(SPIN)
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise self._timed_out(name, timeout)
            step = remaining if self._pidfd is not None else min(remaining or POLL_STEP, POLL_STEP)
            events = dict(self._poll.poll(None if step is None else max(step, 0) * 1000))
            if self._broken is not None:
                raise copy.copy(self._broken)
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
        if kill or busy:
            self.worker.kill()
        else:
            self.worker.stop(grace=0.5)
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
        """Close our pipes and the pidfd; only when no thread can be polling them (hold ``_cv``)."""
        self._close_input()
        self.worker.release()
        _close_fd(self._pidfd)
        self._pidfd = None


def _close_fd(fd: int | None) -> None:
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass
