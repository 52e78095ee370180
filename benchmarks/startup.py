"""Worker starts of a pod whose import takes 2 s, with and without a warm template (#23).

    python benchmarks/startup.py [--quick] [--write docs/performance.md] [--import-seconds 2] [--sleep]

The pod's import spends ``--import-seconds`` of CPU (as torch or TensorFlow do; ``--sleep`` waits
instead, which lets fresh imports overlap perfectly and so flatters them) and keeps 50 MB of data.
Measured: the time until ``workers=8`` all answered (from the load), the time from a
``PodTimeoutError`` to the next answer (the replacement's start), and the memory of 8 workers: the
sum of their RSS, and of their PSS (shared pages split between the processes that share them),
which is what the machine really spends.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import arguments, fmt_time, measured_on, median, publish, table

import pypods

POD = """
import os, time
SECONDS = {seconds}
if {sleep}:
    time.sleep(SECONDS)
else:
    end = time.process_time() + SECONDS
    while time.process_time() < end:
        pass
DATA = bytearray(b"x") * (50 * 1000 * 1000)  # what a heavy import keeps: weights, tables, code

def who(delay=0.0):
    time.sleep(delay)
    return os.getpid()

def sleep(seconds):
    time.sleep(seconds)
"""


def _memory(pids: list[int]) -> tuple[int, int]:
    rss = pss = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss += int(line.split()[1]) * 1024
            elif line.startswith("Pss:"):
                pss += int(line.split()[1]) * 1024
    return rss, pss


def all_answer(root: Path, template: bool) -> tuple[float, int, int]:
    """Seconds from the load until 8 distinct workers answered; then their RSS and PSS sums."""
    began = time.monotonic()
    with pypods.load("heavy", root=root, workers=8, start="eager", template=template, progress=False) as pod:
        seen: set[int] = set()
        lock = threading.Lock()

        def ask() -> None:
            while True:
                with lock:
                    if len(seen) >= 8:
                        return
                pid = pod.who(0.02)
                with lock:
                    seen.add(pid)

        threads = [threading.Thread(target=ask) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        took = time.monotonic() - began
        rss, pss = _memory(pod.pids())
    return took, rss, pss


def after_timeout(root: Path, template: bool, repeats: int) -> list[float]:
    """Seconds from each PodTimeoutError until the next call answered."""
    gaps = []
    with pypods.load("heavy", root=root, start="eager", template=template, progress=False) as pod:
        pod.who()
        for _ in range(repeats):
            try:
                pod.call("sleep", 30, timeout=0.2)
            except pypods.PodTimeoutError:
                began = time.monotonic()
            pod.who()
            gaps.append(time.monotonic() - began)
    return gaps


def one_import(root: Path) -> float:
    began = time.monotonic()
    with pypods.load("heavy", root=root, start="eager", progress=False) as pod:
        pod.who()
    return time.monotonic() - began


def main(argv: list[str] | None = None) -> int:
    def extra(parser: object) -> None:
        parser.add_argument("--import-seconds", type=float, default=None, help="default 2 (0.2 with --quick)")  # type: ignore[attr-defined]
        parser.add_argument("--sleep", action="store_true", help="the import sleeps instead of using CPU")  # type: ignore[attr-defined]

    args = arguments(__doc__, argv, extra)
    repeats = 2 if args.quick else 5
    if args.import_seconds is None:
        args.import_seconds = 0.2 if args.quick else 2.0
    base = Path(tempfile.mkdtemp(prefix="pypods-startup-"))
    try:
        pod = base / "pods" / "heavy"
        pod.mkdir(parents=True)
        (pod / "pod.py").write_text(POD.format(seconds=args.import_seconds, sleep=args.sleep))
        (pod / "requirements.txt").write_text("")
        one_import(base)  # builds the environment
        single = one_import(base)
        rows = []
        figures = {}
        for template in (False, True):
            took, rss, pss = all_answer(base, template)
            gaps = after_timeout(base, template, repeats)
            figures[template] = (took, median(gaps))
            rows.append([
                "template" if template else "fresh workers",
                fmt_time(took), f"{took / single:.2f}x", fmt_time(median(gaps)), fmt_time(max(gaps)),
                f"{rss / 1e6:.0f} MB", f"{pss / 1e6:.0f} MB",
            ])  # fmt: skip
    finally:
        shutil.rmtree(base, ignore_errors=True)
    kind = "sleeping" if args.sleep else "CPU-bound"
    body = measured_on(
        f"; a {kind} import of {args.import_seconds:g} s plus 50 MB kept; one worker's load to first answer "
        f"{fmt_time(single)}; load average {os.getloadavg()[0]:.2f}; timeout gaps: {repeats} each"
    )
    body += table(
        ["workers from", "workers=8 all answered", "vs one load", "timeout to next answer (median)", "(max)",
         "RSS of 8", "PSS of 8"],
        rows,
    )  # fmt: skip
    body += (
        "\nGoals (#23): a replacement answers within 50 ms of the timeout; `workers=8` start within 1.5x"
        " one import. RSS counts the template's pages in every fork; PSS splits them among the sharers.\n"
    )
    publish(args.write, "Worker starts (template)", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
