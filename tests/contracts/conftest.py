"""The contract suite's backends and drivers: one test body runs on the sync pod, the asyncio pod and Ray.

Backends come from ``BACKENDS``: ``sync`` and ``async`` always; ``ray`` when
``tests/contracts/ray_backend.py`` exists (it defines ``make_ray_pod(make_pod, name, **options)``
returning a sync ``Pod``, or raises ``pytest.skip``). A driver gives every backend the same
blocking API (``call``, ``timed``, ``stream``, ``close``); the asyncio pod runs on a private event
loop in a thread, so the test bodies have no ``await``.
"""

from __future__ import annotations

import asyncio
import importlib
import threading
from typing import TYPE_CHECKING, Any

import pytest

import pypods

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from conftest import PodFactory


class SyncDriver:
    """Drive a sync ``Pod`` (the local backend, or Ray's)."""

    def __init__(self, pod: pypods.Pod) -> None:
        self.pod = pod

    def call(self, function: str, /, *args: Any, **kwargs: Any) -> Any:
        """Call through the attribute proxy: every argument goes to the function."""
        return getattr(self.pod, function)(*args, **kwargs)

    def timed(self, deadline: float | None, function: str, /, *args: Any, **kwargs: Any) -> Any:
        """Call with a deadline of *deadline* seconds (``proxy.with_options``)."""
        return getattr(self.pod, function).with_options(timeout=deadline)(*args, **kwargs)

    def stream(self, function: str, *args: Any) -> Iterator[Any]:
        return iter(getattr(self.pod, function)(*args))

    def pids(self) -> list[int]:
        return pypods.Pod.pids(self.pod)

    def close(self) -> None:
        pypods.Pod.close(self.pod)

    def finish(self) -> None:
        self.close()


class AsyncDriver:
    """Drive an ``AsyncPod`` from blocking test code: its own loop runs in a thread."""

    def __init__(self, open_pod: Callable[[], Any]) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="contract-loop", daemon=True)
        self._thread.start()
        try:
            self.pod = self.run(open_pod())
        except BaseException:
            self._stop()
            raise

    def run(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def call(self, function: str, /, *args: Any, **kwargs: Any) -> Any:
        proxy = getattr(self.pod, function)
        return self.run(self._await(proxy(*args, **kwargs)))

    def timed(self, deadline: float | None, function: str, /, *args: Any, **kwargs: Any) -> Any:
        proxy = getattr(self.pod, function).with_options(timeout=deadline)
        return self.run(self._await(proxy(*args, **kwargs)))

    @staticmethod
    async def _await(awaitable: Any) -> Any:
        return await awaitable

    def stream(self, function: str, *args: Any) -> Iterator[Any]:
        lazy = getattr(self.pod, function)(*args)
        if not hasattr(lazy, "__anext__"):  # a generator its description could not tell (a decorated one)
            lazy = self.run(self._await(lazy))  # is a coroutine function whose call gives the stream
        while True:
            try:
                yield self.run(lazy.__anext__())
            except StopAsyncIteration:
                return

    def pids(self) -> list[int]:
        return pypods.AsyncPod.pids(self.pod)

    def close(self) -> None:
        self.run(pypods.AsyncPod.aclose(self.pod))

    def finish(self) -> None:
        try:
            self.close()
        finally:
            self._stop()

    def _stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()


def _ray_factory() -> Callable[..., pypods.Pod] | None:
    try:
        module = importlib.import_module("contracts.ray_backend")
    except ImportError:
        try:
            module = importlib.import_module("tests.contracts.ray_backend")
        except ImportError:
            return None
    return getattr(module, "make_ray_pod", None)


def _backends() -> dict[str, Callable[..., Any]]:
    """Backend name -> ``open(make_pod, name, root, **options)`` returning a driver."""

    def sync(make_pod: PodFactory, name: str, root: Path, **options: Any) -> SyncDriver:
        return SyncDriver(pypods.load(name, root=root, **options))

    def asyncio_(make_pod: PodFactory, name: str, root: Path, **options: Any) -> AsyncDriver:
        return AsyncDriver(lambda: pypods.aload(name, root=root, **options))

    found: dict[str, Callable[..., Any]] = {"sync": sync, "async": asyncio_}
    make_ray_pod = _ray_factory()
    if make_ray_pod is not None:

        def ray(make_pod: PodFactory, name: str, root: Path, **options: Any) -> SyncDriver:
            return SyncDriver(make_ray_pod(make_pod, name, root=root, **options))

        found["ray"] = ray
    return found


BACKENDS = _backends()

CONTRACT_POD = '''
import functools
import os
import time


def add(a, b):
    """Add two numbers."""
    return a + b


def echo(value):
    return value


def fail(message):
    raise ValueError(message)


def raise_stop(*_):
    raise StopIteration("from the pod")


def sleep(seconds):
    time.sleep(seconds)
    return seconds


def exit_now(code):
    os._exit(code)


def countdown(n):
    yield from range(n, 0, -1)


CLOSED = []


def tracked(n):
    try:
        yield from range(n)
    finally:
        CLOSED.append(n)


def closed():
    return CLOSED


def unsendable(n):
    try:
        yield 1
        while True:
            yield object()  # no encoding carries it: the stream ends with that error
    finally:
        CLOSED.append(-n)


def fetch(url, timeout=1):
    return [url, timeout]


def keyword_only(*, timeout):
    return timeout


def name():
    return "the pod's own name()"


def close():
    return "the pod's own close()"


def call(x):
    return ["the pod's own call()", x]


def settings():
    return "settings"


def functions():
    return "functions"


def pids():
    return "pids"


def layout():
    return "layout"


def interpreter():
    return "interpreter"


@functools.lru_cache(maxsize=None)
def cached(x):
    return x * 2


def _logged(function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        return function(*args, **kwargs)

    return wrapper


@_logged
def wrapped_countdown(n):
    yield from range(n, 0, -1)


def buffers(n, size):
    return [bytes([i % 256]) * size for i in range(n)]
'''


@pytest.fixture(
    params=[pytest.param(b, marks=[pytest.mark.ray, pytest.mark.slow] if b == "ray" else []) for b in sorted(BACKENDS)]
)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def open_pod(backend: str, make_pod: PodFactory, root: Path) -> Iterator[Callable[..., Any]]:
    """``open_pod(**options)``: the contract pod on this backend, as a driver; closed after the test.

    ``open_pod(name, source, **options)`` opens another pod (made from *source*) the same way.
    """
    opened: list[Any] = []

    def open_(name: str = "contract", source: str = CONTRACT_POD, **options: Any) -> Any:
        make_pod(name, source)
        driver = BACKENDS[backend](make_pod, name, root, **options)
        opened.append(driver)
        return driver

    yield open_
    for driver in opened:
        driver.finish()
