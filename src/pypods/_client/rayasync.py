"""The asyncio face of the Ray backend: a ``RayConnection`` whose waits run in worker threads.

Ray's blocking calls (``ray.init``, an actor's start, waiting for a reply) run in threads, so the
event loop never blocks; ``AsyncWorkerPool`` then treats Ray actors as it treats local workers. A
task cancelled while its call runs cancels the Ray task and, since a running actor call cannot be
interrupted, retires the actor (the pool starts a new one), as a cancelled local call sends
``cancel``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from .._errors import PodError, PodWorkerError
from .base import AsyncStream, Stream
from .raypool import RayConnection, open_ray

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from .._env.layout import PodLayout, PodSettings

_END = object()


class AsyncRayConnection:
    """One Ray actor for ``AsyncWorkerPool`` (the ``AsyncConnection`` protocol)."""

    def __init__(self, conn: RayConnection) -> None:
        self._conn = conn
        self.pod = conn.pod
        self.description = conn.description
        self.hello = conn.hello

    @property
    def pid(self) -> int:
        return self._conn.pid

    @property
    def broken(self) -> PodError | None:
        return self._conn.broken

    def in_flight(self) -> int:
        return self._conn.in_flight()

    async def call(
        self,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        deadline: float | None = None,
    ) -> Any:
        """Await *name* on the actor (see ``RayConnection.call``); a generator gives an ``AsyncRayStream``."""
        try:
            result = await asyncio.to_thread(self._conn.call, name, args, kwargs, timeout, deadline)
        except asyncio.CancelledError:
            self._conn._break(PodWorkerError(f"pod {self.pod!r}: a call to {name!r} was cancelled"))
            raise
        return AsyncRayStream(result) if isinstance(result, Stream) else result

    async def aclose(self, kill: bool = False) -> None:
        self._conn.close(kill)  # never blocks


class AsyncRayStream(AsyncStream):
    """A Ray stream's items, each awaited in a thread; ``aclose()`` (or dropping it) cancels it in the actor."""

    def __init__(self, stream: Stream) -> None:
        self._stream = stream

    async def __anext__(self) -> Any:
        item = await asyncio.to_thread(next, self._stream, _END)
        if item is _END:
            raise StopAsyncIteration
        return item

    async def aclose(self) -> None:
        self._stream.close()

    def __del__(self) -> None:
        self._stream.close()


async def open_ray_async(layout: PodLayout, settings: PodSettings) -> Callable[[], Awaitable[AsyncRayConnection]]:
    """``open_ray`` for asyncio: check the options and join the cluster in a thread; return ``async spawn()``."""
    spawn = await asyncio.to_thread(open_ray, layout, settings)

    async def aspawn() -> AsyncRayConnection:
        return AsyncRayConnection(await asyncio.to_thread(spawn))

    return aspawn
