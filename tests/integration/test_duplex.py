"""Real pods under load both ways: a stream's items while a big call is written, many big buffers each way.

Issue #19 items 1 and 3: the sync writer reads while it waits (full duplex), and any number of
out-of-band buffers cross in one message, each way, on ``Pod`` and ``AsyncPod``.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import pytest

import pypods
from pypods._worker import sharedmem

if TYPE_CHECKING:
    from pathlib import Path

    from conftest import PodFactory

SOURCE = """
def items(n, size):
    for i in range(n):
        yield bytes([i % 256]) * size

def count(data):
    return len(data)

def many(n, size):
    return [bytes([i % 256]) * size for i in range(n)]

def sizes(buffers):
    return [(len(b), b[:1]) for b in buffers]
"""

MiB = 1 << 20


def test_a_big_call_while_a_stream_of_big_items_is_open(make_pod: PodFactory, root: Path) -> None:
    make_pod("duplex", SOURCE)
    with pypods.load("duplex", root=root) as pod:
        stream = pod.items(500, 200_000)
        assert next(stream) == b"\0" * 200_000  # the worker now fills the pipe with a window of items
        time.sleep(0.3)
        started = time.monotonic()
        assert pod.call("count", b"z" * 900_000, timeout=30) == 900_000  # hung for ever before
        print(f"900 KB call beside a stream of 200 KB items: {time.monotonic() - started:.3f} s")
        assert time.monotonic() - started < 10
        assert [len(item) for item in stream] == [200_000] * 499  # the stream lost nothing


@pytest.mark.skipif(not sharedmem.supported(), reason="no memfd / SCM_RIGHTS here")
def test_a_thousand_big_buffers_each_way(make_pod: PodFactory, root: Path) -> None:
    make_pod("many", SOURCE)
    with pypods.load("many", root=root) as pod:
        started = time.monotonic()
        back = pod.call("many", 1000, MiB, timeout=120)  # 71.6 s and a PodProtocolError for 285 before
        assert len(back) == 1000
        assert all(item == bytes([i % 256]) * MiB for i, item in enumerate(back))
        del back
        buffers = [bytes([i % 256]) * MiB for i in range(1000)]
        assert pod.call("sizes", buffers, timeout=120) == [(MiB, bytes([i % 256])) for i in range(1000)]
        print(f"1,000 x 1 MiB each way (sync): {time.monotonic() - started:.2f} s")
        assert time.monotonic() - started < 90


@pytest.mark.skipif(not sharedmem.supported(), reason="no memfd / SCM_RIGHTS here")
def test_a_thousand_big_buffers_each_way_on_asyncio(make_pod: PodFactory, root: Path) -> None:
    make_pod("amany", SOURCE)

    async def main() -> None:
        async with await pypods.aload("amany", root=root) as pod:
            started = time.monotonic()
            back = await pod.call("many", 1000, MiB, timeout=120)
            assert len(back) == 1000
            assert all(item == bytes([i % 256]) * MiB for i, item in enumerate(back))
            del back
            buffers = [bytes([i % 256]) * MiB for i in range(1000)]
            assert await pod.call("sizes", buffers, timeout=120) == [(MiB, bytes([i % 256])) for i in range(1000)]
            print(f"1,000 x 1 MiB each way (asyncio): {time.monotonic() - started:.2f} s")
            assert time.monotonic() - started < 90

    asyncio.run(main())


@pytest.mark.skipif(not sharedmem.supported(), reason="no memfd / SCM_RIGHTS here")
def test_the_event_loop_keeps_its_beat_during_big_calls(make_pod: PodFactory, root: Path) -> None:
    make_pod("beat", SOURCE)

    async def main() -> float:
        async with await pypods.aload("beat", root=root) as pod:
            await pod.call("count", b"warm")
            gaps: list[float] = []
            running = True

            async def heartbeat() -> None:
                last = time.monotonic()
                while running:
                    await asyncio.sleep(0.02)
                    now = time.monotonic()
                    gaps.append(now - last)
                    last = now

            one = b"x" * (32 * MiB)  # made before the beat starts: making them is the test's own work
            distinct = [bytes([i]) * MiB for i in range(200)]
            beat = asyncio.create_task(heartbeat())
            await asyncio.sleep(0.1)
            for _ in range(3):
                assert await pod.call("count", one, timeout=60) == 32 * MiB
                assert len(await pod.call("many", 200, MiB, timeout=60)) == 200
                assert len(await pod.call("sizes", distinct, timeout=60)) == 200
            running = False
            await beat
            return max(gaps) - 0.02

    late = asyncio.run(main())
    print(f"longest heartbeat delay: {late * 1000:.1f} ms")
    assert late < 0.05 * 2  # 50 ms, doubled for this noisy machine


@pytest.mark.skipif(not sharedmem.supported(), reason="no memfd / SCM_RIGHTS here")
def test_descriptors_above_1024_wait_like_any_other(make_pod: PodFactory, root: Path) -> None:
    import os
    import resource

    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 1500:
        pytest.skip("this process may not open 1,100 descriptors")
    make_pod("highfd", SOURCE)
    filler = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        with pypods.load("highfd", root=root) as pod:  # its pipes, pidfd and socket are all above 1024
            buffers = [b"h" * MiB] * 300  # more than the socket queues: the sender waits for room
            assert pod.call("sizes", buffers, timeout=60) == [(MiB, b"h")] * 300
            assert len(pod.call("many", 300, MiB, timeout=60)) == 300
    finally:
        for fd in filler:
            os.close(fd)
