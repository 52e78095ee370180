"""Seven threads of mixed calls (small, big both ways, streams read whole or dropped, timeouts) on a pool
of two, while the main thread is Ctrl-C'd every few milliseconds: every call ends in its value or a
``PodWorkerError``, nothing hangs, and no descriptor leaks (``filterwarnings = error`` turns a leaked
pipe's ResourceWarning into a failure)."""

from __future__ import annotations

import random
import signal
import threading
import time
import traceback
from typing import TYPE_CHECKING, Any

import pytest

import pypods

if TYPE_CHECKING:
    from pathlib import Path

    from conftest import PodFactory

SOURCE = """
import time

def echo(x):
    return x

def big(n):
    return b"b" * n

def gen(n):
    for i in range(n):
        yield i

def slow(s):
    time.sleep(s)
    return s
"""

MiB = 1 << 20
SECONDS = 4.0


def _one(pod: Any, rng: random.Random, bad: list[str]) -> None:
    kind = rng.randrange(7)
    try:
        if kind == 0:
            value = rng.random()
            assert pod.echo(value) == value
        elif kind == 1:
            data = bytes([rng.randrange(256)]) * (rng.choice([1, 3, 9]) * MiB)
            assert pod.echo(data) == data
        elif kind == 2:
            n = rng.choice([1, 5, 8]) * MiB
            assert pod.big(n) == b"b" * n
        elif kind == 3:
            n = rng.randrange(300)
            assert list(pod.gen(n)) == list(range(n))
        elif kind == 4:
            items = pod.gen(1000)
            for expected, item in zip(range(rng.randrange(50)), items):
                assert item == expected
            if rng.random() < 0.5:
                items.close()
            del items
        elif kind == 5:
            with pytest.raises(pypods.PodTimeoutError):
                pod.call("slow", 0.3, timeout=0.05)
        else:
            data = b"z" * (4 * MiB)
            try:
                assert pod.call("echo", data, timeout=0.002) == data
            except pypods.PodTimeoutError:
                pass
    except pypods.PodWorkerError:  # killed by another call's timeout, or its Ctrl-C mid-write
        pass
    except KeyboardInterrupt:
        raise
    except BaseException:
        bad.append(f"kind {kind}: {traceback.format_exc()}")


@pytest.mark.slow
@pytest.mark.xfail(
    strict=False,
    reason=(
        "about 1 run in 12 one of the seven threads still hangs (past the 60 s join; not reproduced under "
        "faulthandler in 10 more runs, so not yet located). Suspects: a Ctrl-C landing inside a `with lock:` "
        "or the `finally` of WorkerPool.call (busy count or the brake's probe never released)"
    ),
)
# A Ctrl-C that lands in a finalizer (a dropped stream's __del__) is lost: CPython ignores what __del__ raises.
@pytest.mark.filterwarnings("ignore:Exception ignored in. <function .*__del__")
def test_seven_threads_and_a_ctrl_c_storm_end_every_call_in_time(make_pod: PodFactory, root: Path) -> None:
    make_pod("storm", SOURCE)
    bad: list[str] = []
    stop = time.monotonic() + SECONDS
    with pypods.load("storm", root=root, progress=False, workers=2) as pod:

        def loop(seed: int) -> None:
            rng = random.Random(seed)
            while time.monotonic() < stop and len(bad) < 3:
                _one(pod, rng, bad)

        threads = [threading.Thread(target=loop, args=(seed,)) for seed in range(7)]
        for thread in threads:
            thread.start()

        def interrupt(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGALRM, interrupt)
        rng = random.Random(99)
        try:
            while time.monotonic() < stop and len(bad) < 3:
                signal.setitimer(signal.ITIMER_REAL, rng.uniform(0.001, 0.05))
                try:
                    while time.monotonic() < stop + 5:  # a Ctrl-C lost in a finalizer: not a hang
                        _one(pod, rng, bad)
                except KeyboardInterrupt:
                    pass
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
        finally:
            signal.signal(signal.SIGALRM, previous)
        for thread in threads:
            thread.join(60)
            assert not thread.is_alive(), "a call hung"
        assert pod.echo(12.5) == 12.5
    assert not bad, "\n".join(bad)
