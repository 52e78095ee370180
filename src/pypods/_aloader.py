"""``AsyncPod``: the asyncio twin of ``Pod``, whose functions are awaited and whose generators are async-iterated.

Its workers are its own (the sync ``Pod`` reads its pipes from the calling threads; this one reads
them from the event loop), and the environment is prepared in a thread so the loop never blocks on
a build.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from ._client.aconnection import AsyncConnection
from ._client.pool import CrashBrake
from ._env import cache
from ._errors import PodClosedError, PodCrashedError
from ._loader import _UNSET, FunctionsByName, Prepared, new_worker, prepare
from ._proxy import make_async_proxy

if TYPE_CHECKING:
    import os
    from collections.abc import Callable


class AsyncPod(FunctionsByName):
    """A pod used from asyncio: ``await pod.foo(1, 2)``, ``async for x in pod.gen(3)``; ``async with``.

    Open it with ``await pypods.aload(name, **options)``; options and errors are those of ``Pod``.
    """

    def __init__(self, ready: Prepared, description: list[dict[str, Any]]) -> None:
        self.layout, self.settings, self.interpreter, self._env_key = ready
        self.name = self.layout.name
        self._slots: list[AsyncConnection | None] = [None] * self.settings.workers
        self._starting: asyncio.Lock | None = None
        self._brake = CrashBrake(self.name)
        self._closed: str | None = None
        self._describe = True  # whether new workers must describe the pod (no valid cache)
        self._functions: dict[str, Callable[..., Any]] = {
            info["name"]: make_async_proxy(self, info) for info in description
        }

    @classmethod
    async def open(
        cls,
        name: str,
        *,
        root: str | os.PathLike[str] | None = None,
        create: bool = True,
        progress: bool | None = None,
        **overrides: Any,
    ) -> AsyncPod:
        """Prepare the pod (in a thread), start its workers as configured, and describe it."""
        ready = await asyncio.to_thread(prepare, name, root, create, overrides, progress)
        if ready.settings.backend != "local":
            raise NotImplementedError("the asyncio API serves local pods only; use pypods.load() for backend='ray'")
        description = cache.load(ready.layout, ready.env_key)
        pod = cls(ready, description or [])
        pod._describe = description is None
        if description is None or ready.settings.start == "eager":
            count = 1 if ready.settings.start == "lazy" else ready.settings.workers
            for index in range(count):
                conn = await pod._ensure(index)
                if index == 0 and description is None:
                    pod._functions = {info["name"]: make_async_proxy(pod, info) for info in conn.description}
        return pod

    async def _spawn(self) -> AsyncConnection:
        worker = await asyncio.to_thread(new_worker, self.layout, self.settings, self._describe)
        conn = AsyncConnection(worker)
        await conn.start()
        if "functions" in conn.hello:
            cache.store(self.layout, self._env_key, list(conn.hello.get("files") or []), conn.description)
        return conn

    async def _ensure(self, index: int) -> AsyncConnection:
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._closed is not None:
                raise PodClosedError(self._closed)
            conn = self._slots[index]
            if conn is not None and conn.broken is None:
                return conn
            if conn is not None:
                self._slots[index] = None
                crashed = not isinstance(conn.broken, PodClosedError)
                await conn.aclose(kill=True)
                if crashed:
                    self._note_crash()
            conn = await self._spawn()
            self._slots[index] = conn
            return conn

    def _note_crash(self) -> None:
        reason = self._brake.note()
        if reason is not None:
            self._closed = reason
            raise PodCrashedError(reason)

    async def call(self, name: str, /, *args: Any, timeout: float | None = _UNSET, **kwargs: Any) -> Any:
        """Await pod function *name*; errors as for ``Pod.call``."""
        if self._closed is not None:
            raise PodClosedError(self._closed)
        if name not in self._functions:
            self.__getattr__(name)
        index = min(range(len(self._slots)), key=lambda i: -1 if self._slots[i] is None else self._slots[i].in_flight())  # type: ignore[union-attr]
        conn = self._slots[index]
        if conn is None or conn.broken is not None:
            conn = await self._ensure(index)
        return await conn.call(name, args, kwargs, self.settings.timeout if timeout is _UNSET else timeout)

    def pids(self) -> list[int]:
        return [conn.worker.pid for conn in self._slots if conn is not None and conn.broken is None]

    async def aclose(self) -> None:
        """Stop the pod's workers; later calls raise PodClosedError."""
        if self._closed is None:
            self._closed = f"pod {self.name!r} was closed"
        slots, self._slots = self._slots, [None] * len(self._slots)
        await asyncio.gather(*(conn.aclose() for conn in slots if conn is not None))

    async def __aenter__(self) -> AsyncPod:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<AsyncPod {self.name!r} at {self.layout.pod_dir} ({len(self._functions)} functions)>"


async def aload(name: str, **options: Any) -> AsyncPod:
    """Open pod *name* for asyncio and return it; see ``Pod`` for the options and errors."""
    return await AsyncPod.open(name, **options)
