"""``AsyncPod``: the asyncio twin of ``Pod``, whose functions are awaited and whose generators are async-iterated.

Everything but ``await`` is shared with ``Pod`` (``_loader.PodBase``, ``_client.pool.Slots``,
``_client.core``); the environment is prepared in a thread so the loop never blocks on a build.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from ._backends import Prepared, new_worker, prepare, remember, start_deadline
from ._client.aconnection import AsyncProcessConnection
from ._client.pool import AsyncWorkerPool
from ._env import cache
from ._loader import _UNSET, PodBase
from ._proxy import make_async_proxy

if TYPE_CHECKING:
    import os
    from collections.abc import Awaitable, Callable

    from ._client.base import AsyncConnection


class AsyncPod(PodBase):
    """A pod used from asyncio: ``await pod.foo(1, 2)``, ``async for x in pod.gen(3)``; ``async with``.

    Open it with ``await pypods.aload(name, **options)``; options and errors are those of ``Pod``.
    """

    def __init__(self, ready: Prepared, reload: bool | None = None) -> None:
        self._functions = {}
        self._setup(ready, reload)
        self._pool: AsyncWorkerPool | None = None

    @classmethod
    async def open(
        cls,
        name: str,
        *,
        root: str | os.PathLike[str] | None = None,
        create: bool = True,
        progress: bool | None = None,
        reload: bool | None = None,
        **options: Any,
    ) -> AsyncPod:
        """Prepare the pod (in a thread), start its workers as configured, and describe it.

        A failed start stops every worker this call started.
        """
        ready = await asyncio.to_thread(prepare, name, root, create, options, progress)
        pod = cls(ready, reload)
        try:
            await pod._open(describe=False)
        except BaseException:
            if pod._pool is not None:
                await pod._pool.aclose()
            raise
        return pod

    async def _open(self, describe: bool) -> None:
        """Open a pool (closing the old one) and build the proxies from the cache or a worker's hello."""
        layout, settings, env_key = self._layout, self._settings, self._env_key
        description = None if describe or settings.backend != "local" else cache.load(layout, env_key)
        describe = description is None

        async def spawn() -> AsyncProcessConnection:
            worker = await asyncio.to_thread(new_worker, layout, settings, describe)
            conn = AsyncProcessConnection(worker)
            await conn.start(start_deadline(settings))
            remember(layout, env_key, conn.hello, conn.description)
            return conn

        spawner: Callable[[], Awaitable[AsyncConnection]] = spawn
        if settings.backend == "ray":
            from ._client.rayasync import open_ray_async

            spawner = await open_ray_async(layout, settings)
        old, self._pool = self._pool, AsyncWorkerPool(self._name, spawner, settings.workers, settings.idle_timeout)
        if old is not None:
            await old.aclose()
        if description is None or settings.start == "eager":
            await self._pool.start(1 if settings.start == "lazy" else None)
        self._set_functions(description if description is not None else self._pool.description or [], make_async_proxy)

    async def call(self, name: str, /, *args: Any, timeout: float | None = _UNSET, **kwargs: Any) -> Any:
        """Await pod function *name*; ``timeout`` is this call's deadline; errors as for ``Pod.call``."""
        return await self._call(name, args, kwargs, timeout)

    async def _call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None) -> Any:
        if self._watch is not None and self._watch.changed():
            await self._open(describe=True)
        self._check_call(name)
        assert self._pool is not None
        return await self._pool.call(name, args, kwargs, self._timeout(timeout))

    def pids(self) -> list[int]:
        """Process ids of the running workers."""
        return [] if self._pool is None else self._pool.pids()

    async def aclose(self) -> None:
        """Stop the pod's workers; later calls raise PodClosedError."""
        self._closed = True
        if self._pool is not None:
            await self._pool.aclose()

    async def __aenter__(self) -> AsyncPod:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await AsyncPod.aclose(self)


async def aload(name: str, **options: Any) -> AsyncPod:
    """Open pod *name* for asyncio and return it; see ``Pod`` for the options and errors."""
    return await AsyncPod.open(name, **options)
