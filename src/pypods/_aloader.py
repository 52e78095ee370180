"""``AsyncPod``: the asyncio twin of ``Pod``, whose functions are awaited and whose generators are async-iterated.

Everything but ``await`` is shared with ``Pod`` (``_loader.PodBase``, ``_client.pool.Slots``,
``_client.core``); the environment is prepared in a thread so the loop never blocks on a build.
"""

from __future__ import annotations

import asyncio
import weakref
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
        self._draining: set[AsyncWorkerPool] = set()  # replaced by a reload, closed when their calls end
        self._tasks: set[asyncio.Task[Any]] = set()
        # Every pool not yet closed: dropping the pod without aclose() ends their workers (as for Pod).
        self._held: list[AsyncWorkerPool] = []
        weakref.finalize(self, _abandon, self._held)

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
        self._held.append(self._pool)
        if old is not None:
            # Calls still running on the old code finish there (nobody closed the pod); aclose() ends it.
            self._draining.add(old)
            if old.in_flight() == 0:
                await self._retire(old)
            else:
                task = asyncio.get_running_loop().create_task(self._retire(old))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        if description is None or settings.start == "eager":
            await self._pool.start(1 if settings.start == "lazy" else None)
        self._set_functions(description if description is not None else self._pool.description or [], make_async_proxy)

    async def call(self, name: str, /, *args: Any, timeout: float | None = _UNSET, **kwargs: Any) -> Any:
        """Await pod function *name*; ``timeout`` is this call's deadline; errors as for ``Pod.call``."""
        return await self._call(name, args, kwargs, timeout)

    async def _retire(self, old: AsyncWorkerPool) -> None:
        while old.in_flight() > 0 and old in self._draining:
            await asyncio.sleep(0.05)
        self._draining.discard(old)
        await old.aclose()
        if old in self._held:
            self._held.remove(old)

    async def _call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None) -> Any:
        if self._watch is not None and not self._closed and self._watch.changed():
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
        draining, self._draining = list(self._draining), set()
        for pool in [*draining, self._pool]:
            if pool is not None:
                await pool.aclose()
        self._held.clear()

    async def __aenter__(self) -> AsyncPod:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await AsyncPod.aclose(self)


def _abandon(pools: list[AsyncWorkerPool]) -> None:
    for pool in pools:
        pool.abandon()
    pools.clear()


async def aload(name: str, **options: Any) -> AsyncPod:
    """Open pod *name* for asyncio and return it; see ``Pod`` for the options and errors."""
    return await AsyncPod.open(name, **options)
