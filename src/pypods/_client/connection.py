"""One worker's connection: request ids, replies routed to their callers, failures fanned out at once.

Reading is leader/follower: the first caller that needs a reply reads the pipe itself and hands
other callers' replies to them, so a call from one thread costs one write and one read, with no
thread hop, and many threads can still have calls in flight. If the pipe closes, whoever reads
sees it at once and every call in flight fails with ``PodCrashedError``.
"""

from __future__ import annotations

import collections
import copy
import itertools
import os
import pickle
import threading
import time
from typing import TYPE_CHECKING, Any

from .._errors import (
    PodClosedError,
    PodCrashedError,
    PodError,
    PodProtocolError,
    PodSerializationError,
    PodTimeoutError,
    PodWorkerError,
)
from .._worker import codec, messages
from .._worker.codec import EncodeError, Encoder
from .._worker.decoding import DecodeError, Decoder
from .._worker.exttypes import DEFAULT_THRESHOLD, MissingLibrary, OutOfBand
from .._worker.framing import FrameError, FrameReader, PipeClosed, write_all
from .base import Stream, StreamCredit, check_hello, error_from_reply

if TYPE_CHECKING:
    from .process import WorkerProcess

SPIN = float(os.environ.get("PYPODS_SPIN_US", "100")) / 1e6  # see FrameReader.spin


class NotSentError(PodCrashedError):
    """The worker was already gone when we wrote: the call never reached it, so it may be resent."""


class ProcessConnection:
    """Calls to one worker process; any number of threads may use it at once."""

    def __init__(self, worker: WorkerProcess, start_timeout: float | None = 300.0, threshold: int = DEFAULT_THRESHOLD):
        self.pod = worker.pod_name
        self.worker = worker
        self.threshold = threshold
        self._reader = FrameReader(worker.read_fd)
        self._decoder = Decoder(OutOfBand(threshold, worker.channel))
        self._wlock = threading.Lock()
        self._cv = threading.Condition(threading.Lock())
        self._reading = False
        self._closed = False  # close() was called: the last reader releases the output pipe
        self._inbox: dict[int, collections.deque[dict[str, Any]]] = {}
        self._broken: PodError | None = None
        self._ids = itertools.count(1)
        self._registered = 0  # the class registry version the worker knows
        self.description: list[dict[str, Any]] = []
        self.hello: dict[str, Any] = {}
        try:
            self._handshake(start_timeout)
        except BaseException:
            self.close(kill=True)
            raise

    # -- start ---------------------------------------------------------------------------------

    def _handshake(self, timeout: float | None) -> None:
        # 1. The worker speaks first: protocol version, pid, Python, and its functions (or why not).
        with self._cv:
            self._inbox[0] = collections.deque()
        deadline = None if timeout is None else time.monotonic() + timeout
        hello = self._receive(0, deadline, what="(start)", timeout=timeout)
        with self._cv:
            del self._inbox[0]
        self.description = check_hello(self.pod, hello)
        self.hello = hello

    # -- calls ---------------------------------------------------------------------------------

    def in_flight(self) -> int:
        return len(self._inbox)

    @property
    def broken(self) -> PodError | None:
        return self._broken

    def call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None) -> Any:
        """Send one call and wait for its reply (see ``Connection.call``)."""
        if self._registered != codec.registry_version():
            self._sync_registry()
        call_id = next(self._ids)
        big = OutOfBand(self.threshold, self.worker.channel)
        data = encode_call(big, call_id, name, args, kwargs, self.worker.codec, self.pod)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            self._inbox[call_id] = collections.deque()
        stream = False
        try:
            self._write(data)
            reply = self._receive(call_id, deadline, what=name, timeout=timeout)
            stream = bool(reply.get("stream"))
        except KeyboardInterrupt:
            # The pod function gets the Ctrl-C too (SIGINT if it runs, cancel if not yet started);
            # the worker lives on, and the reply, if any, is dropped.
            try:
                self.send_control({"id": call_id, "op": "cancel"})
            except PodError:
                pass
            self.worker.interrupt()
            raise
        finally:
            big.discard()
            if not stream:
                self._abandon(call_id)
        if stream:
            return ProcessStream(self, call_id, name, timeout)
        if reply.get("ok"):
            return reply_value(reply, "value")
        raise error_from_reply(self.pod, name, reply.get("error"))

    def _sync_registry(self) -> None:
        """Tell the worker which classes this client registered (before the call that may use them)."""
        version = codec.registry_version()
        self._write(Encoder().document({"id": 0, "op": "register", "classes": sorted(codec.REGISTERED.values())}))
        self._registered = version

    def _write(self, data: bytes | bytearray) -> None:
        with self._wlock:
            if self._broken is not None:
                raise copy.copy(self._broken)
            try:
                write_all(self.worker.write_fd, data)
            except (BrokenPipeError, ValueError, OSError) as exc:
                raise NotSentError(f"pod {self.pod!r}: worker was gone before the call was sent") from exc

    def send_control(self, message: dict[str, Any]) -> None:
        """Send a message that expects no reply of its own (stream credit, cancel)."""
        self._write(Encoder().document(message))

    def _abandon(self, call_id: int) -> None:
        with self._cv:
            self._inbox.pop(call_id, None)

    def _receive(
        self, call_id: int, deadline: float | None, what: str = "", timeout: float | None = None
    ) -> dict[str, Any]:
        """Wait for the next reply to *call_id*, reading the pipe ourselves if nobody else is."""
        cv = self._cv
        with cv:
            while True:
                box = self._inbox.get(call_id)
                if box:
                    return box.popleft()
                if self._broken is not None:
                    raise copy.copy(self._broken)
                if not self._reading:
                    self._reading = True
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise self._timed_out(what, timeout)
                cv.wait(remaining)
        try:
            return self._lead(call_id, deadline, what, timeout)
        finally:
            with cv:
                self._reading = False
                if self._closed:
                    self.worker.release()
                cv.notify_all()

    def _lead(self, call_id: int, deadline: float | None, what: str, timeout: float | None) -> dict[str, Any]:
        reader = self._reader
        while True:
            reader.spin(SPIN)
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not reader.readable(remaining):
                    raise self._timed_out(what, timeout)
            try:
                frame = reader.read_frame()
                reply = self._decoder.document(frame)
            except (PipeClosed, OSError) as exc:
                raise self._fail(PodCrashedError, exc) from exc
            except (FrameError, DecodeError) as exc:
                raise self._fail(PodProtocolError, exc) from exc
            except MissingLibrary as exc:
                reply = {"id": messages.peek_id(frame), "ok": False, "error": messages.error_info(exc, "decode")}
            reply_id = reply.get("id")
            if reply_id == call_id:
                return reply
            with self._cv:
                box = self._inbox.get(reply_id)  # type: ignore[arg-type]
                if box is not None:
                    box.append(reply)
                    self._cv.notify_all()
                # else: a reply to an abandoned call (interrupted, closed stream): dropped.

    def _fail(self, kind: type[PodError], cause: BaseException) -> PodError:
        """The worker is gone or garbled: fail every call in flight now, with what we know."""
        if kind is PodCrashedError:
            code, tail = self.worker.exit_report()
            from .._errors import describe_exit

            text = f"pod {self.pod!r}: worker (pid {self.worker.pid}) died: {describe_exit(code)}"
            if tail:
                text += "\nLast lines it wrote to stderr:\n" + tail
            error: PodError = PodCrashedError(text, returncode=code, stderr=tail)
        else:
            self.worker.kill()
            error = kind(f"pod {self.pod!r}: bad data from the worker: {cause}")
        self._set_broken(error)
        return copy.copy(error)

    def _timed_out(self, what: str, timeout: float | None) -> PodTimeoutError:
        # The worker is stuck in this call; killing it is the only way to stop it.
        message = f"pod {self.pod!r}, function {what!r}: no answer within {timeout}s; the worker was killed"
        self._set_broken(PodWorkerError(f"pod {self.pod!r}: worker killed after a call timed out ({what!r})"))
        self.worker.kill()
        return PodTimeoutError(message)

    def _set_broken(self, error: PodError) -> None:
        with self._cv:
            if self._broken is None:
                self._broken = error
            self._cv.notify_all()

    def close(self, kill: bool = False) -> None:
        """Stop the worker; calls still waiting get PodClosedError."""
        self._set_broken(PodClosedError(f"pod {self.pod!r} was closed"))
        if kill:
            self.worker.kill()
        else:
            self.worker.stop()
        with self._cv:
            self._closed = True
            if not self._reading:
                self.worker.release()


def encode_call(
    big: OutOfBand, call_id: int, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], codec_name: str, pod: str
) -> bytearray:
    """Encode a call request, or raise PodSerializationError (nothing has been sent yet)."""
    try:
        if codec_name != "pickle":
            return Encoder(big).request(call_id, name, args, kwargs)
        message: dict[str, Any] = {"id": call_id, "op": "call", "name": name}
        message.update(messages.pack_pickle((args, kwargs)))
        return Encoder(big).document(message)
    except (EncodeError, RecursionError, pickle.PicklingError, TypeError, AttributeError) as exc:
        big.discard()
        raise PodSerializationError(f"pod {pod!r}, function {name!r}: {exc}") from exc


def reply_value(reply: dict[str, Any], key: str) -> Any:
    """The value a reply carries, unpickled for pods that use the pickle codec."""
    if "p" in reply:
        return messages.unpack_pickle(reply)
    return reply.get(key)


class ProcessStream(Stream):
    """The items of a generator running in a worker, with credit-based flow control."""

    def __init__(self, conn: ProcessConnection, call_id: int, name: str, timeout: float | None) -> None:
        self._conn = conn
        self._id = call_id
        self._name = name
        self._timeout = timeout
        self._done = False
        self._credit = StreamCredit()

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        try:
            reply = self._conn._receive(self._id, deadline, what=self._name, timeout=self._timeout)
        except BaseException:
            self._finish()
            raise
        if "yield" in reply:
            grant = self._credit.take(self._id)
            if grant is not None:
                self._conn.send_control(grant)
            return reply_value(reply, "yield")
        self._finish()
        if reply.get("end"):
            raise StopIteration
        raise error_from_reply(self._conn.pod, self._name, reply.get("error"))

    def _finish(self) -> None:
        self._done = True
        self._conn._abandon(self._id)

    def close(self) -> None:
        """Stop the generator in the pod (it sees GeneratorExit); items still in transit are dropped."""
        if self._done:
            return
        self._finish()
        try:
            self._conn.send_control({"id": self._id, "op": "cancel"})
        except PodError:
            pass
