"""Review findings against the call engine: descriptor reuse, high descriptor numbers, deadlines on writes."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
import sys
import textwrap
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest

import pypods
from pypods._client.aconnection import AsyncProcessConnection
from pypods._client.connection import NotSentError, ProcessConnection
from pypods._client.pool import AsyncWorkerPool, WorkerPool
from pypods._client.process import WorkerProcess

from .fakeworker import ThreadWorker

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

BIG = [f"{i:07d}" * 15 for i in range(100_000)]  # ~10 MB inline, distinct strings (no encoding can fold them)


def _outcome(function: Any, *args: Any) -> dict[str, Any]:
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = function(*args)
        except BaseException as exc:
            result["error"] = exc

    result["thread"] = threading.Thread(target=run, daemon=True)
    result["thread"].start()
    return result


def test_a_blocked_write_never_lands_in_a_file_that_reused_the_pipe_number(tmp_path: Path) -> None:
    # A thread blocked writing a large request while the connection is closed: once the input pipe's
    # number is free again, another file may get it; the blocked writer must not write into that file.
    root = tmp_path / "project"
    pod_dir = root / "pods" / "holder"
    pod_dir.mkdir(parents=True)
    (root / "pods" / "__init__.py").write_text("")
    (pod_dir / "__init__.py").write_text("")
    (pod_dir / "pod.py").write_text(
        textwrap.dedent(
            """
            import os, time

            def hold():
                if os.fork() == 0:  # a child keeps the request pipe open (and unread) for a while
                    time.sleep(2.0)
                    os._exit(0)
                time.sleep(30)

            def add(a, b):
                return a + b
            """
        )
    )
    worker = WorkerProcess(sys.executable, "holder", str(pod_dir), str(root))
    conn = ProcessConnection(worker, start_timeout=20)
    number = worker.write_fd
    holder = _outcome(conn.call, "hold", (), {}, None)
    time.sleep(0.5)
    writer = _outcome(conn.call, "add", (BIG, []), {}, None)
    time.sleep(0.5)  # the writer is now blocked: the pipe is full and nobody reads it
    conn.close()
    victim = tmp_path / "victim"
    others = []  # lower free numbers are taken first: open until the pipe's number comes up
    while True:
        file = open(victim, "ab")
        if file.fileno() >= number:
            break
        others.append(file)
    for other in others:
        other.close()
    with file:
        if file.fileno() != number:
            pytest.skip("the pipe's number was not free again")
        writer["thread"].join(10)
        holder["thread"].join(10)
    assert not writer["thread"].is_alive()
    worker._drain.join(5)  # the child held the stderr pipe too; it has exited now
    assert worker.proc.stderr is not None
    worker.proc.stderr.close()
    assert victim.stat().st_size == 0, "the request went into an unrelated file"
    assert isinstance(writer.get("error"), pypods.PodError)


@contextlib.contextmanager
def _descriptors_above_1024() -> Iterator[None]:
    """New descriptors get numbers above 1024, where ``select.select`` refuses them (a busy server's)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip("the descriptor limit is too low")
    if soft != resource.RLIM_INFINITY and soft < 1200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1200 if hard == resource.RLIM_INFINITY else min(2048, hard), hard))
    null = os.open(os.devnull, os.O_RDONLY)
    held = [os.dup(null) for _ in range(1100)]
    try:
        yield
    finally:
        for fd in [*held, null]:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_large_argument_on_a_descriptor_above_1024() -> None:
    worker = ThreadWorker()  # the worker's own end stays low (a real worker's are 0 and 1)
    with _descriptors_above_1024():
        client = os.dup(worker.write_fd)
    worker.read_fd = worker.write_fd = client
    conn = ProcessConnection(worker, start_timeout=5)
    try:
        assert conn.call("add", (BIG, []), {}, 20) == BIG
        assert conn.call("add", (2, 2), {}, 5) == 4
    finally:
        conn.close()
        os.close(client)


def test_an_async_call_deadline_covers_writing_the_request() -> None:
    # One worker stuck in a call reads nothing more: a large request cannot be written, and its
    # deadline must still fire (as on the sync side), not when the other call ends.
    async def main() -> None:
        worker = ThreadWorker()
        conn = AsyncProcessConnection(worker)
        await conn.start(5)
        blocked = asyncio.ensure_future(conn.call("block", (8.0,), {}, None))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        with pytest.raises(pypods.PodTimeoutError):
            await conn.call("add", (BIG, []), {}, 0.3)
        assert time.monotonic() - started < 2.0
        with pytest.raises(pypods.PodWorkerError):
            await blocked
        await conn.aclose()

    asyncio.run(asyncio.wait_for(main(), 20))


def _slow_spawn(spawned: list[Any], seconds: float = 1.5) -> Any:
    def spawn() -> ProcessConnection:
        time.sleep(seconds)  # a pod whose import takes a while
        conn = ProcessConnection(ThreadWorker(), start_timeout=5)
        spawned.append(conn)
        return conn

    return spawn


def test_close_does_not_wait_for_a_worker_start_and_leaves_no_worker() -> None:
    spawned: list[Any] = []
    workers = WorkerPool("fake", _slow_spawn(spawned), 1)
    caller = _outcome(workers.call, "add", (1, 2), {}, None)
    time.sleep(0.3)  # the caller is starting the worker
    started = time.monotonic()
    workers.close()
    assert time.monotonic() - started < 0.5, "close() waited for a worker to start"
    caller["thread"].join(5)
    assert isinstance(caller.get("error"), pypods.PodClosedError), caller
    assert spawned
    assert all(conn.broken is not None for conn in spawned), "a worker outlived close()"


def _aslow_spawn(spawned: list[Any], seconds: float) -> Any:
    async def spawn() -> AsyncProcessConnection:
        await asyncio.sleep(seconds)  # a pod whose import takes a while
        conn = AsyncProcessConnection(ThreadWorker())
        await conn.start(5)
        spawned.append(conn)
        return conn

    return spawn


def test_async_close_during_a_worker_start_leaves_no_worker_and_no_call_runs() -> None:
    async def main() -> None:
        spawned: list[Any] = []
        workers = AsyncWorkerPool("fake", _aslow_spawn(spawned, 0.5), 1)
        call = asyncio.ensure_future(workers.call("add", (1, 2), {}, None))
        await asyncio.sleep(0.1)
        await workers.aclose()
        with pytest.raises(pypods.PodClosedError):
            await call
        assert spawned
        assert all(conn.broken is not None for conn in spawned), "a worker outlived aclose()"
        for conn in spawned:
            await conn.aclose()

    asyncio.run(asyncio.wait_for(main(), 20))


def _edit(pod_py: Path, source: str) -> None:
    pod_py.write_text(source)
    stat = pod_py.stat()
    os.utime(pod_py, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**10))
    time.sleep(0.6)  # the sources are looked at no more than every half second


RELOADED = "import time\n\ndef slow():\n    time.sleep(2)\n    return 'old'\n\ndef f():\n    return {}\n"


def test_a_reload_lets_calls_in_flight_finish(make_pod: Any, root: Path) -> None:
    # Another thread's edit must not end this thread's call with PodClosedError: nobody closed the pod.
    pod_py = make_pod("drained", RELOADED.format(1)) / "pod.py"
    with pypods.load("drained", root=root, reload=True) as pod:
        assert pod.f() == 1
        slow = _outcome(pod.slow)
        time.sleep(0.3)
        _edit(pod_py, RELOADED.format(2))
        assert pod.f() == 2
        slow["thread"].join(10)
        assert slow.get("value") == "old", slow
        assert len(pypods.Pod.pids(pod)) == 1


def test_a_closed_pod_never_reloads(make_pod: Any, root: Path) -> None:
    pod_py = make_pod("shut", RELOADED.format(1)) / "pod.py"
    pod = pypods.load("shut", root=root, reload=True)
    assert pod.f() == 1
    pod.close()
    _edit(pod_py, RELOADED.format(2))
    with pytest.raises(pypods.PodClosedError):
        pod.f()
    assert pypods.Pod.pids(pod) == [], "a closed pod started a worker"


def test_async_a_reload_lets_calls_in_flight_finish_and_a_closed_pod_never_reloads(make_pod: Any, root: Path) -> None:
    pod_py = make_pod("adrained", RELOADED.format(1)) / "pod.py"

    async def main() -> None:
        pod = await pypods.aload("adrained", root=root, reload=True)
        assert await pod.f() == 1
        slow = asyncio.ensure_future(pod.slow())
        await asyncio.sleep(0.3)
        await asyncio.to_thread(_edit, pod_py, RELOADED.format(2))
        assert await pod.f() == 2
        assert await slow == "old"
        await pod.aclose()
        await asyncio.to_thread(_edit, pod_py, RELOADED.format(3))
        with pytest.raises(pypods.PodClosedError):
            await pod.f()
        assert pod.pids() == [], "a closed pod started a worker"

    asyncio.run(asyncio.wait_for(main(), 60))


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts /proc/self/fd")
def test_many_pods_opened_and_closed_leave_no_descriptor_nor_thread(make_pod: Any, root: Path) -> None:
    make_pod("leaky", "def f(x):\n    return x\n\ndef g(n):\n    yield from range(n)\n")
    with pypods.load("leaky", root=root) as pod:  # builds the environment and the description cache
        pod.f(1)
    time.sleep(0.5)
    fds, threads = _fd_count(), threading.active_count()
    for i in range(8):
        pod = pypods.load("leaky", root=root, workers=2, idle_timeout=30)
        assert pod.f(i) == i
        stream = pod.g(100)
        next(stream)
        pod.close()

    async def main() -> None:
        for i in range(8):
            pod = await pypods.aload("leaky", root=root, workers=2, idle_timeout=30)
            assert await pod.f(i) == i
            async for _ in pod.g(100):
                break
            await pod.aclose()

    asyncio.run(main())
    deadline = time.monotonic() + 2  # about a second after close, not the idle reaper's next look
    while time.monotonic() < deadline and (_fd_count() > fds or threading.active_count() > threads):
        time.sleep(0.05)
    assert _fd_count() <= fds
    assert threading.active_count() <= threads, [t.name for t in threading.enumerate()]


def _flood(call_id: int, count: int) -> bytes:
    from pypods._worker.codec import Encoder

    return b"".join(bytes(Encoder().document({"id": call_id, "yield": i})) for i in range(count))


def test_a_pod_sending_stream_items_it_was_not_granted_cannot_grow_client_memory() -> None:
    # Flow control bounds what a stream may hold (its window); a pod that ignores it is hostile.
    conn = ProcessConnection(ThreadWorker(), start_timeout=5)
    try:
        stream = conn.call("countdown", (3,), {}, 5)
        stream_id = stream._cursor.call_id  # type: ignore[attr-defined]
        with pytest.raises(pypods.PodProtocolError):
            conn.call("forge", (_flood(stream_id, 2000),), {}, 5)
        assert isinstance(conn.broken, pypods.PodProtocolError)
        assert len(conn._calls.get(stream_id) or ()) < 200
    finally:
        conn.close()


def test_async_a_pod_sending_stream_items_it_was_not_granted_cannot_grow_client_memory() -> None:
    async def main() -> None:
        conn = AsyncProcessConnection(ThreadWorker())
        await conn.start(5)
        stream = await conn.call("countdown", (3,), {}, 5)
        stream_id = stream._cursor.call_id
        with pytest.raises(pypods.PodProtocolError):
            await conn.call("forge", (_flood(stream_id, 2000),), {}, 5)
        assert isinstance(conn.broken, pypods.PodProtocolError)
        queue = conn._calls.get(stream_id)
        assert queue is None or queue.qsize() < 200
        await conn.aclose()

    asyncio.run(asyncio.wait_for(main(), 20))


def test_two_workers_started_on_demand_serve_two_calls_at_once() -> None:
    # Lazy start, two threads at once: the second call must start the second worker, not queue
    # behind the first call on the worker being started.
    spawned: list[Any] = []
    workers = WorkerPool("fake", _slow_spawn(spawned, 0.3), 2)
    try:
        started = time.monotonic()
        calls = [_outcome(workers.call, "sleep", (1.0,), {}, None) for _ in range(2)]
        for call in calls:
            call["thread"].join(10)
        assert [call.get("value") for call in calls] == [1.0, 1.0]
        assert len(spawned) == 2
        assert time.monotonic() - started < 2.2, "the calls ran one after the other (2.3 s+)"
    finally:
        workers.close()


def test_async_two_workers_started_on_demand_serve_two_calls_at_once() -> None:
    async def main() -> None:
        spawned: list[Any] = []
        workers = AsyncWorkerPool("fake", _aslow_spawn(spawned, 0.3), 2)
        started = time.monotonic()
        assert await asyncio.gather(*(workers.call("sleep", (1.0,), {}, None) for _ in range(2))) == [1.0, 1.0]
        assert len(spawned) == 2
        assert time.monotonic() - started < 2.2, "the calls ran one after the other (2.3 s+)"
        await workers.aclose()

    asyncio.run(asyncio.wait_for(main(), 20))


@contextlib.contextmanager
def _ctrl_c_after(seconds: float) -> Iterator[None]:
    """A Ctrl-C (KeyboardInterrupt in this thread) after *seconds*, as a terminal would deliver it."""
    import signal

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class _Recorded(ThreadWorker):
    """A thread worker that counts the SIGINTs a real worker would get."""

    interrupts = 0

    def interrupt(self) -> None:
        self.interrupts += 1


def test_ctrl_c_on_a_queued_call_does_not_interrupt_the_running_one() -> None:
    worker = _Recorded()
    conn = ProcessConnection(worker, start_timeout=5)
    try:
        running = _outcome(conn.call, "sleep", (1.0,), {}, None)  # another thread's call, running
        time.sleep(0.2)
        with _ctrl_c_after(0.2), pytest.raises(KeyboardInterrupt):
            conn.call("add", (1, 2), {}, None)  # queued behind it in the worker
        running["thread"].join(5)
        assert worker.interrupts == 0, "the Ctrl-C was passed on to another thread's running call"
        assert running.get("value") == 1.0
        assert conn.call("add", (2, 2), {}, 5) == 4
    finally:
        conn.close()


def test_ctrl_c_on_the_running_call_interrupts_it() -> None:
    worker = _Recorded()
    conn = ProcessConnection(worker, start_timeout=5)
    try:
        with _ctrl_c_after(0.2), pytest.raises(KeyboardInterrupt):
            conn.call("sleep", (0.5,), {}, None)
        assert worker.interrupts == 1
    finally:
        conn.close()


def test_pickle_codec_a_stream_item_that_cannot_be_pickled_closes_the_generator() -> None:
    worker = ThreadWorker(codec="pickle")
    closed: list[str] = []

    def locks() -> Any:
        try:
            yield 1
            yield threading.Lock()  # cannot be pickled
            yield from range(1000)  # more than the stream window: the worker would wait for credit
        finally:
            closed.append("closed")

    worker.worker.functions["locks"] = locks
    conn = ProcessConnection(worker, start_timeout=5)
    try:
        stream = conn.call("locks", (), {}, 5)
        assert next(stream) == 1
        with pytest.raises(pypods.PodSerializationError):
            next(stream)
        assert conn.call("add", (1, 1), {}, 5) == 2
        deadline = time.monotonic() + 5
        while not closed and time.monotonic() < deadline:
            time.sleep(0.01)
        assert closed == ["closed"], "the generator was left suspended in the worker"
        assert not worker.worker.streams
    finally:
        conn.close()


def test_closing_a_stream_never_waits_for_a_busy_worker_to_read() -> None:
    from pypods._worker.codec import Encoder

    worker = ThreadWorker()
    conn = ProcessConnection(worker, start_timeout=5)
    try:
        stream = conn.call("countdown", (1000,), {}, 5)
        assert next(stream) == 1000
        busy = _outcome(conn.call, "block", (10.0,), {}, None)
        time.sleep(0.2)
        filler = bytes(Encoder().document({"id": 999_999, "op": "more", "n": 1}))  # harmless: no such stream
        with contextlib.suppress(BlockingIOError):
            while True:  # the worker reads nothing while busy: fill its input to the brim
                os.write(conn._wfd, filler)  # type: ignore[arg-type]
        started = time.monotonic()
        stream.close()
        assert time.monotonic() - started < 0.5, "close() waited for the busy worker"
        worker.pod.gate.set()
        busy["thread"].join(5)
        assert busy.get("value") == "unblocked"
        assert conn.call("add", (1, 1), {}, 5) == 2  # sends the cancel that was waiting
        deadline = time.monotonic() + 5
        while 1000 not in worker.pod.closed and time.monotonic() < deadline:
            time.sleep(0.01)
        assert 1000 in worker.pod.closed
    finally:
        conn.close()


def test_a_waiting_cancel_does_not_stretch_the_next_call_deadline() -> None:
    from pypods._worker.codec import Encoder

    conn = ProcessConnection(ThreadWorker(), start_timeout=5)
    try:
        stream = conn.call("countdown", (1000,), {}, 5)
        next(stream)
        _outcome(conn.call, "block", (10.0,), {}, None)
        time.sleep(0.2)
        filler = bytes(Encoder().document({"id": 999_999, "op": "more", "n": 1}))
        with contextlib.suppress(BlockingIOError):
            while True:
                os.write(conn._wfd, filler)  # type: ignore[arg-type]
        stream.close()  # its cancel waits for the next write
        started = time.monotonic()
        with pytest.raises(pypods.PodTimeoutError):
            conn.call("add", (1, 1), {}, 0.3)
        assert time.monotonic() - started < 1.5
    finally:
        conn.close()


def test_a_call_never_sent_because_another_call_broke_the_worker_goes_to_a_fresh_one() -> None:
    from .fakeworker import pool

    workers = pool()
    try:
        workers.call("add", (1, 1), {}, 5)
        _outcome(workers.call, "block", (10.0,), {}, None)  # the worker stops reading
        time.sleep(0.2)
        big = _outcome(workers.call, "add", (BIG, []), {}, 0.5)  # blocks writing, then times out
        conn = workers.spawned[0]  # type: ignore[attr-defined]
        deadline = time.monotonic() + 5
        while not conn._writers and time.monotonic() < deadline:
            time.sleep(0.005)
        small = _outcome(workers.call, "add", (1, 2), {}, 5)  # waits for the write lock: never sent
        big["thread"].join(5)
        small["thread"].join(5)
        assert isinstance(big.get("error"), pypods.PodTimeoutError)
        assert small.get("value") == 3, small
    finally:
        workers.close()


def test_async_a_call_on_a_worker_another_call_broke_is_marked_not_sent() -> None:
    # The pool resends a call that never reached a worker (NotSentError, internal); on a worker that
    # another call's timeout killed, nothing of this call was sent.
    async def main() -> None:
        conn = AsyncProcessConnection(ThreadWorker())
        await conn.start(5)
        with pytest.raises(pypods.PodTimeoutError):
            await conn.call("sleep", (5.0,), {}, 0.2)
        with pytest.raises(NotSentError):
            await conn.call("add", (1, 2), {}, 5)
        await conn.aclose()

    asyncio.run(asyncio.wait_for(main(), 20))


def test_workers_that_crash_while_starting_trip_the_brake() -> None:
    started: list[int] = []

    def spawn() -> ProcessConnection:
        started.append(1)
        raise pypods.PodCrashedError("pod 'fake': worker (pid 1) died: signal SIGSEGV", returncode=-11)

    workers = WorkerPool("fake", spawn, 1)
    for _ in range(5):
        with pytest.raises(pypods.PodCrashedError):
            workers.call("add", (1, 2), {}, 5)
    with pytest.raises(pypods.PodCrashLoopError):
        workers.call("add", (1, 2), {}, 5)
    assert len(started) == 5, "the pod kept starting workers that die at once"
    workers.close()


def test_async_workers_that_crash_while_starting_trip_the_brake() -> None:
    async def main() -> None:
        started: list[int] = []

        async def spawn() -> AsyncProcessConnection:
            started.append(1)
            raise pypods.PodCrashedError("pod 'fake': worker (pid 1) died: signal SIGSEGV", returncode=-11)

        workers = AsyncWorkerPool("fake", spawn, 1)
        for _ in range(5):
            with pytest.raises(pypods.PodCrashedError):
                await workers.call("add", (1, 2), {}, 5)
        with pytest.raises(pypods.PodCrashLoopError):
            await workers.call("add", (1, 2), {}, 5)
        assert len(started) == 5, "the pod kept starting workers that die at once"
        await workers.aclose()

    asyncio.run(asyncio.wait_for(main(), 20))


def test_a_client_that_exits_without_closing_its_workers_exits_at_once(tmp_path: Path) -> None:
    import subprocess

    pod_dir = tmp_path / "pods" / "p"
    pod_dir.mkdir(parents=True)
    for init in (tmp_path / "pods" / "__init__.py", pod_dir / "__init__.py"):
        init.write_text("")
    (pod_dir / "pod.py").write_text("def f(x):\n    return x\n")
    client = textwrap.dedent(
        f"""
        import sys
        from pypods._client.connection import ProcessConnection
        from pypods._client.process import WorkerProcess

        conns = [
            ProcessConnection(WorkerProcess(sys.executable, "p", {str(pod_dir)!r}, {str(tmp_path)!r}), start_timeout=20)
            for _ in range(3)
        ]
        print(sum(conn.call("f", (1,), {{}}, 5) for conn in conns), flush=True)
        """
    )
    with subprocess.Popen([sys.executable, "-c", client], stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "3"
        started = time.monotonic()
        proc.wait(30)
    assert time.monotonic() - started < 2.5, "exit waited for workers to be killed one by one"  # 1 s each: 3 s


def test_an_interrupted_reader_hands_the_pipe_to_a_waiting_thread() -> None:
    conn = ProcessConnection(_Recorded(), start_timeout=5)
    waiting: dict[str, Any] = {}

    def later() -> None:
        time.sleep(0.1)  # the main thread is the reader by now
        waiting["call"] = _outcome(conn.call, "add", (1, 2), {}, 5)

    try:
        threading.Thread(target=later).start()
        with _ctrl_c_after(0.3), pytest.raises(KeyboardInterrupt):
            conn.call("sleep", (0.6,), {}, None)
        deadline = time.monotonic() + 5
        while "call" not in waiting and time.monotonic() < deadline:
            time.sleep(0.01)
        waiting["call"]["thread"].join(5)
        assert waiting["call"].get("value") == 3, waiting
    finally:
        conn.close()


def test_ctrl_c_while_waiting_for_a_stream_item_stops_the_generator() -> None:
    worker = ThreadWorker()
    closed: list[str] = []

    def slow() -> Any:
        try:
            for i in range(1000):
                time.sleep(0.2)
                yield i
        finally:
            closed.append("closed")

    worker.worker.functions["slow"] = slow
    conn = ProcessConnection(worker, start_timeout=5)
    try:
        stream = conn.call("slow", (), {}, None)
        with _ctrl_c_after(0.1), pytest.raises(KeyboardInterrupt):
            next(stream)
        assert conn.call("add", (1, 1), {}, 5) == 2
        deadline = time.monotonic() + 5
        while not closed and time.monotonic() < deadline:
            time.sleep(0.01)
        assert closed == ["closed"], "the generator ran on in the worker"
    finally:
        conn.close()


def test_a_default_that_cannot_be_shown_or_sent_does_not_stop_the_pod_loading() -> None:
    from .fakeworker import Pod as FakePod

    class Unshowable:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    odd = Unshowable()

    class OddDefaults(FakePod):
        def functions(self) -> dict[str, Any]:
            def huge(x: int = 10**5000) -> int:
                return x % 7

            def unshowable(x: Any = odd) -> str:
                return "ok"

            return {**super().functions(), "huge": huge, "unshowable": unshowable}

    conn = ProcessConnection(ThreadWorker(pod=OddDefaults()), start_timeout=5)
    try:
        names = {info["name"] for info in conn.description}
        assert {"huge", "unshowable", "add"} <= names
        assert conn.call("unshowable", (), {}, 5) == "ok"
        assert conn.call("add", (1, 2), {}, 5) == 3
    finally:
        conn.close()


@dataclasses.dataclass
class Point:
    """A class registered with pypods.register (the worker imports it by name)."""

    x: int = 0


def test_a_call_that_cannot_be_encoded_does_not_lose_the_class_registry() -> None:
    conn = ProcessConnection(ThreadWorker(), start_timeout=5)
    try:
        pypods.register(Point)
        with pytest.raises(pypods.PodSerializationError):
            conn.call("add", (object(), 1), {}, 5)  # fails before anything is sent
        assert conn.proto.registry_frame() is not None, "the worker was never told about Point"
    finally:
        conn.close()


def _gone(pid: int, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.02)
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_dropped_pod_stops_its_workers_sync_and_async(make_pod: Any, root: Path) -> None:
    import gc

    make_pod("dropped", "def f(x):\n    return x\n")
    pod = pypods.load("dropped", root=root)
    assert pod.f(1) == 1
    (pid,) = pypods.Pod.pids(pod)
    del pod
    gc.collect()
    assert _gone(pid), "a dropped Pod left its worker running"

    async def main() -> int:
        apod = await pypods.aload("dropped", root=root)
        assert await apod.f(2) == 2
        (apid,) = apod.pids()
        del apod
        gc.collect()
        await asyncio.sleep(0.1)
        return apid

    async def check() -> None:
        apid = await main()
        assert await asyncio.to_thread(_gone, apid), "a dropped AsyncPod left its worker running"

    asyncio.run(asyncio.wait_for(check(), 30))


def test_close_does_not_wait_for_a_reload_in_progress(make_pod: Any, root: Path) -> None:
    pod_py = make_pod("reloading", RELOADED.format(1)) / "pod.py"
    pod = pypods.load("reloading", root=root, reload=True)
    try:
        assert pod.f() == 1
        _edit(pod_py, "import time\ntime.sleep(2)\n\n" + RELOADED.format(2))  # the new code starts slowly
        caller = _outcome(pod.f)  # reloads: starts a worker on the new code
        time.sleep(0.5)
        started = time.monotonic()
        pod.close()
        assert time.monotonic() - started < 0.5, "close() waited for the reload's worker to start"
        caller["thread"].join(10)
        assert isinstance(caller.get("error"), pypods.PodClosedError), caller
        assert pypods.Pod.pids(pod) == []
    finally:
        pypods.Pod.close(pod)


class _DiesAfterHello(ThreadWorker):
    """A worker that says hello, then dies before reading anything (the client's next write fails)."""

    def _serve(self) -> None:
        self.worker.hello()
        self.returncode = -11
        self._server.shutdown(socket.SHUT_RDWR)


def test_a_worker_dying_right_after_its_hello_is_a_crash_never_not_sent() -> None:
    workers = WorkerPool("fake", lambda: ProcessConnection(_DiesAfterHello(), start_timeout=5), 1)
    try:
        for _ in range(3):
            with pytest.raises(pypods.PodCrashedError) as caught:
                workers.call("add", (1, 2), {}, 5)
            assert type(caught.value) is not NotSentError
    finally:
        workers.close()


def test_async_a_worker_dying_right_after_its_hello_is_a_crash_never_not_sent() -> None:
    async def main() -> None:
        async def spawn() -> AsyncProcessConnection:
            conn = AsyncProcessConnection(_DiesAfterHello())
            await conn.start(5)
            return conn

        workers = AsyncWorkerPool("fake", spawn, 1)
        for _ in range(3):
            with pytest.raises(pypods.PodCrashedError) as caught:
                await workers.call("add", (1, 2), {}, 5)
            assert type(caught.value) is not NotSentError
        await workers.aclose()

    asyncio.run(asyncio.wait_for(main(), 20))
