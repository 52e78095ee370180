"""``AsyncPod``: the asyncio twin of ``Pod``, whose functions are awaited and whose generators are async-iterated.

Everything but ``await`` is shared with ``Pod`` (``_loader.PodBase``, ``_client.pool.Slots``,
``_client.core``); the environment is prepared in a thread so the loop never blocks on a build.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import weakref
from typing import TYPE_CHECKING, Any

from ._backends import (
    Prepared,
    TemplatedAsyncPool,
    new_worker,
    open_template,
    prepare,
    remember,
    start_deadline,
)
from ._client.aconnection import AsyncProcessConnection
from ._client.objects import ObjectRef, with_refs
from ._client.pool import AsyncWorkerPool, PoolRetired
from ._env import cache
from ._errors import PodError
from ._loader import _UNSET, PodBase
from ._objects import find_handles
from ._proxy import make_async_proxy

if TYPE_CHECKING:
    import os
    from collections.abc import Awaitable, Callable

    from ._client.base import AsyncConnection


class AsyncPod(PodBase):
    """A pod used from asyncio: ``await pod.foo(1, 2)``, ``async for x in pod.gen(3)``; ``async with``.

    Open it with ``await pypods.aload(name, **options)``; options and errors are those of ``Pod``.
    """

    _asynchronous = True

    def __init__(self, ready: Prepared, reload: bool | None = None) -> None:
        self._functions = {}
        self._setup(ready, reload)
        self._pool: AsyncWorkerPool | None = None
        # Every pool not yet closed (the current one and those draining after a reload): dropping the
        # pod without aclose() ends their workers (as for Pod).
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

    async def _open(self, describe: bool, deadline: float | None = None) -> None:
        """Open a pool (the old one drains) and build the proxies from the cache or a worker's hello."""
        layout, settings, env_key = self._layout, self._settings, self._env_key
        description = None if describe or settings.backend != "local" else cache.load(layout, env_key)
        describe = description is None

        source = open_template(layout, settings) if settings.template and settings.backend == "local" else None

        async def spawn() -> AsyncProcessConnection:
            worker = await asyncio.to_thread(new_worker, layout, settings, describe, source)
            conn = AsyncProcessConnection(worker)
            await conn.start(start_deadline(settings))
            remember(layout, env_key, conn.hello, conn.description)
            return conn

        spawner: Callable[[], Awaitable[AsyncConnection]] = spawn
        if settings.backend == "ray":
            from ._client.rayasync import open_ray_async

            spawner = await open_ray_async(layout, settings)
        args = (self._name, spawner, settings.workers, settings.idle_timeout, self._brake)
        pool = AsyncWorkerPool(*args) if source is None else TemplatedAsyncPool(source, *args)
        old, self._pool = self._pool, pool
        self._held.append(pool)
        if old is not None:
            # Calls still running on the old code finish there (nobody closed the pod); new calls it
            # is picked for go to this pool (PoolRetired); aclose() ends it at once.
            old.drain(then=functools.partial(_forget, self._held, old))
        if description is None or settings.start == "eager":
            await pool.start(1 if settings.start == "lazy" else None, deadline)
        self._set_functions(description if description is not None else pool.description or [], make_async_proxy)
        self._describe_due = False

    async def call(self, name: str, /, *args: Any, timeout: float | None = _UNSET, **kwargs: Any) -> Any:
        """Await pod function *name*; ``timeout`` is this call's deadline; errors as for ``Pod.call``."""
        return await self._call(name, args, kwargs, timeout)

    async def _call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None) -> Any:
        timeout = self._timeout(timeout)
        deadline = self._deadline(timeout)  # one absolute deadline for every wait below
        if self._reload_wanted():
            self._count_reload()  # PodCrashLoopError while the brake backs off; the reload stays due
            await self._open(describe=True, deadline=deadline)
        elif self._describe_due and self._pool is not None:
            await self._pool.start(1, deadline)  # a reload's start outlived its call: finish describing
            self._set_functions(self._pool.description or [], make_async_proxy)
            self._describe_due = False
        self._check_call(name)
        if args or kwargs:  # handles among the arguments: the call goes to their worker
            ref, refs = find_handles(self, args, kwargs)
            if ref is not None:
                wire, args, kwargs = with_refs(name, args, kwargs, refs)
                return self._wrapped(await ref.pool.call_on(ref, wire, args, kwargs, timeout, deadline))
        while True:
            assert self._pool is not None
            try:
                result = await self._pool.call(name, args, kwargs, timeout, deadline)
            except PoolRetired:
                continue  # picked just as a reload replaced it: the current pool takes the call
            return result if type(result) is not ObjectRef else self._handle(result)

    async def _call_object(
        self, ref: ObjectRef, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None
    ) -> Any:
        """Await *method* of live object *ref* in its worker (``AsyncPodObject`` methods come here)."""
        timeout = self._timeout(timeout)
        deadline = self._deadline(timeout)
        name, args, kwargs = self._object_call(ref, method, args, kwargs)
        return self._wrapped(await ref.pool.call_on(ref, name, args, kwargs, timeout, deadline))

    async def _flush_releases(self, ref: ObjectRef) -> None:
        """Tell *ref*'s worker now about the releases waiting for it (a handle's ``aclose()``)."""
        if self._closed or ref.conn is None or ref.conn.broken is not None:
            return
        try:
            await ref.pool.call_on(ref, "", (), {}, self._timeout(_UNSET))
        except PodError:
            pass

    def pids(self) -> list[int]:
        """Process ids of the running workers."""
        return [] if self._pool is None else self._pool.pids()

    async def aclose(self) -> None:
        """Stop the pod's workers; later calls raise PodClosedError."""
        self._closed = True
        held, self._held[:] = list(self._held), []
        for pool in held:
            await pool.aclose()

    async def __aenter__(self) -> AsyncPod:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await AsyncPod.aclose(self)


def _forget(held: list[AsyncWorkerPool], pool: AsyncWorkerPool) -> None:
    """A drained pool closed itself: hold it no longer."""
    with contextlib.suppress(ValueError):
        held.remove(pool)


def _abandon(pools: list[AsyncWorkerPool]) -> None:
    for pool in pools:
        pool.abandon()
    pools.clear()


async def aload(name: str, **options: Any) -> AsyncPod:
    """Open pod *name* for asyncio and return it; see ``Pod`` for the options and errors."""
    return await AsyncPod.open(name, **options)
