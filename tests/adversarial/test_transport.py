"""Hostile pods against the transport: forged shared-memory buffers, stderr floods, children, shadowing, hello files.

Each pod forges what any pod process can: frames on its own protocol pipe (``forge.FORGE``) and
descriptors on its own end of the shared-memory socket. Each test asserts the safe outcome: a
typed error or the right value, well within the deadline, and nothing left behind (descriptors of
the client, files in /dev/shm, processes).
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING

import pytest
from forge import FORGE

import pypods
from pypods._client import process
from pypods._worker import sharedmem

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.skipif(not sharedmem.supported(), reason="no memfd / SCM_RIGHTS here")

# Pod side: find the id of the call being served, send descriptors on the worker's own socket, and
# forge a reply whose value is an ``shm`` extension (the documented wire format).
SHM_FORGE = (
    FORGE
    + """
import array as _array, socket as _socket, struct as _struct

def call_id():
    frame = _sys._getframe(1)
    while frame is not None:
        found = frame.f_locals.get("call_id")
        if isinstance(found, int) and found > 0:
            return found
        frame = frame.f_back
    raise RuntimeError("no call id on the stack")

def send_fd(token, *fds):
    sock = _worker().channel.sock
    rights = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, _array.array("i", fds))] if fds else []
    sock.sendmsg([_struct.pack("<Q", token)], rights)

def shm_reply(token, size, kind="bytes"):
    enc = _sys.modules["_pypods_worker.codec"].Encoder()
    out = bytearray(4)
    enc.value(out, b"id\\0", call_id())
    enc.value(out, b"ok\\0", True)
    enc.ext(out, b"value\\0", "shm", [token, size], k=kind)
    out += b"\\0"
    out[:4] = _struct.pack("<i", len(out))
    send(bytes(out))

def sealed(data):
    return _sys.modules["_pypods_worker.sharedmem"]._sealed_memfd(data)
"""
)

HOSTILE = (
    SHM_FORGE
    + """
import fcntl, os, subprocess, sys, time

def echo(value):
    return value

def fifo(path):
    os.mkfifo(path)
    send_fd(9001, os.open(path, os.O_RDONLY | os.O_NONBLOCK))
    shm_reply(9001, 4096)
    time.sleep(60)

def dev_zero():
    send_fd(9002, os.open("/dev/zero", os.O_RDONLY))
    shm_reply(9002, 1 << 30)
    time.sleep(60)

def symlink_to_zero(path):
    os.symlink("/dev/zero", path)
    send_fd(9003, os.open(path, os.O_RDONLY))
    shm_reply(9003, 1 << 30)
    time.sleep(60)

def truncate_later(size):
    fd = os.memfd_create("evil", os.MFD_ALLOW_SEALING)
    os.write(fd, b"a" * size)
    send_fd(9004, fd)
    shm_reply(9004, size, "raw")
    time.sleep(0.3)
    os.ftruncate(fd, 0)  # a client that mapped this would die of SIGBUS on its next read
    time.sleep(60)

def write_later(size, report):
    fd = sealed(b"a" * size)
    send_fd(9005, fd)
    shm_reply(9005, size, "raw")
    time.sleep(0.5)
    outcome = []
    for attempt in (lambda: os.pwrite(fd, b"b" * size, 0), lambda: os.ftruncate(fd, 0)):
        try:
            attempt()
            outcome.append("done")
        except OSError as exc:
            outcome.append(type(exc).__name__)
    with open(report + ".tmp", "w") as handle:
        handle.write(",".join(outcome))
    os.replace(report + ".tmp", report)  # whole, or not there yet

def wrong_size():
    send_fd(9006, sealed(b"x" * 100))
    shm_reply(9006, 8 << 20)
    time.sleep(60)

def no_fd():
    shm_reply(424242, 1 << 20)
    time.sleep(60)

def flood(n):
    fd = sealed(b"x" * 100)
    for token in range(n):
        send_fd(10000 + token, fd)
    shm_reply(10000 + n - 1, 100)
    time.sleep(60)

def stash(token):
    send_fd(token, sealed(b"mine" * 1000))
    return "stashed"

def claim(token):
    shm_reply(token, 4000)
    time.sleep(60)

def endless_line(megabytes):
    chunk = "z" * (1 << 20)
    for _ in range(megabytes):
        sys.stderr.write(chunk)
    sys.stderr.write("\\nafter the long line\\n")
    sys.stderr.flush()
    return megabytes

def long_line_then_die():
    sys.stderr.write("q" * (4 << 20) + "\\n")
    sys.stderr.flush()
    os._exit(3)

def die_with(value):
    os._exit(5)

def spawn_child():
    return subprocess.Popen(["sleep", "300"]).pid

def fork_and_die(pidfile):
    child = os.fork()
    if child == 0:
        time.sleep(300)
        os._exit(0)
    with open(pidfile, "w") as handle:
        handle.write(str(child))
    os._exit(3)
"""
)

DEADLINE = 10.0  # seconds; every refusal below comes back far faster


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def shm_names(pids: set[int]) -> set[str]:
    """Named segments in /dev/shm of these processes (other programs on the machine may make theirs)."""
    names = os.listdir("/dev/shm") if os.path.isdir("/dev/shm") else []
    wanted = {str(pid) for pid in pids}
    return {name for name in names if name.startswith("pypods-") and name.split("-")[1] in wanted}


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(pid: int, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


@contextmanager
def hostile_pod(make_pod, root: Path, name: str = "hostile", **options) -> Iterator[pypods.Pod]:
    """Load the hostile pod; afterwards, the client holds no new descriptor and nothing of ours is in /dev/shm."""
    make_pod(name, HOSTILE)
    fds = open_fds()
    pod = pypods.load(name, root=root, **options)
    pids = {os.getpid()}
    try:
        yield pod
        pids.update(pod.pids())
    finally:
        pod.close()
    assert open_fds() <= fds, "the client kept descriptors"
    assert shm_names(pids) == set(), "something was left in /dev/shm"


@contextmanager
def within(seconds: float = DEADLINE) -> Iterator[None]:
    start = time.monotonic()
    yield
    assert time.monotonic() - start < seconds


@pytest.mark.parametrize(
    ("attack", "args", "match"),
    [
        ("dev_zero", (), "not a regular file"),
        ("truncate_later", (2 << 20,), "not sealed"),
        ("wrong_size", (), "holds 100 bytes"),
        ("no_fd", (), "no shared-memory buffer"),
        ("flood", (sharedmem.MAX_PENDING + 8,), "wait unclaimed"),
    ],
)
def test_forged_buffers_are_refused(make_pod, root: Path, attack: str, args: tuple, match: str) -> None:
    with hostile_pod(make_pod, root) as pod:
        with within(), pytest.raises(pypods.PodProtocolError, match=match):
            getattr(pod, attack)(*args)
        assert pod.echo("next call works") == "next call works"


def test_a_fifo_neither_blocks_nor_is_read(make_pod, root: Path, tmp_path: Path) -> None:
    with hostile_pod(make_pod, root) as pod:
        with within(), pytest.raises(pypods.PodProtocolError, match="not a regular file"):
            pod.fifo(str(tmp_path / "fifo"))
        assert pod.echo(1) == 1


def test_a_symlink_to_dev_zero_is_refused(make_pod, root: Path, tmp_path: Path) -> None:
    with hostile_pod(make_pod, root) as pod:
        with within(), pytest.raises(pypods.PodProtocolError, match="not a regular file"):
            pod.symlink_to_zero(str(tmp_path / "zero"))


def test_a_sealed_buffer_cannot_change_after_the_client_got_it(make_pod, root: Path, tmp_path: Path) -> None:
    report = tmp_path / "report"
    size = 2 << 20
    with hostile_pod(make_pod, root) as pod:
        value = pod.write_later(size, str(report))
        deadline = time.monotonic() + DEADLINE
        while not report.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert report.read_text() == "PermissionError,PermissionError"
        assert bytes(value) == b"a" * size
        del value


def test_a_token_of_another_pods_socket_is_refused(make_pod, root: Path) -> None:
    make_pod("other", HOSTILE)
    with hostile_pod(make_pod, root) as pod, pypods.load("other", root=root) as other:
        assert other.stash(7777) == "stashed"  # waits, unclaimed, on the other pod's socket
        with within(), pytest.raises(pypods.PodProtocolError, match="no shared-memory buffer with token 7777"):
            pod.claim(7777)
        assert other.claim(7777) == b"mine" * 1000  # only its owner's frame can name it


def test_an_endless_stderr_line_is_cut(make_pod, root: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pypods.pod")
    with hostile_pod(make_pod, root, log="logging") as pod:
        assert pod.endless_line(32) == 32
        deadline = time.monotonic() + DEADLINE
        while "after the long line" not in caplog.messages and time.monotonic() < deadline:
            time.sleep(0.05)
    lines = [message for message in caplog.messages if message.startswith("z")]
    assert lines == ["z" * process.MAX_LINE + process.CUT_MARK]
    assert "after the long line" in caplog.messages


def test_the_crash_report_tail_is_bounded(make_pod, root: Path) -> None:
    with hostile_pod(make_pod, root) as pod, pytest.raises(pypods.PodCrashedError) as info:
        pod.long_line_then_die()
    assert "q" * 1000 in str(info.value)
    assert len(str(info.value)) < process.TAIL_BYTES + 2000


def test_killing_a_worker_kills_its_children(make_pod, root: Path) -> None:
    with hostile_pod(make_pod, root) as pod:
        child = pod.spawn_child()
        assert alive(child)
    assert wait_gone(child), "the pod's child outlived it"


def test_a_forked_child_holding_the_pipes_neither_hides_the_crash_nor_survives(
    make_pod, root: Path, tmp_path: Path
) -> None:
    pidfile = tmp_path / "child"
    with hostile_pod(make_pod, root) as pod:
        with within(), pytest.raises(pypods.PodCrashedError):
            pod.fork_and_die(str(pidfile))
        child = int(pidfile.read_text())
        assert wait_gone(child), "the forked child outlived its worker"
        assert pod.echo(2) == 2


def test_a_client_file_cannot_shadow_the_pods_standard_library(make_pod, root: Path, tmp_path: Path) -> None:
    marker = tmp_path / "imported"
    (root / "queue.py").write_text(f"open({str(marker)!r}, 'w').close()\nraise SystemExit('shadowed')\n")
    (root / "json").mkdir()
    (root / "json" / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    make_pod(
        "clean",
        """
        import json, queue
        from pods.clean import helper
        from . import helper as same

        def origins():
            return [queue.__file__, json.__file__, helper.VALUE, same is helper]
        """,
    )
    (root / "pods" / "clean" / "helper.py").write_text("VALUE = 'pod-local helper'\n")
    with pypods.load("clean", root=root) as pod:
        queue_file, json_file, value, same = pod.origins()
    assert not queue_file.startswith(str(root))
    assert not json_file.startswith(str(root))
    assert (value, same) == ("pod-local helper", True)
    assert not marker.exists()


def test_hello_files_naming_devices_fifos_and_outside_paths_are_not_read(make_pod, root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "secret"
    outside.write_text("secret")
    pod_dir = make_pod(
        "liar",
        FORGE
        + f"""
_worker().own_files = lambda: ["/dev/zero", "fifo", "../../../{outside.name}", "link", {str(outside)!r}]

def ok():
    return "ok"
""",
    )
    os.mkfifo(pod_dir / "fifo")
    (pod_dir / "link").symlink_to(outside)
    before = outside.stat().st_atime_ns
    with within(), pypods.load("liar", root=root) as pod:
        assert pod.ok() == "ok"
    assert not (pod_dir / ".pypods" / "description.bson").exists()
    assert outside.stat().st_atime_ns == before


def test_bounded_lines_keep_memory_bounded_for_an_endless_line() -> None:
    import threading

    read_end, write_end = os.pipe()

    def write() -> None:
        for _ in range(64):
            os.write(write_end, b"x" * (1 << 20))
        os.write(write_end, b"\nshort\nlast")
        os.close(write_end)

    writer = threading.Thread(target=write)
    writer.start()
    lines = list(process.bounded_lines(read_end, limit=1000))
    writer.join()
    os.close(read_end)
    assert lines == [b"x" * 1000 + process.CUT_MARK.encode(), b"short", b"last"]


@pytest.mark.parametrize(
    "name", ["/dev/zero", "/etc/passwd", "../other/pod.py", "fifo", "link_out", "sub/../../x", "a\0b", "", "dir"]
)
def test_hello_file_names_outside_regular_pod_files_are_refused(tmp_path: Path, name: str) -> None:
    from pypods._env import cache
    from pypods._env.layout import PodLayout

    layout = PodLayout("p", tmp_path)
    layout.pod_dir.mkdir(parents=True)
    layout.pod_py.write_text("x = 1\n")
    (layout.pod_dir / "helper.py").write_text("y = 2\n")
    (layout.pod_dir / "dir").mkdir()
    os.mkfifo(layout.pod_dir / "fifo")
    (layout.pod_dir / "link_out").symlink_to("/etc/passwd")
    with within(2.0):
        assert cache._digest(layout, "key", [name]) is None
    assert cache._digest(layout, "key", ["helper.py"]) is not None


def test_hello_file_lists_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pypods._env import cache
    from pypods._env.layout import PodLayout

    layout = PodLayout("p", tmp_path)
    layout.pod_dir.mkdir(parents=True)
    layout.pod_py.write_text("x = 1\n")
    (layout.pod_dir / "big.py").write_bytes(b"#" * 5000)
    assert cache._digest(layout, "key", ["pod.py"] * (cache.MAX_FILES + 1)) is None
    monkeypatch.setattr(cache, "MAX_BYTES", 4000)
    assert cache._digest(layout, "key", ["big.py"]) is None


ECHO = """
import hashlib, os

def digest(value):
    return hashlib.sha256(value).hexdigest()

def shm_segments(client):
    mine = ("pypods-%d-" % client, "pypods-%d-" % os.getpid())
    return [name for name in os.listdir("/dev/shm") if name.startswith(mine)]

def memfds():
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink("/proc/self/fd/" + fd).startswith("/memfd:"):
                found.append(fd)
        except OSError:
            pass
    return found

def echo(value):
    return value
"""


@pytest.mark.parametrize("workers", [1, 2])
def test_concurrent_big_buffers_each_get_their_own_bytes(
    make_pod, root: Path, workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hashlib
    import random
    from concurrent.futures import ThreadPoolExecutor

    make_pod("big", ECHO)
    fds = open_fds()
    sent, taken = [], []
    monkeypatch.setattr(sharedmem.FdChannel, "try_send", counting(sharedmem.FdChannel.try_send, sent))
    monkeypatch.setattr(sharedmem.Inbox, "claim", counting(sharedmem.Inbox.claim, taken))

    def one(pod: pypods.Pod, seed: int) -> bool:
        rng = random.Random(seed)
        data = rng.randbytes(rng.randint(1 << 20, 4 << 20))
        back = pod.echo(data)
        nothing_named = pod.shm_segments(os.getpid()) == []  # while other threads' buffers are in flight
        return pod.digest(data) == hashlib.sha256(data).hexdigest() and back == data and nothing_named

    with pypods.load("big", root=root, workers=workers) as pod, ThreadPoolExecutor(8) as pool:
        for round_ in range(3):
            assert all(pool.map(lambda seed: one(pod, seed), range(round_ * 8, round_ * 8 + 8)))
        assert [pod.memfds() for _ in range(workers * 3)] == [[]] * (workers * 3)  # no worker keeps one
    assert len(sent) == 48  # every argument went through a memfd (echo and digest) ...
    assert len(taken) == 24  # ... and so did every echoed reply
    assert open_fds() <= fds
    assert shm_names({os.getpid()}) == set()


def counting(method, calls: list):
    """Count the calls of *method* that did something (a send the socket had room for)."""

    def wrapper(*args, **kwargs):
        result = method(*args, **kwargs)
        if result is not False:
            calls.append(1)
        return result

    return wrapper


def test_concurrent_big_buffers_from_asyncio_tasks(make_pod, root: Path) -> None:
    import asyncio
    import hashlib

    make_pod("abig", ECHO)

    async def main() -> list[bool]:
        async with await pypods.aload("abig", root=root, workers=2) as pod:

            async def one(seed: int) -> bool:
                data = bytes([seed]) * ((1 << 20) + seed * 65537)
                back = await pod.echo(data)
                return back == data and await pod.digest(data) == hashlib.sha256(data).hexdigest()

            return list(await asyncio.gather(*(one(seed) for seed in range(8))))

    assert asyncio.run(main()) == [True] * 8


def test_numpy_arrays_cross_through_memfds_and_are_mapped_in_place(tmp_path: Path) -> None:
    import mmap
    import sys

    np = pytest.importorskip("numpy")
    from pypods._client.connection import ProcessConnection

    pod_dir = tmp_path / "pods" / "arr"
    pod_dir.mkdir(parents=True)
    (pod_dir / "pod.py").write_text("def double(a):\n    return a * 2\n")
    # The client's own interpreter has numpy (dev extra): a pod without a venv of its own, offline.
    connection = ProcessConnection(process.WorkerProcess(sys.executable, "arr", str(pod_dir), str(tmp_path)))
    try:
        array = np.random.default_rng(0).random((1024, 1024))  # 8 MiB each way
        back = connection.call("double", (array,), {}, 30.0)
        np.testing.assert_array_equal(back, array * 2)
        base = back
        while isinstance(base, np.ndarray):
            base = base.base
        assert isinstance(base, memoryview)
        assert isinstance(base.obj, mmap.mmap)  # read in place from the sealed memfd, not copied
        assert back.flags.writeable
    finally:
        connection.close()


@pytest.mark.parametrize("ending", ["exit", "SIGKILL"])
def test_a_pods_children_do_not_outlive_its_client(make_pod, root: Path, ending: str) -> None:
    import signal
    import subprocess
    import sys

    make_pod("hostile", HOSTILE)
    code = (
        "import sys, pypods\n"
        f"pod = pypods.load('hostile', root={str(root)!r})\n"
        "print(pod.spawn_child(), flush=True)\n"
        "sys.stdin.readline()\n"
    )
    client = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert client.stdout is not None
    child = int(client.stdout.readline())
    assert alive(child)
    if ending == "SIGKILL":
        client.send_signal(signal.SIGKILL)
    client.communicate("\n", timeout=DEADLINE)
    assert wait_gone(child), "the pod's child outlived the client"


def test_a_worker_killed_with_buffers_in_flight_leaves_nothing(make_pod, root: Path) -> None:
    with hostile_pod(make_pod, root) as pod:
        with within(), pytest.raises(pypods.PodCrashedError):
            pod.die_with([os.urandom(2 << 20), os.urandom(3 << 20)])
        assert pod.echo(b"x" * (2 << 20)) == b"x" * (2 << 20)


def test_without_memfds_big_buffers_travel_inline(make_pod, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sharedmem, "supported", lambda: False)
    sent: list = []
    monkeypatch.setattr(sharedmem.FdChannel, "try_send", counting(sharedmem.FdChannel.try_send, sent))
    with hostile_pod(make_pod, root) as pod:
        data = os.urandom(3 << 20)
        assert pod.echo(data) == data
        assert pod.echo(bytearray(data)) == bytearray(data)
    assert sent == []


def test_a_pods_package_of_the_project_runs_and_its_failure_is_the_load_error(make_pod, root: Path) -> None:
    make_pod("withinit", "import pods\n\ndef marker():\n    return pods.MARKER\n")
    (root / "pods" / "__init__.py").write_text("MARKER = 'project pods package'\n")
    with pypods.load("withinit", root=root) as pod:
        assert pod.marker() == "project pods package"
    (root / "pods" / "__init__.py").write_text("raise LookupError('broken pods package')\n")
    with pytest.raises(LookupError, match="broken pods package"), pypods.load("withinit", root=root) as pod:
        pod.marker()
