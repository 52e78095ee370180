"""Hostile pods against the call path: forged frames on their own pipes, lies, stalls and forks (#11).

Each pod pastes ``forge.FORGE`` and writes what it likes on its protocol pipe. Every test asserts
the safe outcome: a typed ``PodError`` within about a second of the deadline, the connection
replaced, the next call right, and no code run in the client.
"""

from __future__ import annotations

import os
import resource
import signal
import time
from typing import TYPE_CHECKING

import pytest

import pypods
from adversarial.forge import FORGE

if TYPE_CHECKING:
    from pathlib import Path

    from conftest import PodFactory

HOSTILE = (
    FORGE
    + """
import os, struct, time


def add(a, b):
    return a + b


def half_frame(then_exit=False):
    # A header declaring 100 bytes, and only 10 of them.
    send(struct.pack("<i", 100) + b"\\x10id\\x00\\x01\\x00")
    if then_exit:
        os._exit(3)
    time.sleep(60)


def huge_header(size):
    send(struct.pack("<i", size) + b"\\x10id\\x00\\x01\\x00\\x00\\x00")
    time.sleep(60)


def forged(fields, ids=range(1, 6)):
    for call_id in ids:
        send(bson(dict({"id": call_id}, **fields)))
    return "real"


def pickled(path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (open, (path, "w"))

    data = pickle.dumps(Evil())
    for call_id in range(1, 6):
        send(bson({"id": call_id, "ok": True, "value": None, "p": data, "b": []}))
    return "real"


def stop(_=None):
    raise StopIteration("pod side")


def fork_and_die(pidfile):
    child = os.fork()
    if child == 0:  # keeps the protocol pipes open after its parent died
        time.sleep(60)
        os._exit(0)
    with open(pidfile, "w") as handle:
        handle.write(str(child))
    os._exit(4)
"""
)


@pytest.fixture
def hostile(make_pod: PodFactory, root: Path) -> Path:
    make_pod("hostile", HOSTILE)
    return root


def load(root: Path, **options: object) -> pypods.Pod:
    return pypods.load("hostile", root=root, **options)  # type: ignore[arg-type]


def assert_within(started: float, deadline: float) -> None:
    elapsed = time.monotonic() - started
    assert elapsed < deadline + 2.0, f"took {elapsed:.1f}s for a {deadline}s deadline"


def test_half_a_frame_then_silence_times_out(hostile: Path) -> None:
    with load(hostile) as pod:
        started = time.monotonic()
        with pytest.raises(pypods.PodTimeoutError):
            pod.half_frame.with_options(timeout=1.0)()
        assert_within(started, 1.0)
        assert pod.add(1, 2) == 3


def test_half_a_frame_then_exit_is_a_crash_at_once(hostile: Path) -> None:
    with load(hostile) as pod:
        started = time.monotonic()
        with pytest.raises(pypods.PodCrashedError):
            pod.half_frame(True)
        assert_within(started, 0)
        assert pod.add(1, 2) == 3


def test_a_2gb_header_is_refused_without_allocating(hostile: Path) -> None:
    with load(hostile) as pod:
        with pytest.raises(pypods.PodProtocolError, match="out of range"):
            pod.huge_header.with_options(timeout=5)(2**31 - 1)
        assert pod.add(1, 2) == 3


def test_a_large_declared_frame_that_never_comes_allocates_nothing(hostile: Path) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with load(hostile) as pod:
        started = time.monotonic()
        with pytest.raises(pypods.PodTimeoutError):
            pod.huge_header.with_options(timeout=1.0)(900 * 2**20)
        assert_within(started, 1.0)
        assert pod.add(1, 2) == 3
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown < 200 * 1024, f"the client grew by {grown // 1024} MiB for a frame it never got"


def test_a_pickled_reply_runs_no_code(hostile: Path, tmp_path: Path) -> None:
    marker = tmp_path / "created-by-the-pod"
    with load(hostile) as pod:
        with pytest.raises(pypods.PodProtocolError, match="pickle"):
            pod.pickled(str(marker))
        assert not marker.exists()
        assert pod.add(1, 2) == 3
    assert not marker.exists()


MALFORMED = [
    {"ok": True},
    {"ok": 1, "value": 2},
    {"ok": False, "error": 7},
    {"ok": False, "error": {"message": ["x"]}},
    {"ok": False, "error": {"mro": "builtins.ValueError"}},
    {"yield": 1},
    {"stream": "yes"},
]


@pytest.mark.parametrize("fields", MALFORMED)
def test_malformed_reply_fields_are_protocol_errors(hostile: Path, fields: dict[str, object]) -> None:
    with load(hostile) as pod:
        with pytest.raises(pypods.PodProtocolError):
            pod.forged(fields)
        assert pod.add(1, 2) == 3


def test_stray_replies_with_unknown_ids_are_ignored(hostile: Path) -> None:
    with load(hostile) as pod:
        assert pod.forged({"ok": True, "value": "stray"}, range(100, 110)) == "real"
        assert pod.add(1, 2) == 3


def test_a_remote_stop_iteration_cannot_end_a_loop(hostile: Path) -> None:
    with load(hostile) as pod:
        with pytest.raises(RuntimeError, match="StopIteration"):
            list(map(pod.stop, range(3)))  # a silent StopIteration would give []


def test_a_forked_child_cannot_hide_the_crash(hostile: Path, tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    with load(hostile) as pod:
        started = time.monotonic()
        try:
            with pytest.raises(pypods.PodCrashedError, match="exit code 4"):
                pod.fork_and_die(str(pidfile))
            assert_within(started, 0)
        finally:
            if pidfile.exists():  # the child would outlive us (its group is killed by newer pypods)
                try:
                    os.kill(int(pidfile.read_text()), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        assert pod.add(1, 2) == 3


def test_start_times_out_on_a_stalled_import(make_pod: PodFactory, root: Path) -> None:
    make_pod("stalled", FORGE + "\nimport struct, time\nsend(struct.pack('<i', 64))\ntime.sleep(60)\n")
    started = time.monotonic()
    with pytest.raises(pypods.PodTimeoutError, match="start"):
        pypods.load("stalled", root=root, start_timeout=1.0)
    assert_within(started, 1.0)
