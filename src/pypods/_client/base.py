"""The seams of the client: what a worker, a connection and a pool must offer, and the stream types.

The loader holds a concrete ``pool.WorkerPool`` (or ``AsyncWorkerPool``); the pool talks only to
``Connection`` objects made by a ``spawn()`` factory (a worker process, a Ray actor, a fake in
tests). ``Pod`` and ``AsyncPod`` differ only in ``await``: ``Connection``/``AsyncConnection`` are twins.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .._errors import PodError
    from .._worker.sharedmem import FdChannel

__all__ = [
    "AsyncConnection",
    "AsyncStream",
    "Connection",
    "Stream",
    "WorkerHandle",
]


class WorkerHandle(Protocol):
    """What a process connection needs of its worker (``process.WorkerProcess``; a thread in tests)."""

    pod_name: str
    codec: str
    pid: int
    read_fd: int
    write_fd: int
    channel: FdChannel | None  # the shared-memory socket (sealed memfds), None where buffers go inline

    def alive(self) -> bool: ...
    def interrupt(self) -> None: ...
    def exit_report(self, wait: float = 1.0) -> tuple[int | None, str]: ...
    def exit_note(self, code: int | None) -> str: ...  # after exit_report: who ended it, limit, peak RSS
    def kill(self) -> None: ...
    def stop(self, grace: float = 2.0) -> None: ...
    def release(self) -> None: ...


class Connection(Protocol):
    """One worker's calls (a process, an actor): the unit the pool starts, picks and replaces."""

    pod: str
    description: list[dict[str, Any]]
    hello: dict[str, Any]

    @property
    def pid(self) -> int:
        """The worker's process id (for ``Pod.pids`` and diagnostics)."""

    @property
    def broken(self) -> PodError | None:
        """None while usable; else the error that ended it (crashed, timed out, closed, protocol)."""

    def in_flight(self) -> int:
        """Calls sent and not yet answered (the pool picks the least busy connection)."""

    def call(
        self,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        deadline: float | None = None,
    ) -> Any:
        """Run pod function *name* by *deadline* (``time.monotonic()``; default *timeout* from now);
        return its value, or a ``Stream`` if it is a generator."""

    def close(self, kill: bool = False) -> None:
        """Stop the worker (at once with *kill*); calls still waiting get ``PodClosedError``."""


class AsyncConnection(Protocol):
    """The asyncio twin of ``Connection``: ``call`` and ``aclose`` are awaited."""

    pod: str
    description: list[dict[str, Any]]
    hello: dict[str, Any]

    @property
    def pid(self) -> int: ...
    @property
    def broken(self) -> PodError | None: ...
    def in_flight(self) -> int: ...
    async def call(
        self,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        deadline: float | None = None,
    ) -> Any: ...
    async def aclose(self, kill: bool = False) -> None: ...


class Stream(Iterator[Any]):
    """Items of a pod generator as the pod produces them; ``close()`` stops the generator there.

    Dropping a stream (garbage collection) closes it too, so an abandoned generator never holds
    stream credit in its worker.
    """

    def close(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class AsyncStream(AsyncIterator[Any]):
    """A pod generator's items as an async iterator; ``aclose()`` (or dropping it) stops the generator."""

    async def aclose(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def __aiter__(self) -> AsyncStream:
        return self

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
