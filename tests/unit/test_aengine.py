"""The asyncio side of the engine against an in-process worker: streams, cancel, timeouts, the async pool."""

from __future__ import annotations

import asyncio
import gc
import socket
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
            # One worker per timeout, but the 0.05 s deadline also bounds the wait for a fresh
            # worker's start: a call that timed out while it started leaves it to the next call.
            assert 2 <= len(made) <= 8
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


class _SlowReport(ThreadWorker):
    """A worker whose exit status takes a while to read (a busy machine reaping a killed process)."""

    def exit_report(self, wait: float = 1.0) -> tuple[int | None, str]:
        time.sleep(0.3)
        return super().exit_report(wait)


def test_calls_in_flight_on_a_killed_worker_get_crashed_never_closed() -> None:
    async def main() -> None:
        made: list[AsyncProcessConnection] = []

        async def spawn() -> AsyncProcessConnection:
            made.append(await connect(_SlowReport()))
            return made[-1]

        pool = AsyncWorkerPool("fake", spawn, 1)
        try:
            await pool.start()
            in_flight = [asyncio.ensure_future(pool.call("block", (10.0,), {}, 10)) for _ in range(20)]
            assert await eventually(lambda: made[0].in_flight() == 20)
            await asyncio.sleep(0.2)  # all twenty written
            worker = made[0].worker
            worker._server.shutdown(socket.SHUT_RDWR)  # type: ignore[attr-defined]  # dies before any reply
            worker.pod.gate.set()  # type: ignore[attr-defined]
            await asyncio.sleep(0.05)  # the end of file is seen; the exit status is still being read
            late = await asyncio.gather(*(pool.call("add", (1, 2), {}, 5) for _ in range(5)), return_exceptions=True)
            results = await asyncio.gather(*in_flight, return_exceptions=True)
            assert all(type(r) is pypods.PodCrashedError for r in results), results
            assert late == [3] * 5  # they arrived after the death: sent to a fresh worker
            assert len(made) == 2
            assert "fresh worker" not in str(results[0])
        finally:
            await pool.aclose()

    run(main())


def test_async_start_past_the_deadline_times_out_at_the_deadline_and_goes_on() -> None:
    async def main() -> None:
        made: list[AsyncProcessConnection] = []

        async def spawn() -> AsyncProcessConnection:
            await asyncio.sleep(1.5)
            made.append(await connect())
            return made[-1]

        pool = AsyncWorkerPool("fake", spawn, 1)
        try:
            began = time.monotonic()
            with pytest.raises(pypods.PodTimeoutError, match="still starting"):
                await pool.call("add", (1, 2), {}, 0.3)
            assert time.monotonic() - began < 1.0  # was 1.5 s
            assert await pool.call("add", (1, 2), {}, 5) == 3
            assert len(made) == 1
        finally:
            await pool.aclose()

    run(main())


def test_async_brake_backs_off_then_a_probe_re_arms_it() -> None:
    from pypods._client.brake import CrashBrake
    from pypods._client.pool import PoolState

    async def main() -> None:
        made: list[AsyncProcessConnection] = []

        async def spawn() -> AsyncProcessConnection:
            made.append(await connect())
            return made[-1]

        pool = AsyncWorkerPool("fake", spawn, 1, brake=CrashBrake("fake", first=0.3))
        try:
            for _ in range(5):
                assert await pool.call("add", (1, 1), {}, 5) == 2
                await asyncio.to_thread(made[-1].worker.crash)  # type: ignore[attr-defined]
                await eventually(lambda: made[-1].broken is not None)
            with pytest.raises(pypods.PodCrashLoopError):
                await pool.call("add", (1, 1), {}, 5)
            assert pool.state is PoolState.TRIPPED
            await asyncio.sleep(0.35)
            assert await pool.call("add", (1, 1), {}, 5) == 2
            assert pool.state is PoolState.OPEN
        finally:
            await pool.aclose()

    run(main())
