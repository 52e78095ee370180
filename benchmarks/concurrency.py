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

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peers
from common import arguments, fmt_time, measured_on, median, publish, rate, table
from run import make_project

import pypods

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


def main(argv: list[str] | None = None) -> int:
    args = arguments(__doc__, argv)
    total = 400 if args.quick else 20000
    cpu_total = 4 if args.quick else 40
    base = Path(tempfile.mkdtemp(prefix="pypods-bench-"))
    make_project(base, "conc", POD)
    rows = []
    try:
        for workers in (1, 2):
            with pypods.load("conc", root=base, workers=workers, start="eager") as pod, \
                    concurrent.futures.ProcessPoolExecutor(workers) as executor:  # fmt: skip
                executor.submit(peers.add, 0, 0).result()
                for threads in (1, 2, 4, 8):
                    ours = rate(lambda: pod.add(1, 2), threads, total)
                    theirs = rate(lambda: executor.submit(peers.add, 1, 2).result(), threads, total)
                    rows.append([f"add(1, 2), {threads} threads", str(workers), f"{ours:,.0f}/s", f"{theirs:,.0f}/s",
                                 f"{ours / theirs:.1f}x"])  # fmt: skip
                ours = rate(lambda: pod.spin(SPIN), 2, cpu_total)
                theirs = rate(lambda: executor.submit(peers.spin, SPIN).result(), 2, cpu_total)
                rows.append([f"CPU-bound spin({SPIN:,}), 2 threads", str(workers), f"{ours:,.1f}/s", f"{theirs:,.1f}/s",
                             f"{ours / theirs:.1f}x"])  # fmt: skip
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
    body = measured_on() + table(["load", "workers", "pod", "ProcessPoolExecutor", "pod / executor"], rows)
    body += f"\nWorker killed (SIGKILL) mid-call to `PodCrashedError` in the caller: median {fmt_time(median(delays))}"
    body += f", max {fmt_time(max(delays))} ({len(delays)} kills).\n"
    publish(args.write, "Concurrency", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
