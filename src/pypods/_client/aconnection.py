"""One worker's connection on an asyncio event loop: no thread per call, any number of calls in flight.

The loop watches the worker's output pipe (``add_reader``) and resolves each call's future when its
reply arrives; writes are non-blocking, so a large argument never stalls the loop. Death of the
worker fails every pending future at once with ``PodCrashedError``.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from .._errors import (
    PodClosedError,
    PodCrashedError,
    PodError,
    PodProtocolError,
    PodTimeoutError,
    PodWorkerError,
    describe_exit,
)
from .._worker import codec, messages
from .._worker.codec import Encoder
from .._worker.decoding import DecodeError, Decoder
from .._worker.exttypes import DEFAULT_THRESHOLD, MissingLibrary, OutOfBand
from .._worker.framing import FrameError, FrameReader
from .base import StreamCredit, check_hello, error_from_reply
from .connection import encode_call, reply_value

if TYPE_CHECKING:
    from .process import WorkerProcess


class AsyncConnection:
    """Calls to one worker process from one event loop."""

    def __init__(self, worker: WorkerProcess, threshold: int = DEFAULT_THRESHOLD) -> None:
        self.pod = worker.pod_name
        self.worker = worker
        self.threshold = threshold
        self._loop = asyncio.get_running_loop()
        self._reader = FrameReader(worker.read_fd)
        self._decoder = Decoder(OutOfBand(threshold, worker.channel))
        self._pending: dict[int, asyncio.Queue[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._registered = 0
        self._broken: PodError | None = None
        self._out = bytearray()
        self._out_done: asyncio.Future[None] | None = None
        self.description: list[dict[str, Any]] = []
        self.hello: dict[str, Any] = {}
        os.set_blocking(worker.read_fd, False)
        os.set_blocking(worker.write_fd, False)
        self._pending[0] = asyncio.Queue()
        self._loop.add_reader(worker.read_fd, self._on_readable)

    async def start(self, timeout: float | None = 300.0) -> None:
        """Wait for the worker's hello (its functions, or why importing pod.py failed)."""
        try:
            hello = await self._next(0, timeout, "(start)")
        except BaseException:
            await self.aclose(kill=True)
            raise
        self._pending.pop(0, None)
        try:
            self.description = check_hello(self.pod, hello)
        except PodError:
            await self.aclose(kill=True)
            raise
        self.hello = hello

    def in_flight(self) -> int:
        return len(self._pending)

    @property
    def broken(self) -> PodError | None:
        return self._broken

    # -- reading -------------------------------------------------------------------------------

    def _on_readable(self) -> None:
        try:
            data = os.read(self.worker.read_fd, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._loop.remove_reader(self.worker.read_fd)
            self._loop.create_task(self._crashed())
            return
        self._reader.feed(data)
        while True:
            try:
                frame = self._reader.pop()
            except FrameError as exc:
                self._protocol_error(exc)
                return
            if frame is None:
                return
            try:
                reply = self._decoder.document(frame)
            except DecodeError as exc:
                self._protocol_error(exc)
                return
            except MissingLibrary as exc:
                reply = {"id": messages.peek_id(frame), "ok": False, "error": messages.error_info(exc, "decode")}
            queue = self._pending.get(reply.get("id"))  # type: ignore[arg-type]
            if queue is not None:
                queue.put_nowait(reply)

    def _protocol_error(self, exc: Exception) -> None:
        self._loop.remove_reader(self.worker.read_fd)
        self.worker.kill()
        self._fail(PodProtocolError(f"pod {self.pod!r}: bad data from the worker: {exc}"))

    async def _crashed(self) -> None:
        code, tail = await self._loop.run_in_executor(None, self.worker.exit_report)
        text = f"pod {self.pod!r}: worker (pid {self.worker.pid}) died: {describe_exit(code)}"
        if tail:
            text += "\nLast lines it wrote to stderr:\n" + tail
        self._fail(PodCrashedError(text, returncode=code, stderr=tail))

    def _fail(self, error: PodError) -> None:
        if self._broken is None:
            self._broken = error
        for queue in self._pending.values():
            queue.put_nowait({"broken": True})
        if self._out_done is not None and not self._out_done.done():
            self._out_done.set_exception(error)

    # -- writing -------------------------------------------------------------------------------

    async def _write(self, data: bytes | bytearray) -> None:
        if self._broken is not None:
            raise _copy(self._broken)
        if not self._out:
            try:
                sent = os.write(self.worker.write_fd, data)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                raise PodCrashedError(f"pod {self.pod!r}: worker is gone ({exc})") from exc
            if sent == len(data):
                return
            data = data[sent:]
        # The pipe is full: queue the rest and let the loop drain it as the worker reads.
        self._out += data
        if self._out_done is None or self._out_done.done():
            self._out_done = self._loop.create_future()
            self._loop.add_writer(self.worker.write_fd, self._on_writable)
        await asyncio.shield(self._out_done)

    def _on_writable(self) -> None:
        try:
            sent = os.write(self.worker.write_fd, self._out)
        except BlockingIOError:
            return
        except OSError as exc:
            self._loop.remove_writer(self.worker.write_fd)
            if self._out_done is not None and not self._out_done.done():
                self._out_done.set_exception(PodCrashedError(f"pod {self.pod!r}: worker is gone ({exc})"))
            return
        del self._out[:sent]
        if not self._out:
            self._loop.remove_writer(self.worker.write_fd)
            if self._out_done is not None and not self._out_done.done():
                self._out_done.set_result(None)

    # -- calls ---------------------------------------------------------------------------------

    async def _next(self, call_id: int, timeout: float | None, what: str) -> dict[str, Any]:
        queue = self._pending[call_id]
        try:
            reply = await asyncio.wait_for(queue.get(), timeout)
        except asyncio.TimeoutError:
            self._fail(PodWorkerError(f"pod {self.pod!r}: worker killed after a call timed out ({what!r})"))
            self._loop.remove_reader(self.worker.read_fd)
            self.worker.kill()
            raise PodTimeoutError(
                f"pod {self.pod!r}, function {what!r}: no answer within {timeout}s; the worker was killed"
            ) from None
        if reply.get("broken"):
            assert self._broken is not None
            raise _copy(self._broken)
        return reply

    async def call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None) -> Any:
        """Send one call and await its reply; a generator's items come as an ``AsyncStream``."""
        if self._registered != codec.registry_version():
            version = codec.registry_version()
            classes = sorted(codec.REGISTERED.values())
            await self._write(Encoder().document({"id": 0, "op": "register", "classes": classes}))
            self._registered = version
        call_id = next(self._ids)
        big = OutOfBand(self.threshold, self.worker.channel)
        data = encode_call(big, call_id, name, args, kwargs, self.worker.codec, self.pod)
        self._pending[call_id] = asyncio.Queue()
        stream = False
        try:
            await self._write(data)
            reply = await self._next(call_id, timeout, name)
            stream = bool(reply.get("stream"))
        finally:
            big.discard()
            if not stream:
                self._pending.pop(call_id, None)  # a cancelled task abandons its call here
        if stream:
            return AsyncStream(self, call_id, name, timeout)
        if reply.get("ok"):
            return reply_value(reply, "value")
        raise error_from_reply(self.pod, name, reply.get("error"))

    async def send_control(self, message: dict[str, Any]) -> None:
        await self._write(Encoder().document(message))

    async def aclose(self, kill: bool = False) -> None:
        """Stop the worker; calls still waiting get PodClosedError."""
        self._fail(PodClosedError(f"pod {self.pod!r} was closed"))
        for remove, fd in (
            (self._loop.remove_reader, self.worker.read_fd),
            (self._loop.remove_writer, self.worker.write_fd),
        ):
            try:
                remove(fd)
            except (ValueError, OSError):
                pass
        if kill:
            self.worker.kill()
        else:
            await self._loop.run_in_executor(None, self.worker.stop)
        self.worker.release()


class AsyncStream(AsyncIterator[Any]):
    """A pod generator's items as an async iterator; ``aclose()`` stops the generator in the pod."""

    def __init__(self, conn: AsyncConnection, call_id: int, name: str, timeout: float | None) -> None:
        self._conn = conn
        self._id = call_id
        self._name = name
        self._timeout = timeout
        self._done = False
        self._credit = StreamCredit()

    def __aiter__(self) -> AsyncStream:
        return self

    async def __anext__(self) -> Any:
        if self._done:
            raise StopAsyncIteration
        try:
            reply = await self._conn._next(self._id, self._timeout, self._name)
        except BaseException:
            self._finish()
            raise
        if "yield" in reply:
            grant = self._credit.take(self._id)
            if grant is not None:
                await self._conn.send_control(grant)
            return reply_value(reply, "yield")
        self._finish()
        if reply.get("end"):
            raise StopAsyncIteration
        raise error_from_reply(self._conn.pod, self._name, reply.get("error"))

    def _finish(self) -> None:
        self._done = True
        self._conn._pending.pop(self._id, None)

    async def aclose(self) -> None:
        if self._done:
            return
        self._finish()
        try:
            await self._conn.send_control({"id": self._id, "op": "cancel"})
        except PodError:
            pass


def _copy(error: PodError) -> PodError:
    return copy.copy(error)
