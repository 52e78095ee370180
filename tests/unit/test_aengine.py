"""The asyncio side of the engine against an in-process worker: streams, cancel, timeouts, the async pool."""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

import pytest

import pypods
from pypods._client.aconnection import AsyncProcessConnection
from pypods._client.pool import AsyncWorkerPool

from .fakeworker import ThreadWorker


async def connect(worker: ThreadWorker | None = None) -> AsyncProcessConnection:
    conn = AsyncProcessConnection(worker or ThreadWorker())
    await conn.start(5)
    return conn


async def eventually(predicate: Any, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return False


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_calls_streams_and_a_call_while_a_stream_is_open() -> None:
    async def main() -> None:
        conn = await connect()
        try:
            assert await conn.call("add", (1, 2), {}, 5) == 3
            stream = await conn.call("countdown", (100,), {}, 5)
            assert await stream.__anext__() == 100
            assert await conn.call("add", (5, 5), {}, 5) == 10
            assert [item async for item in stream] == list(range(99, 0, -1))
        finally:
            await conn.aclose()

    run(main())


def test_break_out_of_async_for_cancels_the_generator() -> None:
    async def main() -> None:
        worker = ThreadWorker()
        conn = await connect(worker)
        try:
            stream = await conn.call("countdown", (500,), {}, 5)
            async for item in stream:
                if item == 498:
                    break
            del stream
            gc.collect()
            assert await eventually(lambda: 500 in worker.pod.closed)
            assert await conn.call("add", (1, 1), {}, 5) == 2
        finally:
            await conn.aclose()

    run(main())


def test_a_cancelled_task_sends_cancel_and_the_worker_goes_on() -> None:
    async def main() -> None:
        worker = ThreadWorker()
        conn = await connect(worker)
        try:
            blocked = asyncio.ensure_future(conn.call("block", (0.3,), {}, None))
            queued = asyncio.ensure_future(conn.call("record", ("skipped",), {}, None))
            await asyncio.sleep(0.05)
            queued.cancel()  # not started yet: the worker must skip it
            with pytest.raises(asyncio.CancelledError):
                await queued
            assert await blocked == "unblocked"
            assert await conn.call("add", (2, 2), {}, 5) == 4
            assert worker.pod.calls == []  # the cancelled call never ran
            assert conn.in_flight() == 0
        finally:
            await conn.aclose()

    run(main())


def test_timeout_kills_without_blocking_the_loop_and_is_not_a_crash() -> None:
    async def main() -> None:
        made: list[AsyncProcessConnection] = []

        async def spawn() -> AsyncProcessConnection:
            made.append(await connect())
            return made[-1]

        pool = AsyncWorkerPool("fake", spawn, 1)
        try:
            for _ in range(7):
                with pytest.raises(pypods.PodTimeoutError):
                    await pool.call("block", (5.0,), {}, 0.05)
            assert await pool.call("add", (1, 2), {}, 5) == 3
            assert len(made) == 8
        finally:
            await pool.aclose()
        with pytest.raises(pypods.PodClosedError):
            await pool.call("add", (1, 2), {}, 5)

    run(main())


def test_async_pool_idle_stop_and_least_busy_pick() -> None:
    async def main() -> None:
        async def spawn() -> AsyncProcessConnection:
            return await connect()

        pool = AsyncWorkerPool("fake", spawn, 2, idle_timeout=0.5)
        try:
            await pool.start()
            assert len(pool.pids()) == 2
            assert await eventually(lambda: pool.pids() == [], 10)
            assert await pool.call("add", (1, 2), {}, 5) == 3
        finally:
            await pool.aclose()

    run(main())


def test_close_gives_waiting_callers_closed_error() -> None:
    async def main() -> None:
        conn = await connect()
        waiting = asyncio.ensure_future(conn.call("block", (30.0,), {}, None))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await conn.aclose()
        with pytest.raises(pypods.PodClosedError):
            await waiting
        assert time.monotonic() - started < 1.5

    run(main())
