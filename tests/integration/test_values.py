"""Values crossing a real pod: exact types both ways, big buffers through shared memory, clear refusals."""

from __future__ import annotations

import datetime
import fractions
import http
import os
import re
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import HealthCheck, given, settings

import pypods
from unit.test_codec import same, values

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

ECHO = """
import os, sys, time

def echo(value):
    return value

def echo_twice(a, b=None):
    return [a, b]

def size(value):
    return len(value)

def make(n):
    return b"z" * n

def unsendable():
    return object()

def slow_then_size(seconds, value):
    time.sleep(seconds)
    return len(value)

def pid():
    return os.getpid()

def replies_fast():
    import gc
    return [obj.fast for obj in gc.get_objects() if type(obj).__name__ == "Worker"]
"""


SHM_DIR = "/dev/shm"  # named segments of earlier versions; buffers now travel as unnamed memfds


def segments(pid: int | None = None) -> list[str]:
    prefix = "pypods-" if pid is None else f"pypods-{pid}-"
    return [name for name in os.listdir(SHM_DIR) if name.startswith(prefix)]


@pytest.fixture(scope="module", params=["fast2", "fast1", "bson"])
def echo_pod(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[pypods.Pod]:
    """The echo pod, once per value encoding (the worker starts now, while PYPODS_ENCODING says which)."""
    root = tmp_path_factory.mktemp("values")
    (root / "pods" / "echo").mkdir(parents=True)
    (root / "pods" / "echo" / "pod.py").write_text(ECHO)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYPODS_ENCODING", request.param)
        pod = pypods.load("echo", root=root, start="eager")
        assert pod.replies_fast() == ["" if request.param == "bson" else request.param]
    with pod:
        yield pod


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values)
def test_values_round_trip_through_a_pod(echo_pod: pypods.Pod, value: Any) -> None:
    assert same(echo_pod.echo(value), value)
    assert same(echo_pod.echo_twice(a=value, b=(value,)), [value, (value,)])


class Custom:
    pass


def test_unsupported_argument_is_refused_before_sending(echo_pod: pypods.Pod) -> None:
    with pytest.raises(pypods.PodSerializationError, match=r"args\[1\]\['items'\]\[3\]: cannot send Custom") as info:
        echo_pod.echo_twice(1, {"items": [0, 1, 2, Custom()]})
    assert isinstance(info.value, TypeError)
    with pytest.raises(TypeError, match=r"kwargs\['b'\]: cannot send Custom"):
        echo_pod.echo_twice(1, b=Custom())  # (a function would cross as a callback: #22)
    assert echo_pod.echo(5) == 5


def test_unsendable_result_is_a_serialization_error(echo_pod: pypods.Pod) -> None:
    with pytest.raises(pypods.PodSerializationError, match="result: cannot send object"):
        echo_pod.unsendable()
    assert echo_pod.echo("still fine") == "still fine"


def test_big_buffers_go_through_shared_memory_and_leave_nothing(echo_pod: pypods.Pod) -> None:
    before = set(segments())
    for value in (os.urandom(3 << 20), bytearray(os.urandom(2 << 20)), memoryview(os.urandom(1 << 20))):
        back = echo_pod.echo(value)
        assert back == bytes(value)
        assert type(back) is (bytes if isinstance(value, memoryview) else type(value))
    assert echo_pod.make(5 << 20) == b"z" * (5 << 20)
    assert echo_pod.size([b"a" * (1 << 20), b"b" * (2 << 20)]) == 2
    assert set(segments()) == before


def test_pickle_codec_is_opt_in(make_pod, root: Path) -> None:
    make_pod("pickled", ECHO)  # codec="pickle" only from the client's own code, never from pod.toml
    value = {"f": fractions.Fraction(1, 3), "big": bytearray(b"q" * (2 << 20))}
    with pypods.load("pickled", root=root, codec="pickle") as pod:
        assert pod.echo(value) == value
        assert list(pod.echo(iter([1, 2]))) == [1, 2]  # a list_iterator pickles
    make_pod("safe", ECHO)
    with pypods.load("safe", root=root) as pod, pytest.raises(pypods.PodSerializationError, match="Fraction"):
        pod.echo(fractions.Fraction(1, 3))


def test_registered_dataclasses_round_trip_as_themselves(make_pod, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pod_dir = make_pod(
        "shapes",
        """
        from pods.shapes.model import Point, Pair

        def shift(p, dx):
            return Point(p.x + dx, p.y) if isinstance(p, Point) else {"got": type(p).__name__}

        def pair():
            return Pair(1, "one")
        """,
    )
    (pod_dir / "model.py").write_text(
        "import dataclasses, typing\n\n@dataclasses.dataclass\nclass Point:\n    x: int\n    y: int\n\n"
        "class Pair(typing.NamedTuple):\n    a: int\n    b: str\n"
    )
    monkeypatch.syspath_prepend(str(root))
    from pods.shapes.model import Pair, Point  # type: ignore[import-not-found]

    with pypods.load("shapes", root=root) as pod:
        assert pod.shift(Point(1, 2), 1) == {"got": "dict"}  # sent as its fields
        assert pod.pair() == (1, "one")
        assert type(pod.pair()) is tuple
        pypods.register(Point)
        pypods.register(Pair)
        assert pod.shift(Point(1, 2), 1) == Point(2, 2)
        assert type(pod.pair()) is Pair


def test_pod_without_numpy_names_the_missing_package(echo_pod: pypods.Pod) -> None:
    np = pytest.importorskip("numpy")
    with pytest.raises(ModuleNotFoundError, match="numpy is not installed") as info:
        echo_pod.echo(np.arange(3))
    assert isinstance(info.value, pypods.PodRemoteError)
    assert echo_pod.echo(1) == 1


@pytest.mark.network
def test_numpy_arrays_through_a_pod_that_has_numpy(make_pod, root: Path) -> None:
    np = pytest.importorskip("numpy")
    pod_dir = make_pod("arrays", "def double(a):\n    return a * 2\n\ndef echo(a):\n    return a\n")
    (pod_dir / "requirements.txt").write_text("numpy\n")
    with pypods.load("arrays", root=root) as pod:
        small = np.asfortranarray(np.arange(12, dtype=np.int32).reshape(3, 4))
        np.testing.assert_array_equal(pod.double(small), small * 2)
        big = np.random.default_rng(0).random((1024, 1024))  # 8 MiB: through shared memory
        back = pod.echo(big)
        np.testing.assert_array_equal(back, big)
        assert back.flags.writeable
        assert pod.echo(np.float32(2.5)) == np.float32(2.5)
    assert segments() == [] or all(not name.startswith(f"pypods-{os.getpid()}-") for name in segments())


@pytest.mark.parametrize(
    "value",
    [
        10**5000,
        -(10**6000),
        [2**64, {"n": -(2**100)}],
        re.IGNORECASE | re.MULTILINE,
        [re.I | re.S, re.X],
        datetime.time(1, 30, fold=1),
        [datetime.time(23, 59, 59, 999999, fold=1)],
        ValueError(10**5000),
    ],
    ids=lambda v: type(v).__name__,
)
def test_exact_values_cross_both_ways(echo_pod: pypods.Pod, value: Any) -> None:
    back = echo_pod.echo(value)
    if isinstance(value, BaseException):  # exceptions compare by identity: compare type and args
        assert type(back) is type(value)
        assert same(back.args, value.args)
        return
    assert same(back, value)
    if isinstance(value, datetime.time):
        assert back.fold == value.fold


def test_a_standard_library_enum_arrives_even_if_the_pod_never_imported_its_module(echo_pod: pypods.Pod) -> None:
    """The echo pod never imports http: the worker imports it for its (trusted) client's argument."""
    assert same(echo_pod.echo(http.HTTPStatus.NOT_FOUND), http.HTTPStatus.NOT_FOUND)
    assert same(echo_pod.echo_twice([http.HTTPStatus.OK]), [[http.HTTPStatus.OK], None])


def test_unencodable_results_are_serialization_errors_and_the_worker_lives(make_pod, root: Path) -> None:
    make_pod(
        "bad_results",
        """
        import os

        class BadStr(Exception):
            def __str__(self):
                raise RuntimeError("no")

        def deep(n):
            value = []
            for _ in range(n):
                value = [value]
            return value

        def huge_int():
            return 10**5000

        def bad_exception():
            return [BadStr("x")]

        def unsendable():
            return [1, object()]

        def pid():
            return os.getpid()
        """,
    )
    with pypods.load("bad_results", root=root) as pod:
        pid = pod.pid()
        assert pod.huge_int() == 10**5000
        with pytest.raises(pypods.PodSerializationError):
            pod.deep(5000)
        with pytest.raises(pypods.PodSerializationError, match="cannot send object"):
            pod.unsendable()
        with pytest.raises(pypods.PodSerializationError, match="__str__ raised"):
            pod.bad_exception()
        assert pod.pid() == pid  # the same worker: nothing above killed it
