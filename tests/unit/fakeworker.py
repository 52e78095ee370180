"""An in-process worker for fast engine tests: the real ``Worker`` serve loop on a socketpair, in a thread.

``ThreadWorker`` offers what a connection needs of a worker process (``base.WorkerHandle``), so
``ProcessConnection``, ``AsyncProcessConnection`` and the pools run unchanged against it, in
milliseconds. "Killing" it shuts the socket down (which wakes both sides) and releases any pod
function blocked in ``gate``.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from pypods._client.connection import ProcessConnection
from pypods._client.pool import WorkerPool
from pypods._worker import sharedmem
from pypods._worker.framing import FrameError, PipeClosed
from pypods._worker.serve import Worker

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

_pids = itertools.count(1)


class Pod:
    """Functions of a fake pod; one instance per worker, with state tests can look at."""

    def __init__(self) -> None:
        self.gate = threading.Event()  # set by kill(): releases functions blocked in block()
        self.closed: list[int] = []  # streams whose generator was closed (finally ran)
        self.calls: list[Any] = []  # what record() was called with
        self.worker: Worker | None = None

    def functions(self) -> dict[str, Callable[..., Any]]:
        pod = self

        def add(a: Any, b: Any) -> Any:
            return a + b

        def record(value: Any) -> Any:
            pod.calls.append(value)
            return value

        def block(seconds: float = 30.0) -> str:
            pod.gate.wait(seconds)
            return "unblocked"

        def sleep(seconds: float) -> float:
            time.sleep(seconds)
            return seconds

        def fetch(url: str, timeout: float = 1) -> Any:
            return [url, timeout]

        def keyword_only(*, timeout: float) -> float:
            return timeout

        def countdown(n: int) -> Iterator[int]:
            try:
                yield from range(n, 0, -1)
            finally:
                pod.closed.append(n)

        def oserror_gen() -> Iterator[int]:
            yield 1
            raise OSError(5, "disk on fire")

        def bad_item_gen() -> Iterator[Any]:
            yield 1
            yield object()
            yield 3

        def unencodable() -> Any:
            return object()

        def raise_stop() -> None:
            raise StopIteration("remote")

        def raise_value(message: str) -> None:
            raise ValueError(message)

        def bad_str() -> None:
            class Weird(Exception):
                def __str__(self) -> str:
                    raise RuntimeError("no str")

            raise Weird()

        def forge(data: bytes) -> str:
            """Write raw bytes on the protocol socket, as a hostile pod could."""
            assert pod.worker is not None
            os.write(pod.worker.out, data)
            return "forged"

        def die() -> None:
            raise SystemExit  # pragma: no cover - not a crash in-process; kill() simulates one

        return {
            f.__name__: f
            for f in (
                add,
                record,
                block,
                sleep,
                fetch,
                keyword_only,
                countdown,
                oserror_gen,
                bad_item_gen,
                unencodable,
                raise_stop,
                raise_value,
                bad_str,
                forge,
                die,
            )
        }


class ThreadWorker:
    """A worker on a socketpair in a thread: ``base.WorkerHandle`` for tests."""

    def __init__(self, pod_name: str = "fake", codec: str = "bson", pod: Pod | None = None, shm: bool = False) -> None:
        self.pod_name = pod_name
        self.codec = codec
        pair = sharedmem.open_pair() if shm else None  # big buffers as sealed memfds, as a real worker
        self.channel: sharedmem.FdChannel | None = None if pair is None else pair[0]
        self.pid = 4_000_000 + next(_pids)  # no such process: no pidfd; liveness comes from alive()
        self.pod = pod or Pod()
        self._client, self._server = socket.socketpair()
        self.read_fd = self.write_fd = self._client.fileno()
        self.returncode: int | None = None
        self.killed = False
        self.worker = Worker(pod_name, "/nonexistent", self._server.fileno(), self._server.fileno(), codec)
        self.worker.functions = self.pod.functions()
        if pair is not None:
            self.worker.attach(sharedmem.FdChannel(pair[1]))
        self.pod.worker = self.worker
        self._thread = threading.Thread(target=self._serve, name=f"fake-{pod_name}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            self.worker.hello()
            self.worker.serve()
        except (PipeClosed, FrameError, OSError):
            pass
        finally:
            self.returncode = -9 if self.killed else 0
            try:
                self._server.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def alive(self) -> bool:
        return self._thread.is_alive() and not self.killed

    def interrupt(self) -> None:
        pass

    def exit_report(self, wait: float = 1.0) -> tuple[int | None, str]:
        self._thread.join(wait)
        return self.returncode, "fake worker ended"

    def kill(self) -> None:
        self.killed = True
        self.pod.gate.set()
        for sock in (self._server, self._client):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(5)

    def crash(self) -> None:
        """Die as a crash would: the socket closes under a call (not through kill())."""
        try:
            self._server.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.pod.gate.set()  # after: a released block() must not answer before the socket is gone
        self._thread.join(5)

    def stop(self, grace: float = 2.0) -> None:
        try:
            self._client.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self._thread.join(grace)
        if self._thread.is_alive():
            self.kill()

    def release(self) -> None:
        self._client.close()
        self._server.close()
        if self.channel is not None:
            self.channel.close()
        if self.worker.channel is not None:
            self.worker.channel.close()


def connect(**options: Any) -> ProcessConnection:
    """A sync connection to a fresh thread worker."""
    return ProcessConnection(ThreadWorker(**options), start_timeout=5)


def pool(size: int = 1, idle_timeout: float | None = None, spawn: Callable[[], Any] | None = None) -> WorkerPool:
    """A WorkerPool of thread workers (the spawned connections are in ``pool.spawned``)."""
    spawned: list[ProcessConnection] = []

    def make() -> ProcessConnection:
        conn = connect()
        spawned.append(conn)
        return conn

    made = WorkerPool("fake", spawn or make, size, idle_timeout)
    made.spawned = spawned  # type: ignore[attr-defined]
    return made
