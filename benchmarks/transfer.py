"""Moving big data through a pod, and the cost of the codec on a small call message, in one run.

    python benchmarks/transfer.py [--quick] [--write docs/performance.md]

Echo throughput of bytes and float64 arrays (1, 64, 512 MiB) through a pod, against two in-process
copies of the same data into new buffers (what a round trip must at least do) and a bare pipe echo.
"""

from __future__ import annotations

import math
import pickle
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from typing import TYPE_CHECKING

from common import arguments, fmt_time, measured_on, median, publish, table
from run import Floor, make_project

import pypods
from pypods._worker import codec

if TYPE_CHECKING:
    import argparse

MiB = 1 << 20


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return median(times)


def floor_echo(floor: Floor, data: bytes) -> None:
    floor.call(data)


def throughput(args: argparse.Namespace, base: Path) -> str:
    sizes = [1, 64] if args.quick else [1, 64, 512]
    repeats = 2 if args.quick else 5
    make_project(base, "echo", "def echo(value):\n    return value\n")
    rows = []
    floor = Floor()
    with pypods.load("echo", root=base) as pod:
        for size in sizes:
            data = b"\x01" * (size * MiB)
            copies = best_of(lambda: bytes(bytearray(data)), repeats)  # noqa: B023 - two copies
            through_pod = best_of(lambda: pod.echo(data), repeats)  # noqa: B023
            through_pipe = best_of(lambda: floor_echo(floor, data), repeats) if size <= 64 else float("nan")  # noqa: B023
            rate = size / through_pod
            pipe = "-" if math.isnan(through_pipe) else f"{through_pipe / through_pod:.2f}"
            rows.append(
                [f"bytes {size} MiB", fmt_time(copies), fmt_time(through_pod), f"{rate:.0f} MiB/s",
                 f"{copies / through_pod:.2f}", pipe]
            )  # fmt: skip
    floor.close()
    try:
        import numpy as np
    except ImportError:
        return table(
            ["payload", "2 in-process copies", "pod echo", "pod rate", "pod speed / copies", "pipe / pod"], rows
        )
    make_project(base, "arrays", "def echo(value):\n    return value\n")
    (base / "pods" / "arrays" / "requirements.txt").write_text("numpy\n")
    try:
        with pypods.load("arrays", root=base) as pod:
            pod.echo(np.ones(4))  # the worker imports numpy on the first array it receives
            for size in sizes:
                array = np.ones(size * MiB // 8)
                copies = best_of(lambda: array.copy().copy(), repeats)  # noqa: B023
                through_pod = best_of(lambda: pod.echo(array), repeats)  # noqa: B023
                rows.append(
                    [f"float64 array {size} MiB", fmt_time(copies), fmt_time(through_pod),
                     f"{size / through_pod:.0f} MiB/s", f"{copies / through_pod:.2f}", "-"]
                )  # fmt: skip
    except pypods.PodBuildError as exc:
        rows.append(["float64 arrays", "-", "-", "-", f"numpy could not be installed: {str(exc).splitlines()[0]}", "-"])
    return table(
        ["payload", "2 in-process copies", "pod echo", "pod rate", "pod speed / copies", "pipe time / pod"], rows
    )


def codec_cost(args: argparse.Namespace) -> str:
    message = {"id": 12345, "op": "call", "name": "area", "args": [2.5, "metres", [1, 2, 3]], "kwargs": {"pi": 3.14}}
    n = 2000 if args.quick else 50000
    contenders = {"pypods codec (BSON + extensions)": (lambda: codec.decode(bytes(codec.encode(message))))}
    contenders["pickle (protocol 5)"] = lambda: pickle.loads(pickle.dumps(message, protocol=5))
    try:
        import bson as pymongo_bson

        contenders["pymongo bson (C)"] = lambda: pymongo_bson.decode(pymongo_bson.encode(message))
    except ImportError:
        pass
    try:
        import msgpack

        contenders["msgpack"] = lambda: msgpack.unpackb(msgpack.packb(message))
    except ImportError:
        pass
    results = {}
    for _ in range(3):  # interleaved rounds
        for name, fn in contenders.items():
            began = time.perf_counter()
            for _ in range(n):
                fn()
            results.setdefault(name, []).append((time.perf_counter() - began) / n)
    base = median(results["pickle (protocol 5)"])
    rows = [[name, fmt_time(median(times)), f"{median(times) / base:.2f}x"] for name, times in results.items()]
    return table(["codec", "encode + decode a call message", "vs pickle"], rows)


def main(argv: list[str] | None = None) -> int:
    args = arguments(__doc__, argv)
    base = Path(tempfile.mkdtemp(prefix="pypods-bench-"))
    try:
        moved = throughput(args, base)
        small = codec_cost(args)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    publish(args.write, "Big data", f"{measured_on()}{moved}\n### Codec cost\n\n{small}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
