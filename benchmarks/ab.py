"""A/B per-call timing of two pypods source trees, interleaved round by round on one machine.

    python benchmarks/ab.py OLD_SRC NEW_SRC [--rounds 15] [--batch 200]

Each tree (a ``src`` folder, e.g. one made by ``git worktree add`` or ``git archive HEAD~1 src``) runs in
its own driver process with that tree first on ``sys.path`` (its worker comes from the same tree). The
drivers take turns, one batch per case per round, so machine noise hits both alike; the table gives the
medians and NEW/OLD. Used to measure each optimisation of the call path (docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

POD = "def add(a, b):\n    return a + b\n\ndef echo(value):\n    return value\n"
RECORDS = [{"id": i, "name": f"item-{i}", "score": i * 0.5, "tags": ["a", "b"], "ok": i % 2 == 0} for i in range(200)]
CASES = ("add fast1", "add pickle", "records fast1", "records pickle", "floats fast1", "100KiB fast1")


def drive() -> None:
    """The driver: load the pods, then answer ``case batch`` lines with the batch's per-call times."""
    import pypods

    base = Path(tempfile.mkdtemp(prefix="pypods-ab-"))
    pod = base / "pods" / "bench"
    pod.mkdir(parents=True)
    (pod / "pod.py").write_text(POD)
    fast = pypods.load("bench", root=base, start="eager")
    pickled = pypods.load("bench", root=base, start="eager", codec="pickle")
    floats = {f"k{i}": i * 0.25 for i in range(10_000)}
    hundred = b"x" * (100 * 1024)
    calls: dict[str, Any] = {
        "add fast1": lambda: fast.add(1, 2),
        "add pickle": lambda: pickled.add(1, 2),
        "records fast1": lambda: fast.echo(RECORDS),
        "records pickle": lambda: pickled.echo(RECORDS),
        "floats fast1": lambda: fast.echo(floats),
        "100KiB fast1": lambda: fast.echo(hundred),
    }
    assert fast.echo(RECORDS) == RECORDS
    assert pickled.echo(RECORDS) == RECORDS
    print("ready", flush=True)
    clock = time.perf_counter
    for line in sys.stdin:
        name, batch = line.rsplit(" ", 1)
        call = calls[name]
        times = []
        for _ in range(int(batch)):
            began = clock()
            call()
            times.append(clock() - began)
        print(json.dumps(times), flush=True)
    fast.close()
    pickled.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old")
    parser.add_argument("new", nargs="?")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--old-env", action="append", default=[], help="KEY=VALUE for the old driver only")
    parser.add_argument("--new-env", action="append", default=[], help="KEY=VALUE for the new driver only")
    parser.add_argument("--drive", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive:
        drive()
        return 0
    trees = {"old": args.old, "new": args.new or args.old}
    drivers = {}
    for label, src in trees.items():
        extra = dict(item.split("=", 1) for item in (args.old_env if label == "old" else args.new_env))
        env = {**os.environ, **extra, "PYTHONPATH": str(Path(src).resolve())}
        drivers[label] = subprocess.Popen(
            [sys.executable, __file__, "--drive", src],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert drivers[label].stdout.readline().strip() == "ready"  # type: ignore[union-attr]
    cases = args.cases.split(",")
    samples: dict[tuple[str, str], list[float]] = {(label, case): [] for label in trees for case in cases}
    for round_ in range(args.rounds):
        for case in cases:
            order = list(trees) if round_ % 2 == 0 else list(reversed(trees))
            for label in order:
                proc = drivers[label]
                batch = args.batch if case.startswith("add") else max(args.batch // 5, 10)
                proc.stdin.write(f"{case} {batch}\n")  # type: ignore[union-attr]
                proc.stdin.flush()  # type: ignore[union-attr]
                samples[label, case] += json.loads(proc.stdout.readline())  # type: ignore[union-attr]
    for proc in drivers.values():
        proc.stdin.close()  # type: ignore[union-attr]
        proc.wait()
    print(f"{'case':<16}{'old':>12}{'new':>12}{'new/old':>10}")
    for case in cases:
        old = statistics.median(samples["old", case]) * 1e6
        new = statistics.median(samples["new", case]) * 1e6
        print(f"{case:<16}{old:>10.1f}us{new:>10.1f}us{new / old:>10.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
