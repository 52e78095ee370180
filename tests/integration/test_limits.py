"""Memory limits and crash diagnosis (#23 part 1): a worker over ``memory`` is killed, the client lives on."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import threading
from typing import TYPE_CHECKING

import pytest

import pypods
from pypods._client import cgroups
from pypods._env import settings

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="memory limits need Linux")

HOG = """
import os, time

def hog(megabytes):
    chunks = []
    for _ in range(megabytes // 10):
        chunks.append(bytearray(b"x") * (10 * 1000 * 1000))  # touched: resident at once
    return len(chunks)

def pid():
    return os.getpid()

def sleep(seconds):
    time.sleep(seconds)
"""


@pytest.fixture
def hog(make_pod, root: Path) -> Path:
    make_pod("hog", HOG)
    return root


@pytest.fixture
def watch_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Force the watch path: no cgroup may take the limit, whatever this machine offers."""
    monkeypatch.setattr(cgroups, "memory_supported", lambda: False)


def _check_diagnosis(error: pypods.PodCrashedError) -> None:
    text = str(error)
    assert "exceeded its memory limit" in text, text
    assert "200 MB" in text, text
    assert "peak" in text, text


def test_watch_path_kills_a_worker_over_its_limit_and_the_next_call_works(hog: Path, watch_only: None) -> None:
    with pypods.load("hog", root=hog, memory="200MB") as pod:
        first = pod.pid()
        with pytest.raises(pypods.PodCrashedError) as info:
            pod.hog(3000)
        _check_diagnosis(info.value)
        assert pod.hog(50) == 5  # a fresh worker, under the limit
        assert pod.pid() != first


@pytest.mark.skipif(not cgroups.memory_supported(), reason="no cgroup v2 memory controller delegated here")
def test_cgroup_path_kills_a_worker_over_its_limit_and_the_next_call_works(hog: Path) -> None:
    with pypods.load("hog", root=hog, memory="200MB") as pod:
        with pytest.raises(pypods.PodCrashedError) as info:
            pod.hog(3000)
        _check_diagnosis(info.value)
        assert "memory.max" in str(info.value)
        assert pod.hog(50) == 5


def test_memory_in_pod_toml(make_pod, root: Path, watch_only: None) -> None:
    make_pod("hog", HOG, toml='memory = "200MB"\n')
    with pypods.load("hog", root=root) as pod:
        with pytest.raises(pypods.PodCrashedError) as info:
            pod.hog(3000)
        _check_diagnosis(info.value)


def test_a_kill_from_outside_says_so_with_the_peak(hog: Path) -> None:
    with pypods.load("hog", root=hog) as pod:
        victim = pod.pid()
        threading.Timer(0.5, os.kill, (victim, signal.SIGKILL)).start()
        with pytest.raises(pypods.PodCrashedError) as info:
            pod.sleep(30)
        text = str(info.value)
        assert "SIGKILL" in text
        assert "killed from outside the client (for example by the kernel's OOM killer)" in text
        assert "peak RSS" in text
        assert pod.hog(10) == 1


@pytest.mark.parametrize(
    ("given", "expected"),
    [(200_000_000, 200_000_000), ("200MB", 200_000_000), ("2GB", 2_000_000_000), ("1.5 GiB", 1610612736),
     ("512MiB", 512 * 2**20), ("64000000", 64_000_000)],
)  # fmt: skip
def test_sizes(given: object, expected: int) -> None:
    assert settings.parse_size(given) == expected


@pytest.mark.parametrize("given", ["lots", "-3MB", "0", 0, True, 1.5, "2XB", "1MB", "nan GB", 10**20])
def test_bad_sizes_are_refused(make_pod, root: Path, given: object) -> None:
    make_pod("hog", HOG)
    with pytest.raises(pypods.PodConfigError, match="memory"):
        pypods.load("hog", root=root, memory=given)


def test_an_unsupported_platform_refuses_the_setting(make_pod, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_pod("hog", HOG)
    monkeypatch.setattr(settings, "memory_supported", lambda: False)
    with pytest.raises(pypods.PodConfigError, match="memory"):
        pypods.load("hog", root=root, memory="1GB")


def test_cgroup_note_reads_memory_events(tmp_path: Path) -> None:
    """The cgroup path's diagnosis, on a stand-in cgroup folder (this machine may have no memory controller)."""
    (tmp_path / "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n")
    (tmp_path / "memory.peak").write_text("209715200\n")
    group = cgroups.WorkerCgroup(tmp_path, memory=200_000_000)
    assert group.oom_killed()
    assert group.peak() == 209715200


def test_a_cgroup_that_took_the_limit_is_not_watched_and_its_oom_kill_is_named(
    hog: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cgroup path end to end, on a stand-in cgroup folder: the kernel's kill is played by the test."""
    base = tmp_path / "cgroup"
    base.mkdir()
    monkeypatch.setattr(cgroups, "_base", base)
    monkeypatch.setattr(cgroups, "_memory", True)
    with pypods.load("hog", root=hog, memory="200MB") as pod:
        victim = pod.pid()
        group = base / str(victim)
        assert (group / "memory.max").read_text() == "200000000\n"
        assert (group / "memory.oom.group").read_text() == "1\n"
        (group / "memory.events").write_text("oom 1\noom_kill 1\n")
        (group / "memory.peak").write_text("200000000\n")
        threading.Timer(0.3, os.kill, (victim, signal.SIGKILL)).start()
        with pytest.raises(pypods.PodCrashedError) as info:
            pod.sleep(30)  # under the limit: only the (played) kernel kills it, never the watch
        assert "the cgroup's memory.max): the kernel killed it" in str(info.value)
        assert "peak RSS 200 MB" in str(info.value)


def test_asyncio_pods_get_the_diagnosis_too(hog: Path, watch_only: None) -> None:
    async def main() -> tuple[str, int]:
        async with await pypods.aload("hog", root=hog, memory="200MB") as pod:
            try:
                await pod.hog(3000)
            except pypods.PodCrashedError as exc:
                return str(exc), await pod.hog(50)
        raise AssertionError("no crash")

    text, after = asyncio.run(main())
    assert "exceeded its memory limit of 200 MB" in text
    assert after == 5


def test_a_big_client_does_not_pass_its_own_peak_off_as_the_workers(hog: Path) -> None:
    """A new process starts with its parent's high-water mark: a 400 MB client must not report 400 MB."""
    ballast = b"x" * (400 * 2**20)  # touched pages: the client's own peak RSS is now over 400 MB
    with pypods.load("hog", root=hog) as pod:
        victim = pod.pid()
        threading.Timer(0.3, os.kill, (victim, signal.SIGKILL)).start()
        with pytest.raises(pypods.PodCrashedError) as info:
            pod.sleep(30)
    assert len(ballast) == 400 * 2**20
    shown = re.search(r"peak RSS ([\d.]+) (MB|GB)", str(info.value))
    assert shown is None or (shown.group(2) == "MB" and float(shown.group(1)) < 300), str(info.value)
