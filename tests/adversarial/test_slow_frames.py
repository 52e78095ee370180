"""Deadlines against a pod that keeps the pipe busy: a frame dribbled out a byte at a time, and an
endless flood of valid frames for other calls (#11: "every wait has a deadline that covers the
whole frame"). Bytes that keep arriving must not keep extending the wait, in either client.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import pytest

import pypods
from adversarial.forge import FORGE

if TYPE_CHECKING:
    from pathlib import Path

    from conftest import PodFactory

BUSY = (
    FORGE
    + """
import time


def add(a, b):
    return a + b


def dribble():
    data = bson({"id": 1, "ok": True, "value": "x" * 1000})
    for i in range(len(data)):
        send(data[i:i + 1])
        time.sleep(0.05)


def flood():
    frame = bson({"id": 987654, "ok": True, "value": 1})
    while True:
        send(frame)
"""
)

DEADLINE = 1.0


@pytest.fixture
def busy(make_pod: PodFactory, root: Path) -> Path:
    make_pod("busy", BUSY)
    return root


@pytest.mark.parametrize("function", ["dribble", "flood"])
def test_a_busy_pipe_cannot_stretch_the_deadline(busy: Path, function: str) -> None:
    with pypods.load("busy", root=busy) as pod:
        started = time.monotonic()
        with pytest.raises(pypods.PodTimeoutError):
            pod.call(function, timeout=DEADLINE)
        elapsed = time.monotonic() - started
        assert elapsed < DEADLINE + 2.0, f"took {elapsed:.1f}s for a {DEADLINE}s deadline"
        assert pod.add(1, 2) == 3


@pytest.mark.parametrize("function", ["dribble", "flood"])
def test_a_busy_pipe_cannot_stretch_the_deadline_asyncio(busy: Path, function: str) -> None:
    async def main() -> float:
        async with await pypods.aload("busy", root=busy) as pod:
            started = time.monotonic()
            with pytest.raises(pypods.PodTimeoutError):
                await pod.call(function, timeout=DEADLINE)
            elapsed = time.monotonic() - started
            assert await pod.add(1, 2) == 3
            return elapsed

    elapsed = asyncio.run(main())
    assert elapsed < DEADLINE + 2.0, f"took {elapsed:.1f}s for a {DEADLINE}s deadline"
