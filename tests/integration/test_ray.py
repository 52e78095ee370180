"""The Ray backend on a real two-node Ray cluster (one per session): same calls, actors as workers."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import TYPE_CHECKING

import pytest

import pypods
from contracts.ray_backend import _stop_ray_cluster_at_session_end, ray_cluster  # noqa: F401

if TYPE_CHECKING:
    from pathlib import Path

ray = pytest.importorskip("ray")
pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.usefixtures("ray_cluster")]

VERSION_POD = """
import os, time
import tinypkg
from pods.{name}.helpers import helper

def version():
    return tinypkg.VERSION

def where():
    return helper()

def boom(message):
    raise KeyError(message)

def count(n):
    yield from range(n)

def pid():
    return os.getpid()

def sleep(seconds):
    time.sleep(seconds)
    return os.getpid()
"""


def _pod(make_pod, name: str, requirement: str | None) -> Path:
    pod_dir = make_pod(name, VERSION_POD.format(name=name), requirements=(requirement,) if requirement else ())
    (pod_dir / "helpers.py").write_text(f"def helper():\n    return 'helper of {name}'\n")
    if requirement is None:
        (pod_dir / "pod.py").write_text((pod_dir / "pod.py").read_text().replace("import tinypkg\n", ""))
    return pod_dir


def test_conflicting_requirements_local_modules_errors_and_streams(make_pod, root: Path) -> None:
    _pod(make_pod, "old_ray", "tinypkg==1.0")
    _pod(make_pod, "new_ray", "tinypkg==2.0")
    namespace: dict[str, object] = {}
    loader = pypods.PodLoader("old_ray", namespace, root=root, backend="ray")
    loader.load_pod()
    try:
        with pypods.load("new_ray", root=root, backend="ray") as new:
            assert namespace["version"]() == "1.0"  # type: ignore[operator]
            assert new.version() == "2.0"
            assert new.where() == "helper of new_ray"
            assert new.version.__name__ == "version"
            with pytest.raises(KeyError, match="missing") as info:
                new.boom("missing")
            assert isinstance(info.value, pypods.PodRemoteError)
            assert "raise KeyError(message)" in info.value.remote_traceback
            assert list(new.count(4)) == [0, 1, 2, 3]
    finally:
        loader.unload_pod()
    assert "version" not in namespace


def test_killed_actor_is_reported_and_replaced(make_pod, root: Path) -> None:
    _pod(make_pod, "fragile", None)
    with pypods.load("fragile", root=root, backend="ray") as pod:
        victim = pod.pid()
        threading.Timer(1.0, os.kill, (victim, signal.SIGKILL)).start()
        with pytest.raises(pypods.PodCrashedError):
            pod.sleep(60)
        assert pod.pid() != victim


def test_timeout_and_two_actors(make_pod, root: Path) -> None:
    _pod(make_pod, "pair", None)
    with pypods.load("pair", root=root, backend="ray", workers=2, start="eager") as pod:
        with pytest.raises(pypods.PodTimeoutError):
            pod.call("sleep", 30, timeout=1.0)
        pids: list[int] = []
        threads = [threading.Thread(target=lambda: pids.append(pod.sleep(1.0))) for _ in range(2)]
        began = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert len(set(pids)) == 2  # both actors served
        assert time.monotonic() - began < 10


def test_other_python_than_the_cluster_is_refused(make_pod, root: Path) -> None:
    _pod(make_pod, "py39", None)
    with pytest.raises(pypods.PodBuildError, match="cluster's Python"):
        pypods.load("py39", root=root, backend="ray", python="3.7")
