"""Run pytest so that Ctrl-C or SIGTERM stops everything the suite started: workers, uv, a local Ray.

pytest runs in its own session; a signal to this runner is passed on to it (SIGINT first, so fixtures
tear down, then SIGKILL to its process group), and finally every process that carries this run's
marker in its environment (Ray's daemons start their own sessions, but inherit the environment) is
killed. Usage: python .ci/testrun.py [pytest arguments]
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

MARK = "MAKE_TEST_RUN_ID"  # not PYPODS_*: the suite and pypods clear those, and children must inherit it
GRACE = 20.0


def ours(token: str) -> list[int]:
    """Pids of live processes whose environment carries *token* (Linux /proc; elsewhere none)."""
    needle = f"{MARK}={token}".encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        pid = int(entry.name)
        if pid == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(pid)
        except OSError:
            continue
    return found


def sweep(token: str) -> int:
    pids = ours(token)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return len(pids)


def main() -> int:
    token = uuid.uuid4().hex
    env = {**os.environ, MARK: token}
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "pytest", *sys.argv[1:]], env=env, start_new_session=True)
    stopping: list[float] = []  # the time of each stop signal
    received: list[int] = []

    def stop(signum: int, _frame: object) -> None:
        received.append(signum)
        stopping.append(time.monotonic())
        try:
            os.kill(proc.pid, signal.SIGINT)  # pytest stops and runs its teardown (ray.shutdown, pod.close)
        except OSError:
            pass

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    while proc.poll() is None:
        if stopping and (len(stopping) > 1 or time.monotonic() - stopping[0] > GRACE):
            break  # a second signal, or teardown takes too long
        time.sleep(0.2)
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # whatever of pytest's session is left
    except OSError:
        pass
    code = proc.wait()
    left = sweep(token)
    if left:
        print(f"make test: stopped {left} process(es) the suite left running", file=sys.stderr)
    minutes = (time.monotonic() - started) / 60
    if received:
        print(f"make test: interrupted after {minutes:.1f} min; everything it started is stopped", file=sys.stderr)
        return 128 + received[0]
    print(f"make test: took {minutes:.1f} min", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
