"""A warm template per pod (#23 part 2): workers are forks of one process that imported pod.py once."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

import pypods
from conftest import _children

pytestmark = pytest.mark.skipif(not hasattr(os, "fork") or not sys.platform.startswith("linux"), reason="fork")

SLOW = """
import os, time
time.sleep(1.0)  # a heavy import
IMPORTED_BY = os.getpid()

def who():
    return os.getpid(), IMPORTED_BY, os.getppid()

def sleep(seconds):
    time.sleep(seconds)

def die():
    os._exit(7)
"""

THREADED = """
import threading, time
threading.Thread(target=time.sleep, args=(60,), daemon=True).start()

def ping():
    return "pong"
"""


def test_workers_are_forks_of_one_import(make_pod, root: Path) -> None:
    make_pod("slow", SLOW)
    began = time.monotonic()
    with pypods.load("slow", root=root, workers=4, start="eager", template=True) as pod:
        answers = {pod.who() for _ in range(40)}
        pids = set(pod.pids())
        assert time.monotonic() - began < 3.5  # one import (1 s), not four in a row
        assert len({imported for _, imported, _ in answers}) == 1  # all forked from one template
        assert all(pid != imported for pid, imported, _ in answers)
        assert {pid for pid, _, _ in answers} <= pids


def test_a_replacement_after_a_timeout_is_a_fork(make_pod, root: Path) -> None:
    make_pod("slow", SLOW)
    with pypods.load("slow", root=root, template=True) as pod:
        _, template, _ = pod.who()
        with pytest.raises(pypods.PodTimeoutError):
            pod.call("sleep", 30, timeout=0.3)
        began = time.monotonic()
        _, again, _ = pod.who()
        assert again == template
        assert time.monotonic() - began < 0.5  # no second import (1 s)


def test_a_forked_worker_crash_reports_its_exit_code(make_pod, root: Path) -> None:
    make_pod("slow", SLOW)
    with pypods.load("slow", root=root, template=True) as pod:
        with pytest.raises(pypods.PodCrashedError, match="exit code 7") as info:
            pod.die()
        assert info.value.returncode == 7
        victim, _, _ = pod.who()
        threading.Timer(0.3, os.kill, (victim, signal.SIGKILL)).start()
        with pytest.raises(pypods.PodCrashedError, match="SIGKILL; killed from outside the client"):
            pod.sleep(5)
        assert pod.who()[0] != victim


def test_an_import_that_starts_threads_falls_back_with_a_notice(
    make_pod, root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_pod("threaded", THREADED)
    with pypods.load("threaded", root=root, template=True) as pod:
        assert pod.ping() == "pong"
    notices = [r.getMessage() for r in caplog.records if "not from a template" in r.getMessage()]
    assert len(notices) == 1, notices
    assert "thread" in notices[0]


def test_template_in_pod_toml_and_the_default_is_off(make_pod, root: Path) -> None:
    make_pod("slow", SLOW, toml="template = true\n")
    with pypods.load("slow", root=root) as pod:
        pid, imported, _ = pod.who()
        assert pid != imported
    with pypods.load("slow", root=root, template=False) as pod:
        pid, imported, _ = pod.who()
        assert pid == imported


def test_template_must_be_a_bool(make_pod, root: Path) -> None:
    make_pod("slow", SLOW, toml='template = "yes"\n')
    with pytest.raises(pypods.PodConfigError, match="template"):
        pypods.load("slow", root=root)


def test_a_forked_worker_over_its_memory_limit_is_killed_and_forked_anew(make_pod, root: Path) -> None:
    make_pod("slow", SLOW + "\ndef hog(mb):\n    return len([bytearray(b'x') * 10**7 for _ in range(mb // 10)])\n")
    with pypods.load("slow", root=root, template=True, memory="200MB") as pod:
        _, template, _ = pod.who()
        with pytest.raises(pypods.PodCrashedError, match="exceeded its memory limit of 200 MB") as info:
            pod.hog(3000)
        assert "peak RSS" in str(info.value)
        assert pod.hog(50) == 5
        assert pod.who()[1] == template


def _templates() -> set[int]:
    return {pid for pid in _children() if b"_pypods_worker.template" in Path(f"/proc/{pid}/cmdline").read_bytes()}


def test_the_template_ends_with_the_pod_and_a_reload_makes_a_new_one(make_pod, root: Path) -> None:
    pod_dir = make_pod("quick", "import os\nSTAMP = 1\ndef who():\n    return os.getpid(), os.getppid(), STAMP\n")
    with pypods.load("quick", root=root, template=True, reload=True) as pod:
        _, first, stamp = pod.who()
        assert stamp == 1
        assert _templates() == {first}
        (pod_dir / "pod.py").write_text(
            "import os\nSTAMP = 22\ndef who():\n    return os.getpid(), os.getppid(), STAMP\n"
        )
        time.sleep(0.6)  # the source is looked at no more than every half second
        _, second, stamp = pod.who()
        assert stamp == 22
        assert second != first
        deadline = time.monotonic() + 5
        while _templates() != {second} and time.monotonic() < deadline:
            time.sleep(0.05)  # the old pool drains, then its template ends
        assert _templates() == {second}
    assert _templates() == set()


def test_asyncio_pods_fork_from_a_template_too(make_pod, root: Path) -> None:
    make_pod("slow", SLOW)

    async def main() -> tuple[int, int]:
        async with await pypods.aload("slow", root=root, template=True) as pod:
            pid, imported, _ = await pod.who()
            return pid, imported

    pid, imported = asyncio.run(main())
    assert pid != imported
    assert _templates() == set()


def test_the_template_keeps_none_of_the_workers_pipes(make_pod, root: Path) -> None:
    make_pod("slow", SLOW)
    with pypods.load("slow", root=root, template=True, workers=3, start="eager") as pod:
        _, template, _ = pod.who()
        fds = Path(f"/proc/{template}/fd")
        links = {entry.name: os.readlink(entry) for entry in fds.iterdir()}
        pipes = {target for target in links.values() if target.startswith("pipe:")}
        assert pipes == {links["2"]}, links  # its own stderr (fd 1 is the same pipe), nothing of the workers'
        sockets = [target for target in links.values() if target.startswith("socket:")]
        assert len(sockets) == 1, links  # the control socket only: no worker's shared-memory socket
