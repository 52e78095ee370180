"""The hostile pods of ``test_callpath.py`` against ``AsyncPod``: the asyncio client must hold up the same way."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import TYPE_CHECKING, Any

import pytest

import pypods
from adversarial.forge import FORGE
from adversarial.test_callpath import HOSTILE, MALFORMED, assert_within

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

    from conftest import PodFactory


@pytest.fixture
def hostile(make_pod: PodFactory, root: Path) -> Path:
    make_pod("hostile", HOSTILE)
    return root


def run(root: Path, body: Callable[[pypods.AsyncPod], Awaitable[None]]) -> None:
    async def main() -> None:
        async with await pypods.aload("hostile", root=root) as pod:
            await body(pod)
            assert await pod.add(1, 2) == 3  # a fresh worker serves the next call

    asyncio.run(asyncio.wait_for(main(), 60))


def test_half_a_frame_then_silence_times_out(hostile: Path) -> None:
    async def body(pod: Any) -> None:
        started = time.monotonic()
        with pytest.raises(pypods.PodTimeoutError):
            await pod.half_frame.with_options(timeout=1.0)()
        assert_within(started, 1.0)

    run(hostile, body)


def test_half_a_frame_then_exit_is_a_crash_at_once(hostile: Path) -> None:
    async def body(pod: Any) -> None:
        started = time.monotonic()
        with pytest.raises(pypods.PodCrashedError):
            await pod.half_frame(True)
        assert_within(started, 0)

    run(hostile, body)


def test_a_2gb_header_is_refused(hostile: Path) -> None:
    async def body(pod: Any) -> None:
        with pytest.raises(pypods.PodProtocolError, match="out of range"):
            await pod.huge_header.with_options(timeout=5)(2**31 - 1)

    run(hostile, body)


def test_a_pickled_reply_runs_no_code(hostile: Path, tmp_path: Path) -> None:
    marker = tmp_path / "created-by-the-pod"

    async def body(pod: Any) -> None:
        with pytest.raises(pypods.PodProtocolError, match="pickle"):
            await pod.pickled(str(marker))

    run(hostile, body)
    assert not marker.exists()


@pytest.mark.parametrize("fields", MALFORMED)
def test_malformed_reply_fields_are_protocol_errors(hostile: Path, fields: dict[str, object]) -> None:
    async def body(pod: Any) -> None:
        with pytest.raises(pypods.PodProtocolError):
            await pod.forged(fields)

    run(hostile, body)


def test_stray_replies_are_ignored_and_stop_iteration_is_a_runtime_error(hostile: Path) -> None:
    async def body(pod: Any) -> None:
        assert await pod.forged({"ok": True, "value": "stray"}, range(100, 110)) == "real"
        with pytest.raises(RuntimeError, match="StopIteration"):
            await pod.stop()

    run(hostile, body)


def test_a_forked_child_cannot_hide_the_crash(hostile: Path, tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"

    async def body(pod: Any) -> None:
        started = time.monotonic()
        with pytest.raises(pypods.PodCrashedError, match="exit code 4"):
            await pod.fork_and_die(str(pidfile))
        assert_within(started, 0)
        _kill_child(pidfile)  # now, so that the dead worker's log pipe closes with it

    try:
        run(hostile, body)
    finally:
        _kill_child(pidfile)


def _kill_child(pidfile: Path) -> None:
    if pidfile.exists():  # the child would outlive us (its group is killed by newer pypods)
        try:
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_start_times_out_on_a_stalled_import(make_pod: PodFactory, root: Path) -> None:
    make_pod("stalled", FORGE + "\nimport struct, time\nsend(struct.pack('<i', 64))\ntime.sleep(60)\n")
    started = time.monotonic()
    with pytest.raises(pypods.PodTimeoutError, match="start"):
        asyncio.run(pypods.aload("stalled", root=root, start_timeout=1.0))
    assert_within(started, 1.0)
