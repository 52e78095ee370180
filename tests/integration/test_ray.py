"""The Ray backend on a real two-node Ray cluster (one per session): same calls, actors as workers."""

from __future__ import annotations

import asyncio
import fractions
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

def exit_now():
    os._exit(3)

def sleep(seconds):
    time.sleep(seconds)
    return os.getpid()

def placed(seconds):
    import ray
    time.sleep(seconds)
    return [os.getpid(), ray.get_runtime_context().get_node_id()]

def forever(marker):
    try:
        n = 0
        while True:
            yield n
            n += 1
    finally:
        open(marker, "w").close()

def third():
    import fractions
    return fractions.Fraction(1, 3)

def here():
    return os.path.dirname(os.path.abspath(__file__))

def files():
    top = here()
    return sorted(os.path.relpath(os.path.join(d, f), top) for d, _, fs in os.walk(top) for f in fs
                  if "__pycache__" not in d)
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
        victim, staged = pod.pid(), pod.here()
        threading.Timer(1.0, os.kill, (victim, signal.SIGKILL)).start()
        with pytest.raises(pypods.PodCrashedError):
            pod.sleep(60)
        assert pod.pid() != victim
        assert not os.path.exists(staged)  # a killed actor cleans nothing: its successor swept it


def test_an_abandoned_stream_is_cancelled_in_the_actor(make_pod, root: Path, tmp_path: Path) -> None:
    _pod(make_pod, "streamer", None)
    marker = tmp_path / "generator-closed"
    with pypods.load("streamer", root=root, backend="ray") as pod:
        rows = pod.forever(str(marker))
        assert [next(rows) for _ in range(3)] == [0, 1, 2]
        assert pod.where() == "helper of streamer"  # a call while the stream is open
        rows.close()
        deadline = time.monotonic() + 20
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists()  # the generator's finally ran in the actor
        assert pod.where() == "helper of streamer"


def test_only_code_ships_and_the_actor_removes_it(make_pod, root: Path, tmp_path: Path) -> None:
    pod_dir = _pod(make_pod, "shipping", None)
    secret = tmp_path / "client_secret.txt"
    secret.write_text("not for the cluster")
    for relative, text in {
        ".env": "TOKEN=1",
        ".git/config": "[core]",
        "venv/bin/activate": "",
        "data/big.csv": "1,2",
        "notes.log": "",
        "lib/__init__.py": "",
        "lib/util.py": "u = 1",
    }.items():
        (pod_dir / relative).parent.mkdir(parents=True, exist_ok=True)
        (pod_dir / relative).write_text(text)
    (pod_dir / ".gitignore").write_text("data/\n*.log\n")
    (pod_dir / "secret.txt").symlink_to(secret)
    with pypods.load("shipping", root=root, backend="ray") as pod:
        staged = pod.here()
        assert pod.files() == [  # modules only: nothing in pod.toml's ship names data files
            "helpers.py",
            "lib/__init__.py",
            "lib/util.py",
            "pod.py",
        ]
    deadline = time.monotonic() + 30
    while os.path.exists(staged) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not os.path.exists(staged)


HOSTILE_POD = """
import os
from pypods._client import rayactor

class Planted:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):  # unpickling this would create a folder in the client
        return (os.mkdir, (self.path,))

def plant(path):
    return Planted(path)

def hijack(path):
    rayactor.encoded = lambda *message: Planted(path)  # the actor now returns a pickled object

def broken_stream(path):
    yield 1

    def explode(*message):
        raise ValueError(Planted(path))

    rayactor.encoded = explode  # the stream task now fails with a pickled RayTaskError
    yield 2

def pid():
    return os.getpid()
"""


def test_nothing_a_pod_returns_is_unpickled_in_the_client(make_pod, root: Path, tmp_path: Path) -> None:
    make_pod("hostile", HOSTILE_POD)
    target = tmp_path / "planted"
    with pypods.load("hostile", root=root, backend="ray") as pod:
        with pytest.raises(pypods.PodSerializationError):
            pod.plant(str(target))
        victim = pod.pid()
        with pytest.raises(pypods.PodProtocolError, match="instead of raw bytes"):
            pod.hijack(str(target))
        assert not target.exists()
        assert pod.pid() != victim  # the subverted actor was replaced
        rows = pod.broken_stream(str(target))
        assert next(rows) == 1
        with pytest.raises(pypods.PodProtocolError, match=r"end of the stream|instead of raw bytes"):
            next(rows)
        assert not target.exists()


def test_options_the_ray_backend_cannot_honour_are_refused(make_pod, root: Path) -> None:
    _pod(make_pod, "nolog", None)
    with pytest.raises(pypods.PodConfigError, match=r"'log' \(= 'logging'\) is not supported by the 'ray' backend"):
        pypods.load("nolog", root=root, backend="ray", log="logging")


def test_the_pool_serves_ray_too_idle_stop_crash_brake_start_timeout(make_pod, root: Path) -> None:
    _pod(make_pod, "pooled", None)
    with pypods.load("pooled", root=root, backend="ray", idle_timeout=1.0) as pod:
        assert pod.pid() > 0
        deadline = time.monotonic() + 30
        while pod.pids() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert pod.pids() == []  # the idle actor was stopped
        assert pod.where() == "helper of pooled"  # and a new one starts on the next call
        for _ in range(5):
            with pytest.raises(pypods.PodCrashedError):
                pod.call("exit_now")
        with pytest.raises(pypods.PodCrashLoopError, match="crashed 5 times"):
            pod.call("where")
    slow = make_pod("slowstart", "import time\ntime.sleep(60)\n\ndef f():\n    return 1\n")
    assert slow.is_dir()
    began = time.monotonic()
    with pytest.raises(pypods.PodTimeoutError, match="start_timeout"):
        pypods.load("slowstart", root=root, backend="ray", start_timeout=3)
    assert time.monotonic() - began < 30


def test_timeout_and_actors_on_both_nodes(make_pod, root: Path) -> None:
    _pod(make_pod, "pair", None)
    with pypods.load("pair", root=root, backend="ray", workers=3, start="eager") as pod:
        placed: list[list[object]] = []
        threads = [threading.Thread(target=lambda: placed.append(pod.placed(1.0))) for _ in range(3)]
        began = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert len({pid for pid, _ in placed}) == 3  # every actor served, at once
        assert time.monotonic() - began < 10
        assert len({node for _, node in placed}) == 2  # spread over the two nodes: calls cross both raylets
        with pytest.raises(pypods.PodTimeoutError):
            pod.call("sleep", 30, timeout=1.0)
        assert pod.where() == "helper of pair"


def test_the_pickle_codec_chosen_by_the_client_is_honoured(make_pod, root: Path) -> None:
    _pod(make_pod, "pickled", None)
    with pypods.load("pickled", root=root, backend="ray") as pod, pytest.raises(pypods.PodSerializationError):
        pod.third()  # BSON cannot carry a Fraction
    with pypods.load("pickled", root=root, backend="ray", codec="pickle") as pod:
        assert pod.third() == fractions.Fraction(1, 3)
        assert list(pod.count(2)) == [0, 1]


def test_the_asyncio_api_serves_ray_pods_too(make_pod, root: Path) -> None:
    _pod(make_pod, "awaited", None)

    async def main() -> None:
        async with await pypods.aload("awaited", root=root, backend="ray") as pod:
            assert await pod.where() == "helper of awaited"
            with pytest.raises(KeyError, match="lost"):
                await pod.boom("lost")
            assert [row async for row in pod.count(3)] == [0, 1, 2]
            with pytest.raises(pypods.PodTimeoutError):
                await pod.call("sleep", 30, timeout=1.0)
            assert await pod.where() == "helper of awaited"  # a new actor after the timeout
        with pytest.raises(pypods.PodClosedError):
            await pod.where()

    asyncio.run(main())


def test_other_python_than_the_cluster_is_refused(make_pod, root: Path) -> None:
    _pod(make_pod, "py39", None)
    with pytest.raises(pypods.PodConfigError, match=r"option python='3.7' .* backend 'ray'.*cluster's Python"):
        pypods.load("py39", root=root, backend="ray", python="3.7")


CORE_POD = """
import functools, os
from pods.{name}.model import Point


def logged(function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        return function(*args, **kwargs)

    return wrapper


@logged
def rows(n):
    yield from range(n)


def shift(p, dx):
    return Point(p.x + dx, p.y) if isinstance(p, Point) else {{"got": type(p).__name__}}


def echo(value):
    return value
"""


def _core_pod(make_pod, name: str) -> None:
    pod_dir = make_pod(name, CORE_POD.format(name=name))
    (pod_dir / "model.py").write_text(
        "import dataclasses\n\n@dataclasses.dataclass\nclass Point:\n    x: int\n    y: int\n"
    )


def _connections(pod: pypods.Pod) -> list[object]:
    return [conn for conn in object.__getattribute__(pod, "_pool")._slots if conn is not None]


def test_a_decorated_generator_streams_on_ray(make_pod, root: Path) -> None:
    _core_pod(make_pod, "wrapped")
    with pypods.load("wrapped", root=root, backend="ray") as pod:
        assert list(pod.rows(4)) == [0, 1, 2, 3]  # functools.wraps hides that it is a generator function
        assert pod.echo(1) == 1


def test_a_registered_dataclass_crosses_on_ray(make_pod, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _core_pod(make_pod, "shapes_ray")
    monkeypatch.syspath_prepend(str(root))
    from pods.shapes_ray.model import Point  # type: ignore[import-not-found]

    with pypods.load("shapes_ray", root=root, backend="ray") as pod:
        assert pod.shift(Point(1, 2), 1) == {"got": "dict"}  # unregistered: sent as its fields
        pypods.register(Point)
        assert pod.shift(Point(1, 2), 1) == Point(2, 2)
        assert type(pod.shift(Point(1, 2), 1)) is Point


def test_ray_uses_the_fast_encoding_and_values_are_exact(make_pod, root: Path) -> None:
    _core_pod(make_pod, "fastray")
    values = [
        [0.1, 2.5, -0.0, float("inf"), 1e308],  # a float vector
        [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}],  # records: fast2's columns
        {"k": [1, 2**40, None, True], "s": "é\u2603"},
        (1, 2),  # a tuple stays a tuple
        [2**70, b"\x00\xff"],  # not JSON-exact: BSON inside the same connection
        list(range(1000)),
    ]
    with pypods.load("fastray", root=root, backend="ray") as pod:
        for value in values:
            back = pod.echo(value)
            assert back == value
            assert type(back) is type(value)
        assert [type(x) for x in pod.echo(values[4])] == [int, bytes]
        [conn] = _connections(pod)
        assert conn.proto.encoding == "fast2"  # type: ignore[attr-defined]
        assert conn.hello["encodings"] == ["bson", "fast1", "fast2"]  # type: ignore[attr-defined]
