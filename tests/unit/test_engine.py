"""The call engine against an in-process worker (real serve loop, socketpair, thread): regressions of #12, fast."""

from __future__ import annotations

import gc
import pickle
import socket
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

import pytest

import pypods
from pypods._client.connection import NotSentError, ProcessConnection
from pypods._client.core import error_from_reply
from pypods._client.pool import WorkerPool

from .fakeworker import ThreadWorker, connect, pool


def wait_for(predicate: Any, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_a_call_and_its_value() -> None:
    conn = connect()
    try:
        assert conn.call("add", (2, 3), {}, None) == 5
        assert conn.in_flight() == 0
    finally:
        conn.close()


def test_timeout_while_another_thread_reads_does_not_deadlock() -> None:
    # One worker, two threads: the first reads the pipe (leader), the second times out waiting.
    conn = connect()
    outcome: dict[str, Any] = {}

    def slow() -> None:
        try:
            outcome["slow"] = conn.call("block", (5.0,), {}, None)
        except pypods.PodError as exc:
            outcome["slow"] = exc

    thread = threading.Thread(target=slow)
    thread.start()
    assert wait_for(lambda: conn.in_flight() == 1)
    time.sleep(0.05)  # the first thread is now the reader
    started = time.monotonic()
    with pytest.raises(pypods.PodTimeoutError):
        conn.call("add", (1, 2), {}, 0.2)
    thread.join(5)
    assert not thread.is_alive(), "the reading thread hung"
    assert time.monotonic() - started < 3
    assert isinstance(outcome["slow"], pypods.PodWorkerError)
    assert not isinstance(outcome["slow"], pypods.PodCrashedError)
    conn.close()


def test_a_call_while_a_stream_is_open() -> None:
    conn = connect()
    try:
        stream = conn.call("countdown", (200,), {}, 5)
        assert next(stream) == 200
        assert conn.call("add", (5, 5), {}, 5) == 10
        # A call per item, past the stream window (64): the worker keeps serving both.
        seen = [conn.call("add", (item, 0), {}, 5) for item in stream]
        assert seen == list(range(199, 0, -1))
    finally:
        conn.close()


def test_closing_or_dropping_a_stream_cancels_the_generator() -> None:
    worker = ThreadWorker()
    conn = ProcessConnection(worker, start_timeout=5)
    try:
        stream = conn.call("countdown", (1000,), {}, 5)
        next(stream)
        stream.close()
        assert wait_for(lambda: 1000 in worker.pod.closed)
        dropped = conn.call("countdown", (999,), {}, 5)
        next(dropped)
        del dropped
        gc.collect()
        assert conn.call("add", (1, 1), {}, 5) == 2  # sends any cancel a finalizer deferred
        assert wait_for(lambda: 999 in worker.pod.closed)
    finally:
        conn.close()


def test_generator_raising_oserror_does_not_kill_the_worker() -> None:
    conn = connect()
    try:
        stream = conn.call("oserror_gen", (), {}, 5)
        assert next(stream) == 1
        with pytest.raises(OSError, match="disk on fire") as info:
            next(stream)
        assert isinstance(info.value, pypods.PodRemoteError)
        assert conn.broken is None
        assert conn.call("add", (1, 2), {}, 5) == 3
    finally:
        conn.close()


def test_unencodable_result_and_item_keep_the_worker() -> None:
    conn = connect()
    try:
        with pytest.raises(pypods.PodSerializationError, match="result"):
            conn.call("unencodable", (), {}, 5)
        stream = conn.call("bad_item_gen", (), {}, 5)
        assert next(stream) == 1
        with pytest.raises(pypods.PodSerializationError, match="item"):
            next(stream)
        assert conn.call("add", (1, 2), {}, 5) == 3
        with pytest.raises(pypods.PodSerializationError):
            conn.call("add", (object(), 1), {}, 5)  # client side: nothing was sent
        assert conn.call("add", (2, 2), {}, 5) == 4
    finally:
        conn.close()


def test_seven_timeouts_then_a_normal_call() -> None:
    workers = pool()
    try:
        for _ in range(7):
            with pytest.raises(pypods.PodTimeoutError):
                workers.call("block", (5.0,), {}, 0.05)
        assert workers.call("add", (1, 2), {}, 5) == 3
    finally:
        workers.close()


def test_crashes_trip_the_brake_with_its_own_error() -> None:
    workers = pool()
    try:
        for _ in range(5):
            workers.call("add", (1, 1), {}, 5)
            workers.spawned[-1].worker.crash()  # type: ignore[attr-defined]
            assert wait_for(lambda: not workers.spawned[-1].worker.alive())  # type: ignore[attr-defined]
        with pytest.raises(pypods.PodCrashLoopError) as info:
            workers.call("add", (1, 1), {}, 5)
        assert len(info.value.crashes) == 5
        assert not isinstance(info.value, pypods.PodClosedError)
        with pytest.raises(pypods.PodCrashLoopError):
            workers.call("add", (1, 1), {}, 5)
    finally:
        workers.close()


def test_close_gives_waiting_callers_closed_error_without_blocking() -> None:
    workers = pool()
    errors: list[BaseException] = []

    def waiting() -> None:
        try:
            workers.call("block", (30.0,), {}, None)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=waiting)
    thread.start()
    assert wait_for(lambda: workers.in_flight() == 1)
    started = time.monotonic()
    workers.close()
    thread.join(5)
    assert time.monotonic() - started < 1.5
    assert len(errors) == 1
    assert isinstance(errors[0], pypods.PodClosedError), errors
    with pytest.raises(pypods.PodClosedError):
        workers.call("add", (1, 1), {}, 5)


def test_not_sent_error_never_escapes() -> None:
    def dead() -> ProcessConnection:
        conn = connect()
        conn.worker.crash()  # type: ignore[attr-defined]
        return conn

    workers = pool(spawn=dead)
    try:
        with pytest.raises(pypods.PodWorkerError) as info:
            workers.call("add", (1, 1), {}, 5)
        assert not isinstance(info.value, NotSentError)
    finally:
        workers.close()


def test_least_busy_pick_uses_idle_workers_first() -> None:
    workers = pool(size=2)
    try:
        workers.start()
        assert len(workers.pids()) == 2
        thread = threading.Thread(target=workers.call, args=("block", (1.0,), {}, None))
        thread.start()
        assert wait_for(lambda: workers.in_flight() == 1)
        busy = [conn for conn in workers.spawned if conn.in_flight()]  # type: ignore[attr-defined]
        assert workers.call("add", (1, 2), {}, 5) == 3
        assert busy[0].in_flight() == 1  # the second call went to the idle worker
        busy[0].worker.pod.gate.set()
        thread.join(5)
    finally:
        workers.close()


def test_idle_workers_stop() -> None:
    workers = pool(idle_timeout=0.3)
    try:
        workers.call("add", (1, 2), {}, 5)
        assert wait_for(lambda: workers.pids() == [], 10)
        assert workers.call("add", (1, 2), {}, 5) == 3  # started again on demand
    finally:
        workers.close()


def test_remote_errors_keep_their_text_and_types() -> None:
    conn = connect()
    try:
        with pytest.raises(ValueError, match=r"ValueError: pod bay doors") as info:
            conn.call("raise_value", ("pod bay doors",), {}, 5)
        assert "'fake'" in str(info.value)
        with pytest.raises(pypods.PodRemoteError, match="message could not be shown"):
            conn.call("bad_str", (), {}, 5)
        assert conn.call("add", (1, 2), {}, 5) == 3
    finally:
        conn.close()


def test_remote_stop_iteration_cannot_end_a_loop_silently() -> None:
    conn = connect()
    try:
        with pytest.raises(RuntimeError, match="StopIteration") as info:
            list(map(conn.call, ["raise_stop"] * 2, [()] * 2, [{}] * 2, [5] * 2))
        assert not isinstance(info.value, StopIteration)
        assert isinstance(info.value, pypods.PodRemoteError)
    finally:
        conn.close()


def _raise_remote(mro: list[str]) -> None:
    raise error_from_reply("p", "f", {"kind": "remote", "type": "X", "message": "boom", "mro": mro})


@pytest.mark.parametrize("mro", [["builtins.ValueError", "builtins.Exception"], ["mod.Custom", "builtins.Exception"]])
def test_remote_errors_pickle_as_themselves(mro: list[str]) -> None:
    error = error_from_reply("p", "f", {"kind": "remote", "type": "X", "message": "boom", "mro": mro})
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is type(error)
    assert str(again) == str(error)
    with ProcessPoolExecutor(1, mp_context=get_context("fork")) as pool_:
        future = pool_.submit(_raise_remote, mro)
        with pytest.raises(pypods.PodRemoteError) as info:
            future.result(timeout=20)
    assert type(info.value) is type(error)
    assert isinstance(info.value, ValueError) == ("builtins.ValueError" in mro)


def test_a_remote_errors_attributes_are_set_only_on_the_builtin_that_has_them() -> None:
    os_mro = ["builtins.FileNotFoundError", "builtins.OSError", "builtins.Exception"]
    attrs = {"errno": 2, "strerror": "gone", "filename": "/x", "name": "not an OSError's"}
    error = error_from_reply("p", "f", {"kind": "remote", "type": "X", "message": "m", "mro": os_mro, "attrs": attrs})
    assert isinstance(error, FileNotFoundError)
    assert (error.errno, error.strerror, error.filename, error.filename2) == (2, "gone", "/x", None)
    assert "name" not in vars(error)
    custom = error_from_reply("p", "f", {"kind": "remote", "message": "m", "mro": ["m.C"], "attrs": {"errno": 2}})
    assert not hasattr(custom, "errno")


def test_a_remote_error_whose_builtin_wants_more_arguments_is_still_its_nearest_builtin() -> None:
    mro = ["builtins.UnicodeDecodeError", "builtins.UnicodeError", "builtins.ValueError", "builtins.Exception"]
    error = error_from_reply("p", "f", {"kind": "remote", "type": "UnicodeDecodeError", "message": "bad", "mro": mro})
    assert isinstance(error, UnicodeError)
    assert isinstance(error, ValueError)
    assert "UnicodeDecodeError: bad" in str(error)
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is type(error)
    assert str(again) == str(error)


@pytest.mark.parametrize(
    "reply",
    [
        {"ok": "yes", "value": 1},
        {"ok": False, "error": "text"},
        {"ok": False, "error": {"message": 3}},
        {"ok": False, "error": {"mro": [1, 2]}},
        {"ok": False, "error": {"attrs": [1]}},
        {"ok": False, "error": {"attrs": {"__class__": 1}}},
        {"ok": False, "error": {"attrs": {"errno": 1 << 40}}},
        {"ok": False, "error": {"attrs": {"errno": 1.5}}},
        {"ok": False, "error": {"attrs": {"filename": "x" * 5000}}},
        {"ok": False, "error": {"attrs": {"name": {"nested": 1}}}},
        {"stream": True},
        {},
    ],
)
def test_malformed_replies_are_protocol_errors_and_the_next_call_works(reply: dict[str, Any]) -> None:
    from pypods._worker.codec import Encoder

    workers = pool()
    try:
        assert workers.call("add", (1, 1), {}, 5) == 2
        conn = workers.spawned[-1]  # type: ignore[attr-defined]
        # The pod answers its own call (id 2, after "add" = 1) with a forged reply first.
        forged = bytes(Encoder().document({"id": 2, **reply}))
        with pytest.raises(pypods.PodProtocolError):
            workers.call("forge", (forged,), {}, 5)
        assert conn.broken is not None
        assert workers.call("add", (3, 3), {}, 5) == 6
    finally:
        workers.close()


def test_stray_replies_are_dropped() -> None:
    from pypods._worker.codec import Encoder

    conn = connect()
    try:
        stray = bytes(Encoder().document({"id": 999, "ok": True, "value": "stray"}))
        assert conn.call("forge", (stray,), {}, 5) == "forged"
        assert conn.call("add", (1, 2), {}, 5) == 3
    finally:
        conn.close()


def test_pickled_reply_on_a_bson_connection_is_refused(tmp_path: Any) -> None:
    from pypods._worker.codec import Encoder

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> Any:
            return (open, (str(marker), "w"))

    payload = pickle.dumps(Evil())
    workers = pool()
    try:
        forged = bytes(Encoder().document({"id": 1, "ok": True, "value": None, "p": payload, "b": []}))
        with pytest.raises(pypods.PodProtocolError, match="pickle"):
            workers.call("forge", (forged,), {}, 5)
        assert not marker.exists()
        assert workers.call("add", (1, 1), {}, 5) == 2
    finally:
        workers.close()


def _busy_pool() -> tuple[Any, threading.Thread]:
    """A one-worker pool whose worker is stuck in a call, so it reads nothing more."""
    workers = pool()
    workers.call("add", (1, 1), {}, 5)
    thread = threading.Thread(target=lambda: _swallow(workers.call, "block", (10.0,), {}, None))
    thread.start()
    assert wait_for(lambda: workers.in_flight() == 1)
    return workers, thread


def _swallow(function: Any, *args: Any) -> None:
    try:
        function(*args)
    except pypods.PodError:
        pass


BIG = [f"{i:07d}" * 15 for i in range(100_000)]  # ~10 MB inline, distinct strings (no encoding can fold them)


def test_a_write_that_cannot_finish_times_out_and_the_pod_recovers() -> None:
    workers, thread = _busy_pool()
    try:
        started = time.monotonic()
        with pytest.raises(pypods.PodTimeoutError):
            workers.call("add", (BIG, []), {}, 0.3)
        assert time.monotonic() - started < 2
        thread.join(5)
        assert workers.call("add", (2, 2), {}, 5) == 4
    finally:
        workers.close()


def test_ctrl_c_during_a_large_write_never_leaves_half_a_frame() -> None:
    import signal

    workers, thread = _busy_pool()

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(KeyboardInterrupt):
            workers.call("add", (BIG, []), {}, None)
        thread.join(5)
        assert workers.call("add", (2, 2), {}, 5) == 4  # a fresh worker: the half-sent frame died with the old
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        workers.close()


def test_malformed_descriptions_give_plain_proxies() -> None:
    from pypods._proxy import make_proxy, signature_of

    class Caller:
        _name = "p"

        def _call(self, name: str, args: Any, kwargs: Any, timeout: Any) -> Any:
            return (name, args, kwargs)

    for info in (
        {"name": "f", "params": [{"kind": 99, "name": "x"}]},
        {"name": "f", "params": [{"name": 3, "kind": 1}]},
        {"name": "f", "params": "nope", "qualname": 5, "doc": ["x"]},
        {"name": "f", "params": [{}]},
    ):
        assert signature_of(info) is None
        proxy = make_proxy(Caller(), info)  # type: ignore[arg-type]
        assert proxy(1, timeout=2) == ("f", (1,), {"timeout": 2})
        assert proxy.__qualname__ == "f"


def test_a_setting_the_backend_would_ignore_is_refused_naming_both() -> None:
    from pypods._backends import BACKEND_OPTIONS, check_backend_options
    from pypods._env.layout import PodSettings

    check_backend_options(PodSettings(workers=3, timeout=2.0, idle_timeout=1.0))
    with pytest.raises(pypods.PodConfigError, match=r"'address'.*'local' backend"):
        check_backend_options(PodSettings(address="ray://x"))
    assert "idle_timeout" in BACKEND_OPTIONS["local"]


def test_a_reply_this_client_cannot_receive_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    # A numpy array in a reply to a client without numpy: the client, not the pod, cannot receive it.
    np = pytest.importorskip("numpy")
    from pypods._client.core import CallProtocol
    from pypods._worker.codec import Encoder

    frame = bytes(Encoder().document({"id": 7, "ok": True, "value": np.arange(3)}))
    monkeypatch.setitem(sys.modules, "numpy", None)  # import numpy now fails, as without it
    proto = CallProtocol("arrays")
    reply = proto.decode(frame)
    assert reply["id"] == 7
    with pytest.raises(ModuleNotFoundError, match="numpy is not installed") as info:
        proto.outcome("make", reply)
    assert "this client could not receive the result" in str(info.value)
    assert "the pod could not receive the arguments" not in str(info.value)


# -- issue #19 items 4, 6, 10 and #20's brake across reloads: the pool's states, deadline and brake ----------


class _SlowToEncode(ProcessConnection):
    """A connection whose calls take *delay* seconds before anything is sent (slow argument encoding)."""

    delay = 0.8

    def call(self, *args: Any, **kwargs: Any) -> Any:
        time.sleep(self.delay)
        return super().call(*args, **kwargs)


def _slow_to_encode() -> ProcessConnection:
    return _SlowToEncode(ThreadWorker(), start_timeout=5)


def test_idle_stop_never_ends_a_worker_a_call_is_still_encoding_for() -> None:
    workers = WorkerPool("fake", _slow_to_encode, 1, idle_timeout=0.2)
    try:
        workers.start()
        time.sleep(0.3)  # idle: the reaper looks every 0.05 s
        assert workers.call("add", (1, 2), {}, 5) == 3  # picked, then 0.8 s "encoding": not idle
    finally:
        workers.close()


def test_a_call_picked_before_a_drain_finishes_and_later_calls_are_sent_on() -> None:
    from pypods._client.pool import PoolRetired, PoolState

    workers = WorkerPool("fake", _slow_to_encode, 1)
    results: list[Any] = []
    thread = threading.Thread(target=lambda: results.append(workers.call("add", (1, 2), {}, 5)))
    thread.start()
    assert wait_for(lambda: workers.in_flight() == 1)
    closed: list[bool] = []
    workers.drain(then=lambda: closed.append(True))
    assert workers.state is PoolState.DRAINING
    with pytest.raises(PoolRetired):  # the loader sends it to the current pool
        workers.call("add", (1, 2), {}, 5)
    thread.join(10)
    assert results == [3]  # not PodClosedError: nobody closed the pod
    assert wait_for(lambda: closed == [True])
    assert workers.state is PoolState.CLOSED
    with pytest.raises(PoolRetired):  # drained, not closed by the user: still sent on, never PodClosedError
        workers.call("add", (1, 2), {}, 5)


def _slow_spawn(seconds: float, made: list[ProcessConnection]) -> Any:
    def spawn() -> ProcessConnection:
        time.sleep(seconds)
        made.append(connect())
        return made[-1]

    return spawn


def test_a_start_past_the_deadline_times_out_at_the_deadline_and_goes_on() -> None:
    made: list[ProcessConnection] = []
    workers = WorkerPool("fake", _slow_spawn(1.5, made), 1)
    try:
        began = time.monotonic()
        with pytest.raises(pypods.PodTimeoutError, match="still starting"):
            workers.call("add", (1, 2), {}, 0.3)
        assert time.monotonic() - began < 1.0  # was 1.5 s: the start's own length
        assert workers.call("add", (1, 2), {}, 5) == 3  # the same start, gone on for this call
        assert len(made) == 1
    finally:
        workers.close()


def test_a_resend_to_a_fresh_worker_keeps_the_first_deadline() -> None:
    made: list[ProcessConnection] = []

    def spawn() -> ProcessConnection:
        if not made:
            made.append(connect())
            return made[-1]
        return _slow_spawn(1.5, made)()

    workers = WorkerPool("fake", spawn, 1)
    try:
        workers.start()
        made[0].worker.crash()  # type: ignore[attr-defined]
        assert wait_for(lambda: not made[0].worker.alive())  # type: ignore[attr-defined]
        began = time.monotonic()
        with pytest.raises(pypods.PodTimeoutError):
            workers.call("add", (1, 2), {}, 0.5)  # not sent (dead worker), then a fresh one starting
        assert time.monotonic() - began < 1.3
    finally:
        workers.close()


def _crash(workers: WorkerPool) -> None:
    """Crash the pool's newest worker while idle (the next call counts it and goes to a fresh one)."""
    worker = workers.spawned[-1].worker  # type: ignore[attr-defined]
    worker.crash()
    assert wait_for(lambda: not worker.alive())


def _crash_five(workers: WorkerPool) -> None:
    for _ in range(5):
        workers.call("add", (1, 1), {}, 5)
        _crash(workers)


def test_the_brake_backs_off_then_one_probe_re_arms_it() -> None:
    from pypods._client.brake import CrashBrake
    from pypods._client.pool import PoolState

    workers = pool()
    workers._brake = CrashBrake("fake", first=0.3, most=1.0)
    try:
        _crash_five(workers)
        with pytest.raises(pypods.PodCrashLoopError) as info:
            workers.call("add", (1, 1), {}, 5)
        assert len(info.value.crashes) == 5
        assert workers.state is PoolState.TRIPPED
        started = len(workers.spawned)  # type: ignore[attr-defined]
        with pytest.raises(pypods.PodCrashLoopError, match="Next try"):
            workers.call("add", (1, 1), {}, 5)  # backing off: fails fast, starts nothing
        assert len(workers.spawned) == started  # type: ignore[attr-defined]
        time.sleep(0.35)
        assert workers.call("add", (1, 1), {}, 5) == 2  # the probe: a fresh worker
        assert workers.state is PoolState.OPEN  # re-armed: crashes counted from zero again
        for _ in range(4):  # four more crashes: below the limit of a re-armed brake
            _crash(workers)
            assert workers.call("add", (1, 1), {}, 5) == 2
    finally:
        workers.close()


def test_a_probe_that_crashes_trips_the_brake_again_for_longer() -> None:
    from pypods._client.brake import CrashBrake

    workers = pool()
    workers._brake = brake = CrashBrake("fake", first=0.2, most=0.5)
    try:
        _crash_five(workers)
        with pytest.raises(pypods.PodCrashLoopError):
            workers.call("add", (1, 1), {}, 5)  # the fifth crash is seen: tripped
        time.sleep(0.25)
        before = len(workers.spawned)  # type: ignore[attr-defined]

        def crash_the_probe() -> None:
            wait_for(lambda: len(workers.spawned) > before and workers.in_flight() == 1)  # type: ignore[attr-defined]
            time.sleep(0.1)
            workers.spawned[-1].worker.crash()  # type: ignore[attr-defined]

        threading.Thread(target=crash_the_probe).start()
        with pytest.raises(pypods.PodCrashedError):
            workers.call("block", (5.0,), {}, 5)  # the probe: its fresh worker dies under it
        with pytest.raises(pypods.PodCrashLoopError):
            workers.call("add", (1, 1), {}, 5)
        assert brake._delay == 0.5  # 0.2, then 0.4 for this trip, capped at 0.5 for the next
        time.sleep(0.45)
        assert workers.call("add", (1, 1), {}, 5) == 2
    finally:
        workers.close()


def test_one_brake_across_reloads_and_reloads_count_as_strikes() -> None:
    from pypods._client.brake import CrashBrake

    brake = CrashBrake("fake")
    for _ in range(3):  # each reload a fresh pool, one crash each: the pod's brake sees them all
        made: list[ProcessConnection] = []
        workers = WorkerPool("fake", _slow_spawn(0, made), 1, brake=brake)
        workers.call("add", (1, 1), {}, 5)
        made[-1].worker.crash()  # type: ignore[attr-defined]
        assert wait_for(lambda made=made: not made[-1].worker.alive())  # type: ignore[attr-defined, misc]
        assert workers.call("add", (1, 1), {}, 5) == 2  # counts the crash, resent to a fresh worker
        workers.drain()
    brake.reloaded()
    with pytest.raises(pypods.PodCrashLoopError, match="crashed or reloaded 5 times") as info:
        brake.reloaded()
    assert "reloaded" in info.value.crashes[-1]
    fresh = WorkerPool("fake", _slow_spawn(0, []), 1, brake=brake)
    with pytest.raises(pypods.PodCrashLoopError):
        fresh.call("add", (1, 1), {}, 5)


class _SlowReport(ThreadWorker):
    """A worker whose exit status takes a while to read (a busy machine reaping a killed process)."""

    def exit_report(self, wait: float = 1.0) -> tuple[int | None, str]:
        time.sleep(0.3)
        return super().exit_report(wait)


def test_calls_in_flight_on_a_killed_worker_get_crashed_never_closed() -> None:
    made: list[ProcessConnection] = []

    def spawn() -> ProcessConnection:
        made.append(ProcessConnection(_SlowReport(), start_timeout=5))
        return made[-1]

    workers = WorkerPool("fake", spawn, 1)
    outcomes: list[Any] = []

    def call(name: str, *args: Any) -> None:
        try:
            outcomes.append((name, workers.call(name, args, {}, 10)))
        except BaseException as exc:
            outcomes.append((name, exc))

    try:
        workers.start()
        threads = [threading.Thread(target=call, args=("block", 10.0)) for _ in range(10)]
        for thread in threads:
            thread.start()
        assert wait_for(lambda: made[0].in_flight() == 10)
        time.sleep(0.2)  # all ten written
        worker = made[0].worker
        worker._server.shutdown(socket.SHUT_RDWR)  # type: ignore[attr-defined]  # dies before any reply
        worker.pod.gate.set()  # type: ignore[attr-defined]
        late = [threading.Thread(target=call, args=("add", 1, 2)) for _ in range(5)]  # in the gap
        for thread in late:
            thread.start()
        for thread in threads + late:
            thread.join(10)
        blocked = [outcome for name, outcome in outcomes if name == "block"]
        assert len(blocked) == 10
        assert all(type(outcome) is pypods.PodCrashedError for outcome in blocked), {
            type(o).__name__: str(o)[:300] for o in blocked
        }
        assert [outcome for name, outcome in outcomes if name == "add"] == [3] * 5
    finally:
        workers.close()


class _SlowToPickle:
    def __reduce__(self) -> tuple[type[int], tuple[int]]:
        time.sleep(0.6)  # an argument that takes a while to encode
        return (int, (7,))


def test_encoding_counts_against_the_deadline_and_a_late_encoding_sends_nothing() -> None:
    workers = WorkerPool("fake", lambda: ProcessConnection(ThreadWorker(codec="pickle"), start_timeout=5), 1)
    try:
        workers.start()
        pids = workers.pids()
        began = time.monotonic()
        with pytest.raises(pypods.PodTimeoutError, match="nothing was sent"):
            workers.call("record", (_SlowToPickle(),), {}, 0.3)  # was: its value after 0.6 s
        assert time.monotonic() - began < 1.5
        assert workers.pids() == pids  # nothing sent: the worker is not killed
        assert workers.call("record", (_SlowToPickle(),), {}, 5) == 7
    finally:
        workers.close()


@pytest.mark.parametrize("where", ["before", "inside"])
def test_ctrl_c_while_launching_a_start_never_leaves_later_calls_waiting(
    monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """Ctrl-C between making a slot's start and its thread running: the next calls start the worker anew."""
    import pypods._client.pool as pool_module

    real = threading.Thread

    class Interrupted(real):  # type: ignore[misc, valid-type]
        def start(self) -> None:
            if where == "inside" or not self.name.endswith("-start"):  # "inside": it runs, start() is interrupted
                super().start()
            if self.name.endswith("-start"):
                raise KeyboardInterrupt

    workers = pool()
    try:
        monkeypatch.setattr(pool_module.threading, "Thread", Interrupted)
        with pytest.raises(KeyboardInterrupt):
            workers.call("add", (1, 1), {}, 5)
        monkeypatch.setattr(pool_module.threading, "Thread", real)
        assert workers.call("add", (2, 2), {}, 5) == 4  # before: PodTimeoutError (None: for ever)
        assert workers.call("add", (3, 3), {}, 5) == 6
        assert len(workers.spawned) == 1  # type: ignore[attr-defined]
    finally:
        workers.close()
