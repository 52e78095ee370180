"""A client that forks (os.fork, multiprocessing, gunicorn --preload), and processes that try to outlive the pod.

Every fork runs in a client script of its own (a forked pytest would run the rest of the session
twice); each script prints one JSON line per process and the test checks every value.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

import pypods
from pypods._client import cgroups

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

FORKS = """
import os, subprocess, sys, time

HELPERS = []  # Popen objects kept, so the pod does not reap (or warn about) its helpers

def add(a, b):
    return a + b

def pid():
    return os.getpid()

def sleep(seconds):
    time.sleep(seconds)
    return seconds

def exit_now(code):
    os._exit(code)

def cgroup():
    with open("/proc/self/cgroup") as handle:
        return [line.strip()[3:] for line in handle if line.startswith("0::")][0]

def helper(how):
    \"\"\"Start a `sleep 300` that leaves the worker's process group; return its pid.\"\"\"
    if how == "setsid":
        HELPERS.append(subprocess.Popen(["sleep", "300"], start_new_session=True))
        return HELPERS[-1].pid
    if how == "setpgid":
        HELPERS.append(subprocess.Popen(["sleep", "300"], preexec_fn=lambda: os.setpgid(0, 0)))
        return HELPERS[-1].pid
    # a daemon: fork, setsid, fork again, the middle one exits (the grandchild is an orphan)
    r, w = os.pipe()
    first = os.fork()
    if first == 0:
        os.setsid()
        if os.fork() == 0:
            os.write(w, str(os.getpid()).encode())
            os.execvp("sleep", ["sleep", "300"])
        os._exit(0)
    os.close(w)
    os.waitpid(first, 0)
    data = os.read(r, 32)
    os.close(r)
    return int(data)
"""

HEAD = """
import asyncio, json, os, sys, threading, time
import pypods
ROOT = {root!r}
"""


@pytest.fixture
def forks(make_pod, root: Path) -> Path:
    make_pod("forks", FORKS)
    return root


def run_script(root: Path, body: str, timeout: float = 120) -> list[dict[str, Any]]:
    """Run a client script; return the JSON lines it (and its children) printed."""
    code = textwrap.dedent(HEAD.format(root=str(root))) + textwrap.dedent(body)
    script = root / "client.py"
    script.write_text(code)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=timeout, cwd=str(root))
    assert proc.returncode == 0, f"client failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, proc.stderr
    return lines


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def kill_quietly(*pids: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


# -- os.fork -----------------------------------------------------------------------------------

CONCURRENT = """
pod = pypods.load("forks", root=ROOT, workers={workers}, start="eager")
pod.add(0, 0)
parent_pids = sorted(pod.pids())
DURATION = 3.0

def hammer(base, errors, counts):
    n = 0
    end = time.monotonic() + DURATION
    while time.monotonic() < end:
        n += 1
        try:
            got = pod.add(base, n)
        except Exception as exc:
            errors.append(repr(exc))
            return
        if got != base + n:
            errors.append("%d + %d gave %r" % (base, n, got))
    counts.append(n)

def run(bases):
    errors, counts = [], []
    threads = [threading.Thread(target=hammer, args=(base, errors, counts)) for base in bases]
    for thread in threads:
        thread.start()
    return threads, errors, counts

# Threads of the parent are in the middle of calls (holding locks, reading pipes) when it forks.
threads, errors, counts = run([10**6, 2 * 10**6, 3 * 10**6])
time.sleep(0.5)
sys.stdout.flush()
child = os.fork()
if child == 0:
    try:
        mine, child_errors, child_counts = run([-(10**6), -2 * 10**6])
        for thread in mine:
            thread.join()
        ours = sorted(pod.pids())
        print(json.dumps({{"who": "child", "errors": child_errors, "counts": child_counts, "pids": ours,
                          "parent_pids": parent_pids}}), flush=True)
        pod.close()
        os._exit(0)
    except BaseException:
        import traceback
        traceback.print_exc()
        os._exit(2)
for thread in threads:
    thread.join()
_, status = os.waitpid(child, 0)
print(json.dumps({{"who": "parent", "errors": errors, "counts": counts, "pids": sorted(pod.pids()),
                  "before": parent_pids, "child_status": status, "after": pod.add(40, 2)}}), flush=True)
pod.close()
"""


@pytest.mark.timeout(150)
@pytest.mark.parametrize("workers", [1, 2])
def test_fork_while_calls_are_in_flight_parent_and_child_get_their_own_values(forks: Path, workers: int) -> None:
    lines = {line["who"]: line for line in run_script(forks, CONCURRENT.format(workers=workers))}
    parent, child = lines["parent"], lines["child"]
    assert parent["errors"] == [], parent
    assert len(parent["counts"]) == 3, parent
    assert child["errors"] == [], child
    assert len(child["counts"]) == 2, child
    assert min(parent["counts"] + child["counts"]) > 10  # both kept calling for the whole time
    assert parent["child_status"] == 0
    assert parent["pids"] == parent["before"]  # the parent never noticed
    assert len(parent["pids"]) == workers
    assert parent["after"] == 42
    assert child["pids"]
    assert not set(child["pids"]) & set(parent["before"])  # the child's own workers


EXITS = """
pod = pypods.load("forks", root=ROOT)
first = pod.pid()
seen = []
for i in range(10):
    sys.stdout.flush()
    child = os.fork()
    if child == 0:
        if i % 2 and pod.pid() == first:  # half of them call first: on a worker of their own
            os._exit(3)
        sys.exit(0)  # atexit handlers and finalizers run, as in a gunicorn or multiprocessing child
    _, status = os.waitpid(child, 0)
    seen.append([os.waitstatus_to_exitcode(status), pod.pid()])
print(json.dumps({"first": first, "seen": seen, "sum": pod.add(2, 3)}), flush=True)
pod.close()
"""


@pytest.mark.timeout(150)
def test_children_that_exit_leave_the_parents_worker_alone(forks: Path) -> None:
    (result,) = run_script(forks, EXITS)
    assert result["seen"] == [[0, result["first"]]] * 10  # same worker: never killed, no crash loop
    assert result["sum"] == 5


IDLE = """
pod = pypods.load("forks", root=ROOT, idle_timeout=0.5)
first = pod.pid()
sys.stdout.flush()
child = os.fork()
if child == 0:
    try:
        mine = pod.pid()
        time.sleep(3)  # the child's own idle reaper (a thread: threads do not survive a fork) stops it
        print(json.dumps({"who": "child", "first": first, "mine": mine, "after": pod.pids()}), flush=True)
        pod.close()
        os._exit(0)
    except BaseException:
        import traceback
        traceback.print_exc()
        os._exit(2)
_, status = os.waitpid(child, 0)
print(json.dumps({"who": "parent", "status": status, "after": pod.pids(), "sum": pod.add(1, 1)}), flush=True)
pod.close()
"""


@pytest.mark.timeout(150)
def test_a_forked_child_has_an_idle_reaper_of_its_own(forks: Path) -> None:
    lines = {line["who"]: line for line in run_script(forks, IDLE)}
    parent, child = lines["parent"], lines["child"]
    assert child["mine"] != child["first"]
    assert child["after"] == []
    assert parent["status"] == 0
    assert parent["after"] == []  # idle too by then
    assert parent["sum"] == 2


ASYNC = """
loop = asyncio.new_event_loop()
pod = loop.run_until_complete(pypods.aload("forks", root=ROOT))
first = loop.run_until_complete(pod.pid())
sys.stdout.flush()
child = os.fork()
if child == 0:
    try:
        async def child_main():
            values = await asyncio.gather(*(pod.add(i, -1) for i in range(50)))
            mine = await pod.pid()
            await pod.aclose()
            return values, mine
        values, mine = asyncio.new_event_loop().run_until_complete(child_main())  # the child's own loop
        print(json.dumps({"who": "child", "ok": values == [i - 1 for i in range(50)], "pid": mine}), flush=True)
        os._exit(0)
    except BaseException:
        import traceback
        traceback.print_exc()
        os._exit(2)
async def parent_main():
    values = await asyncio.gather(*(pod.add(i, 1) for i in range(50)))
    return values == [i + 1 for i in range(50)], await pod.pid()
_, status = os.waitpid(child, 0)
ok, now = loop.run_until_complete(parent_main())
print(json.dumps({"who": "parent", "ok": ok, "first": first, "pid": now, "status": status}), flush=True)
loop.run_until_complete(pod.aclose())
"""


@pytest.mark.timeout(150)
def test_async_pod_in_a_forked_child_starts_its_own_worker_on_its_own_loop(forks: Path) -> None:
    lines = {line["who"]: line for line in run_script(forks, ASYNC)}
    parent, child = lines["parent"], lines["child"]
    assert parent["ok"]
    assert child["ok"]
    assert parent["status"] == 0
    assert parent["pid"] == parent["first"]
    assert child["pid"] != parent["first"]


INHERITED_LOOP = """
async def main():
    loop = asyncio.get_running_loop()
    pod = await pypods.aload("forks", root=ROOT)
    first = await pod.pid()
    sys.stdout.flush()
    child = os.fork()
    if child == 0:
        # The child goes on running the inherited loop (asyncio does not support this, but it
        # happens): it must not read the parent's pipes, whose readiness its shared epoll reports.
        try:
            done = loop.create_future()
            loop.call_later(1.5, done.set_result, None)
            await done
        finally:
            os._exit(0)
    add = pod.add.with_options(timeout=10)
    values, end = [], time.monotonic() + 1.5
    while time.monotonic() < end:
        values.append(await add(len(values), 1))
    _, status = os.waitpid(child, 0)
    ok = values == [i + 1 for i in range(len(values))]
    print(json.dumps({"ok": ok, "calls": len(values), "first": first, "pid": await pod.pid(), "status": status}))
    await pod.aclose()

asyncio.run(main())
"""


@pytest.mark.timeout(150)
def test_a_child_running_the_inherited_loop_never_reads_the_parents_pipes(forks: Path) -> None:
    (result,) = run_script(forks, INHERITED_LOOP)
    assert result["ok"]
    assert result["calls"] > 10
    assert result["pid"] == result["first"]
    assert result["status"] == 0


# -- multiprocessing ----------------------------------------------------------------------------

POOL = """
import multiprocessing

pod = pypods.load("forks", root=ROOT)
first = pod.pid()

def task(x):
    return pod.add(x, 1), pod.pid(), os.getpid()

if __name__ == "__main__":
    with multiprocessing.get_context("fork").Pool(3, maxtasksperchild=20) as pool:  # children exit and respawn
        results = pool.map(task, range(300), chunksize=5)
        pool.close()
        pool.join()
    bad = [(x, got) for x, (got, _, _) in enumerate(results) if got != x + 1]
    print(json.dumps({"bad": bad, "first": first, "now": pod.pid(), "workers": sorted({w for _, w, _ in results}),
                      "children": len({c for _, _, c in results})}), flush=True)
    pod.close()
"""


@pytest.mark.timeout(200)
def test_multiprocessing_fork_pool_uses_a_pod_loaded_in_the_parent(forks: Path) -> None:
    (result,) = run_script(forks, POOL, timeout=180)
    assert result["bad"] == []
    assert result["now"] == result["first"]
    assert result["first"] not in result["workers"]  # each child started its own worker
    assert result["children"] > 1


# -- gunicorn --preload ---------------------------------------------------------------------------

APP = """
import json, os
import pypods

POD = pypods.load("forks", root={root!r})
MASTER_WORKER = POD.pid()  # started in the master, before gunicorn forks its workers

def app(environ, start_response):
    n = int(environ.get("QUERY_STRING") or 0)
    body = json.dumps({{"sum": POD.add(n, 1), "pid": os.getpid(), "worker": POD.pid(),
                        "master_worker": MASTER_WORKER}}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_gunicorn_preload_with_4_workers(forks: Path, tmp_path: Path) -> None:
    pytest.importorskip("gunicorn")
    pypods.load("forks", root=forks).close()  # build the environment before gunicorn's timeouts apply
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "podapp.py").write_text(textwrap.dedent(APP.format(root=str(forks))))
    port = free_port()
    log = (tmp_path / "gunicorn.log").open("w")
    argv = [sys.executable, "-m", "gunicorn", "--preload", "--workers", "4", "--bind", f"127.0.0.1:{port}",
            "--chdir", str(app_dir), "--worker-tmp-dir", str(tmp_path), "--no-control-socket",
            "--max-requests", "25", "podapp:app"]  # fmt: skip
    server = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=str(app_dir))
    seen: list[dict[str, Any]] = []
    try:
        url = f"http://127.0.0.1:{port}/?"
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url + "0", timeout=10).read()
                break
            except OSError:
                assert server.poll() is None, (tmp_path / "gunicorn.log").read_text()
                assert time.monotonic() < deadline, (tmp_path / "gunicorn.log").read_text()
                time.sleep(0.2)
        failures: list[str] = []
        lock = threading.Lock()

        def client(start: int) -> None:
            for n in range(start, start + 60):
                try:
                    reply = json.loads(urllib.request.urlopen(url + str(n), timeout=30).read())
                except Exception as exc:  # a failed request is a failure too, not a crash of the test
                    with lock:
                        failures.append(f"{n}: {exc!r}")
                    continue
                with lock:
                    seen.append(reply)
                    if reply["sum"] != n + 1:
                        failures.append(f"{n}: {reply}")

        threads = [threading.Thread(target=client, args=(1000 * i,)) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures == [], failures
        assert len(seen) == 360
        master_worker = seen[0]["master_worker"]
        assert {reply["master_worker"] for reply in seen} == {master_worker}
        assert master_worker not in {reply["worker"] for reply in seen}  # each worker has its own
        assert len({reply["pid"] for reply in seen}) > 4  # --max-requests: workers exited and were replaced
        assert alive(master_worker)  # none of the exits touched the master's worker
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        finally:
            kill_quietly(server.pid)
            log.close()
    pod_workers = {reply["worker"] for reply in seen} | {reply["master_worker"] for reply in seen}
    stray = [pid for pid in pod_workers if not gone(pid, 10)]
    kill_quietly(*stray)
    assert stray == []


# -- processes that leave the worker's group ---------------------------------------------------


@pytest.fixture(params=["walk", "cgroup"])
def killing(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways of ending a worker's tree: the subreaper walk alone, and cgroup.kill where we may."""
    if request.param == "walk":
        monkeypatch.setattr(cgroups, "_base", None)
    elif cgroups.probe() is None:
        pytest.skip("this user may not make cgroups here")
    return str(request.param)


@pytest.mark.usefixtures("killing")
@pytest.mark.parametrize("how", ["setsid", "setpgid", "daemon"])
def test_helpers_that_leave_the_group_end_with_close(forks: Path, how: str) -> None:
    pod = pypods.load("forks", root=forks)
    helper = pod.helper(how)
    try:
        assert alive(helper)
        pod.close()
        assert gone(helper, 10), f"{how} helper {helper} outlived close()"
    finally:
        pod.close()
        kill_quietly(helper)


@pytest.mark.usefixtures("killing")
@pytest.mark.parametrize("how", ["setsid", "daemon"])
def test_helpers_end_when_the_worker_is_killed(forks: Path, how: str) -> None:
    with pypods.load("forks", root=forks) as pod:
        helper = pod.helper(how)
        try:
            with pytest.raises(pypods.PodTimeoutError):
                pod.sleep.with_options(timeout=0.5)(30)  # the worker is killed, not stopped
            assert gone(helper, 10), f"{how} helper {helper} outlived its killed worker"
        finally:
            kill_quietly(helper)


needs_cgroup = pytest.mark.skipif(cgroups.probe() is None, reason="this user may not make cgroups here")


@needs_cgroup
def test_each_worker_runs_in_a_cgroup_of_its_own(forks: Path) -> None:
    with pypods.load("forks", root=forks, workers=2, start="eager") as pod:
        workers = sorted(pod.pids())
        paths = {pod.call("cgroup") for _ in range(4)}
    base = cgroups.probe()
    assert base is not None
    assert all(path.rsplit("/", 2)[1] == f"pypods-{os.getpid()}" for path in paths)
    assert {int(path.rsplit("/", 1)[1]) for path in paths} <= set(workers)
    assert not any((base / str(pid)).exists() for pid in workers)  # removed with the worker


@needs_cgroup
@pytest.mark.parametrize("how", ["setsid", "daemon"])
def test_helpers_of_a_worker_that_died_end_with_it(forks: Path, how: str) -> None:
    with pypods.load("forks", root=forks) as pod:
        helper = pod.helper(how)
        try:
            with pytest.raises(pypods.PodCrashedError):
                pod.exit_now(1)  # no worker is left to end them, no walk can find them: only the cgroup
            assert gone(helper, 10), f"{how} helper {helper} outlived its dead worker"
        finally:
            kill_quietly(helper)


# -- the last reference ------------------------------------------------------------------------


@pytest.fixture
def no_gc() -> Any:
    """No cyclic garbage collection during the test: only reference counting may end a pod."""
    import gc

    gc.collect()
    gc.disable()
    yield
    gc.enable()


@pytest.mark.usefixtures("no_gc")
def test_dropping_the_pod_and_its_proxies_stops_the_workers_without_gc(forks: Path) -> None:
    pod = pypods.load("forks", root=forks, workers=2, start="eager")
    f = pod.add
    assert f(1, 2) == 3
    workers = pod.pids()
    assert len(workers) == 2
    del pod
    assert f(2, 2) == 4  # a proxy keeps its pod
    assert all(alive(pid) for pid in workers)
    del f
    stray = [pid for pid in workers if not gone(pid, 10)]
    kill_quietly(*stray)
    assert stray == [], "the workers outlived the last reference to their pod"


@pytest.mark.usefixtures("no_gc")
def test_dropping_an_async_pod_and_its_proxies_stops_the_workers_without_gc(forks: Path) -> None:
    async def main() -> list[int]:
        pod = await pypods.aload("forks", root=forks)
        f = pod.add
        assert await f(1, 2) == 3
        workers = pod.pids()
        del pod, f
        return workers

    workers = asyncio.run(main())
    stray = [pid for pid in workers if not gone(pid, 10)]
    kill_quietly(*stray)
    assert stray == []


def test_a_proxy_stays_the_same_object_while_held(forks: Path) -> None:
    with pypods.load("forks", root=forks) as pod:
        f = pod.add
        assert pod.add is f
        assert pod.functions["add"] is f
        assert "add" in dir(pod)
        assert pod.add.__signature__ is f.__signature__
