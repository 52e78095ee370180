"""Pod behaviour, written once, run on every backend (sync, asyncio, Ray if present): see conftest.py."""

from __future__ import annotations

import functools
import gc
import http
import os
import signal
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest

import pypods

if TYPE_CHECKING:
    from collections.abc import Callable


def test_values_cross_both_ways(open_pod: Callable[..., Any]) -> None:
    pod = open_pod()
    assert pod.call("add", 2, 3) == 5
    value = {"a": [1, 2.5, "x", None, True], "b": (1, 2), "c": b"\x00\xff", "big": 2**70}
    assert pod.call("echo", value) == value


def test_a_standard_library_enum_the_pod_never_imported_arrives(open_pod: Callable[..., Any]) -> None:
    pod = open_pod()  # the contract pod imports functools, os and time only
    back = pod.call("echo", [http.HTTPStatus.NOT_FOUND])
    assert back == [http.HTTPStatus.NOT_FOUND]
    assert type(back[0]) is http.HTTPStatus


def test_remote_errors_are_pod_errors_and_the_builtin(open_pod: Callable[..., Any]) -> None:
    pod = open_pod()
    with pytest.raises(ValueError, match="pod bay doors") as info:
        pod.call("fail", "pod bay doors")
    assert isinstance(info.value, pypods.PodRemoteError)
    assert "fail" in str(info.value)
    assert pod.call("add", 1, 1) == 2


def test_a_remote_stop_iteration_is_a_runtime_error(open_pod: Callable[..., Any]) -> None:
    pod = open_pod()
    with pytest.raises(RuntimeError, match="StopIteration"):
        list(map(functools.partial(pod.call, "raise_stop"), range(2)))  # a silent stop would give []


def test_functions_named_like_pod_attributes_are_reachable(open_pod: Callable[..., Any]) -> None:
    pod = open_pod()
    assert pod.call("name") == "the pod's own name()"
    assert pod.call("close") == "the pod's own close()"
    assert pod.call("call", 7) == ["the pod's own call()", 7]
    for attr in ("settings", "functions", "pids", "layout", "interpreter"):
        assert pod.call(attr) == attr
    assert pod.call("add", 1, 2) == 3  # and the pod still works: close() above was the function


def test_decorated_functions_are_offered(open_pod: Callable[..., Any]) -> None:
    assert open_pod().call("cached", 21) == 42


def test_a_function_timeout_parameter_is_passed_through(open_pod: Callable[..., Any]) -> None:
    pod = open_pod(timeout=30)
    assert pod.call("fetch", "u", timeout=7) == ["u", 7]
    assert pod.call("fetch", "u") == ["u", 1]
    assert pod.call("keyword_only", timeout=3) == 3
    assert pod.timed(None, "fetch", "v", timeout=2) == ["v", 2]


def test_a_call_deadline_fires_and_the_pod_recovers(open_pod: Callable[..., Any]) -> None:
    pod = open_pod()
    started = time.monotonic()
    with pytest.raises(pypods.PodTimeoutError):
        pod.timed(0.5, "sleep", 30)
    assert time.monotonic() - started < 10
    assert pod.call("add", 1, 2) == 3
    assert pod.timed(None, "sleep", 0.1) == 0.1  # with_options() without a timeout: no deadline


def test_timeouts_never_trip_the_crash_brake(open_pod: Callable[..., Any]) -> None:
    pod = open_pod()
    for _ in range(6):
        with pytest.raises(pypods.PodTimeoutError):
            pod.timed(0.2, "sleep", 30)
    assert pod.call("add", 1, 2) == 3


def test_a_crash_is_reported_and_the_next_call_works(open_pod: Callable[..., Any]) -> None:
    pod = open_pod()
    with pytest.raises(pypods.PodCrashedError):
        pod.call("exit_now", 3)
    assert pod.call("add", 2, 2) == 4


def test_streams_and_a_call_while_a_stream_is_open(open_pod: Callable[..., Any]) -> None:
    pod = open_pod()
    assert list(pod.stream("countdown", 3)) == [3, 2, 1]
    rows = pod.stream("countdown", 150)
    assert next(rows) == 150
    assert pod.call("add", 5, 5) == 10
    assert [pod.call("add", row, 1) for row in rows] == list(range(150, 1, -1))


def test_an_abandoned_stream_is_cancelled(open_pod: Callable[..., Any]) -> None:
    pod = open_pod()
    rows = pod.stream("tracked", 1000)
    assert next(rows) == 0
    del rows  # left without close(): dropping it must stop the generator in the pod
    gc.collect()
    deadline = time.monotonic() + 10
    while 1000 not in pod.call("closed") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert 1000 in pod.call("closed")


def test_concurrent_calls_from_threads(open_pod: Callable[..., Any]) -> None:
    pod = open_pod(workers=2)
    results: dict[int, list[Any]] = {}

    def worker(index: int) -> None:
        results[index] = [pod.call("add", index, i) for i in range(20)]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == {i: [i + n for n in range(20)] for i in range(4)}


def test_calls_after_close_raise_closed(open_pod: Callable[..., Any]) -> None:
    pod = open_pod()
    assert pod.call("add", 1, 1) == 2
    pod.close()
    with pytest.raises(pypods.PodClosedError):
        pod.call("add", 1, 1)


def test_close_fails_waiting_calls_with_closed_at_once(open_pod: Callable[..., Any]) -> None:
    pod = open_pod()
    errors: list[BaseException] = []

    def waiting() -> None:
        try:
            pod.call("sleep", 30)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=waiting)
    thread.start()
    time.sleep(0.5)  # the call is in the worker now
    started = time.monotonic()
    pod.close()
    thread.join(10)
    assert time.monotonic() - started < 3  # no grace period waited for a busy worker
    assert len(errors) == 1
    assert isinstance(errors[0], pypods.PodClosedError), errors


# -- issue #19: each defect a contract on every backend --------------------------------------------------------

SLOW_IMPORT = "import time\ntime.sleep(3)\n\n\ndef ping():\n    return 'pong'\n"


def test_one_deadline_covers_the_start_a_first_call_waits_for(open_pod: Callable[..., Any]) -> None:
    pod = open_pod("slowimport", SLOW_IMPORT, idle_timeout=1.0)
    deadline = time.monotonic() + 30
    while pod.pids() and time.monotonic() < deadline:  # the worker that described it stops when idle
        time.sleep(0.2)
    assert pod.pids() == []
    began = time.monotonic()
    with pytest.raises(pypods.PodTimeoutError):
        pod.timed(1.0, "ping")  # the worker's start (a 3 s import) counts against the call's 1 s
    assert time.monotonic() - began < 2.0
    assert pod.timed(30, "ping") == "pong"


def test_many_big_buffers_in_one_reply(open_pod: Callable[..., Any], backend: str) -> None:
    pod = open_pod()
    count = 300 if backend != "ray" else 32  # Ray carries them in band, in a 200 MiB object store per node
    size = 1024 * 1024
    back = pod.call("buffers", count, size)
    assert len(back) == count
    for index, buffer in enumerate(back):
        assert type(buffer) is bytes
        assert buffer == bytes([index % 256]) * size


def test_a_killed_workers_calls_in_flight_are_crashed_never_closed(open_pod: Callable[..., Any]) -> None:
    pod = open_pod(start="eager")
    [pid] = pod.pids()
    outcomes: list[BaseException | None] = []

    def waiting() -> None:
        try:
            pod.call("sleep", 30)
            outcomes.append(None)
        except BaseException as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=waiting) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)  # the calls are in the worker (one runs, the others wait behind it)
    os.kill(pid, signal.SIGKILL)
    for thread in threads:
        thread.join(60)
    assert len(outcomes) == 4
    assert all(isinstance(outcome, pypods.PodCrashedError) for outcome in outcomes), outcomes
    assert not any(isinstance(outcome, pypods.PodClosedError) for outcome in outcomes), outcomes
    assert pod.call("add", 1, 2) == 3


def test_a_decorated_generator_streams(open_pod: Callable[..., Any]) -> None:
    pod = open_pod()  # functools.wraps hides from the description that it is a generator function
    assert list(pod.stream("wrapped_countdown", 3)) == [3, 2, 1]
    assert pod.call("add", 1, 1) == 2


def test_a_stream_item_that_cannot_cross_ends_the_generator_in_the_pod(open_pod: Callable[..., Any]) -> None:
    pod = open_pod()
    rows = pod.stream("unsendable", 7)
    assert next(rows) == 1
    with pytest.raises(pypods.PodSerializationError):
        next(rows)
    deadline = time.monotonic() + 20
    while -7 not in pod.call("closed") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert -7 in pod.call("closed")  # not left running (or waiting for credit) in the pod
