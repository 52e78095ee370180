"""Throughput from many threads and with pools, against ProcessPoolExecutor, and how fast a crash is seen.

python benchmarks/concurrency.py [--quick] [--write docs/performance.md]
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peers
from common import arguments, fmt_time, measured_on, median, publish, rate, table
from run import make_project

import pypods

if TYPE_CHECKING:
    from collections.abc import Callable

POD = """
import os, time

def add(a, b):
    return a + b

def spin(n):
    total = 0
    for i in range(n):
        total += i * i
    return total

def sleep(s):
    time.sleep(s)
"""
SPIN = 200_000


def rates(contenders: dict[str, Callable[[], object]], threads: int, total: int, rounds: int) -> dict[str, float]:
    """Median calls/s of each contender over *rounds* interleaved rounds of *total* calls from *threads* threads."""
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, call in contenders.items():
            samples[name].append(rate(call, threads, total))
    return {name: median(values) for name, values in samples.items()}


def main(argv: list[str] | None = None) -> int:
    args = arguments(__doc__, argv)
    total = 200 if args.quick else 4000
    cpu_total = 4 if args.quick else 20
    rounds = 2 if args.quick else 5
    base = Path(tempfile.mkdtemp(prefix="pypods-bench-"))
    make_project(base, "conc", POD)
    rows = []
    try:
        for workers in (1, 2):
            with pypods.load("conc", root=base, workers=workers, start="eager") as pod, \
                    concurrent.futures.ProcessPoolExecutor(workers) as executor:  # fmt: skip
                executor.submit(peers.add, 0, 0).result()
                for threads in (1, 2, 4, 8):
                    got = rates(
                        {"pod": lambda: pod.add(1, 2), "executor": lambda: executor.submit(peers.add, 1, 2).result()},
                        threads,
                        total,
                        rounds,
                    )
                    rows.append([f"add(1, 2), {threads} threads", str(workers), f"{got['pod']:,.0f}/s",
                                 f"{got['executor']:,.0f}/s", f"{got['pod'] / got['executor']:.1f}x"])  # fmt: skip
                got = rates(
                    {"pod": lambda: pod.spin(SPIN), "executor": lambda: executor.submit(peers.spin, SPIN).result()},
                    2,
                    cpu_total,
                    rounds,
                )
                rows.append([f"CPU-bound spin({SPIN:,}), 2 threads", str(workers), f"{got['pod']:,.1f}/s",
                             f"{got['executor']:,.1f}/s", f"{got['pod'] / got['executor']:.1f}x"])  # fmt: skip
        # Death to PodCrashedError: SIGKILL the worker while a call waits on it.
        delays = []
        for _ in range(3 if args.quick else 10):  # a fresh pod each time: 10 kills would trip the crash brake
            with pypods.load("conc", root=base, start="eager") as pod:
                pid = pod.pids()[0]
                killed_at: list[float] = []

                def kill(victim: int = pid, stamp: list[float] = killed_at) -> None:
                    time.sleep(0.2)
                    stamp.append(time.perf_counter())
                    os.kill(victim, signal.SIGKILL)

                threading.Thread(target=kill).start()
                try:
                    pod.sleep(30)
                except pypods.PodCrashedError:
                    delays.append(time.perf_counter() - killed_at[0])
    finally:
        shutil.rmtree(base, ignore_errors=True)
    body = measured_on(f"; medians of {rounds} interleaved rounds")
    body += table(["load", "workers", "pod", "ProcessPoolExecutor", "pod / executor"], rows)
    body += f"\nWorker killed (SIGKILL) mid-call to `PodCrashedError` in the caller: median {fmt_time(median(delays))}"
    body += f", max {fmt_time(max(delays))} ({len(delays)} kills).\n"
    publish(args.write, "Concurrency", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
