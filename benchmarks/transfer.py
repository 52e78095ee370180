"""Moving big data through a pod, and the cost of the codec on a small call message, in one run.

    python benchmarks/transfer.py [--quick] [--write docs/performance.md]

Echo throughput of bytes and float64 arrays (1, 64, 512 MiB) through a pod, against two in-process
copies of the same data into new buffers (what a round trip must at least do) and a bare pipe echo.
"""

from __future__ import annotations

import concurrent.futures
import json
import pickle
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from typing import TYPE_CHECKING

import peers
from common import arguments, fmt_time, measured_on, median, publish, table
from run import Floor, make_project

import pypods
from pypods._worker import codec, fastcodec
from pypods._worker.decoding import Decoder

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

MiB = 1 << 20


def medians(contenders: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median time of each contender over *rounds* rounds, contenders interleaved within each round."""
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, call in contenders.items():
            began = time.perf_counter()
            call()
            samples[name].append(time.perf_counter() - began)
    return {name: median(values) for name, values in samples.items()}


HEADERS = ["payload", "2 in-process copies", "pod echo", "pod rate", "pod speed / copies", "pipe echo time / pod",
           "ProcessPoolExecutor(1) echo", "pod / executor"]  # fmt: skip


def row(label: str, size: int, got: dict[str, float]) -> list[str]:
    pod, copies = got["pod"], got["copies"]
    pipe = f"{got['pipe'] / pod:.2f}" if "pipe" in got else "-"
    executor = [fmt_time(got["executor"]), f"{pod / got['executor']:.2f}x"] if "executor" in got else ["-", "-"]
    return [label, fmt_time(copies), fmt_time(pod), f"{size / pod:.0f} MiB/s", f"{copies / pod:.2f}", pipe, *executor]


def throughput(args: argparse.Namespace, base: Path) -> str:
    sizes = [1, 64] if args.quick else [1, 64, 512]
    rounds = 2 if args.quick else 7
    make_project(base, "echo", "def echo(value):\n    return value\n")
    rows = []
    floor = Floor()
    executor = concurrent.futures.ProcessPoolExecutor(1)
    executor.submit(peers.echo, 0).result()

    def by_executor(value: object) -> object:
        return executor.submit(peers.echo, value).result()

    with pypods.load("echo", root=base) as pod:
        for size in sizes:
            data = b"\x01" * (size * MiB)
            contenders: dict[str, Callable[[], object]] = {
                "copies": lambda data=data: bytes(bytearray(data)),  # type: ignore[misc]
                "pod": lambda data=data: pod.echo(data),  # type: ignore[misc]
            }
            if size <= 64:
                contenders["pipe"] = lambda data=data: floor.call(data)  # type: ignore[misc]
                contenders["executor"] = lambda data=data: by_executor(data)  # type: ignore[misc]
            rows.append(row(f"bytes {size} MiB", size, medians(contenders, rounds)))
    floor.close()
    try:
        import numpy as np
    except ImportError:
        executor.shutdown()
        return table(HEADERS, rows)
    make_project(base, "arrays", "def echo(value):\n    return value\n")
    (base / "pods" / "arrays" / "requirements.txt").write_text("numpy\n")
    try:
        with pypods.load("arrays", root=base) as pod:
            pod.echo(np.ones(4))  # the worker imports numpy on the first array it receives
            for size in sizes:
                array = np.ones(size * MiB // 8)
                contenders = {
                    "copies": lambda array=array: array.copy().copy(),  # type: ignore[misc]
                    "pod": lambda array=array: pod.echo(array),  # type: ignore[misc]
                }
                if size <= 64:
                    contenders["executor"] = lambda array=array: by_executor(array)  # type: ignore[misc]
                rows.append(row(f"float64 array {size} MiB", size, medians(contenders, rounds)))
            arrays = [np.full(MiB // 8, float(i)) for i in range(100)]
            contenders = {
                "copies": lambda: [each.copy().copy() for each in arrays],
                "pod": lambda: pod.echo(arrays),
                "executor": lambda: by_executor(arrays),
            }
            rows.append(row("list of 100 float64 arrays of 1 MiB", 100, medians(contenders, rounds)))
    except pypods.PodBuildError as exc:
        rows.append(["float64 arrays", "-", "-", "-", f"numpy could not be installed: {str(exc).splitlines()[0]}",
                     "-", "-", "-"])  # fmt: skip
    rows += dataframes(base, rounds, by_executor)
    executor.shutdown()
    return table(HEADERS, rows) + f"\nMedians of {rounds} interleaved rounds.\n"


def dataframes(base: Path, rounds: int, by_executor: Callable[[object], object]) -> list[list[str]]:
    """A pandas DataFrame of 100,000 rows x 5 columns (ints, floats, strings, bools, dates) through a pod."""
    try:
        import numpy as np
        import pandas as pd
    except ImportError:
        return []
    n = 100_000
    frame = pd.DataFrame({
        "id": np.arange(n), "score": np.arange(n) * 0.5, "name": [f"item-{i}" for i in range(n)],
        "ok": np.arange(n) % 2 == 0, "at": pd.date_range("2026-01-01", periods=n, freq="s"),
    })  # fmt: skip
    size = int(frame.memory_usage(deep=True).sum()) / MiB
    make_project(base, "frames", "def echo(value):\n    return value\n")
    (base / "pods" / "frames" / "requirements.txt").write_text("pandas\npyarrow\n")
    try:
        with pypods.load("frames", root=base) as pod:
            assert pod.echo(frame).equals(frame)
            contenders: dict[str, Callable[[], object]] = {
                "copies": lambda: frame.copy(deep=True).copy(deep=True),
                "pod": lambda: pod.echo(frame),
                "executor": lambda: by_executor(frame),
            }
            return [
                row(
                    f"pandas DataFrame {n:,} rows x 5 columns ({size:.1f} MiB)",
                    round(size),
                    medians(contenders, rounds),
                )
            ]
    except pypods.PodBuildError as exc:
        return [["pandas DataFrame", "-", "-", "-", f"pandas could not be installed: {str(exc).splitlines()[0]}",
                 "-", "-", "-"]]  # fmt: skip


def fast1_round_trip(args: tuple[object, ...], value: object) -> object:
    """What fast1 does for a call: request encode + decode (restricted pickle), reply encode + decode."""
    decoder = Decoder()
    fastcodec.decode_request(decoder.document(bytes(fastcodec.encode_request(None, 1, "f", args, {}))), decoder)
    return fastcodec.reply_value(decoder.document(bytes(fastcodec.encode_reply(None, 1, value))), "value")


def fast2_round_trip(args: tuple[object, ...], value: object) -> object:
    """fast2: fast1's request, and typed columns in the reply when they carry it exactly."""
    decoder = Decoder()
    fastcodec.decode_request(decoder.document(bytes(fastcodec.encode_request(None, 1, "f", args, {}))), decoder)
    reply = decoder.document(bytes(fastcodec.encode_reply(None, 1, value, encoding="fast2")))
    return fastcodec.reply_value(reply, "value", "fast2")


_PLAIN_JSON = fastcodec._json_decoder(fastcodec._UNLIMITED_TEXT_INTS)


def plain_json(
    round_trip: Callable[[tuple[object, ...], object], object], args: tuple[object, ...], value: object
) -> object:
    """*round_trip* with the client reading JSON by the standard ``json`` module only (no msgspec)."""
    saved = fastcodec._json_decode
    fastcodec._json_decode = _PLAIN_JSON
    try:
        return round_trip(args, value)
    finally:
        fastcodec._json_decode = saved


def bson_round_trip(args: tuple[object, ...], value: object) -> object:
    codec.decode(bytes(codec.Encoder().request(1, "f", args, {})))
    return codec.decode(bytes(codec.Encoder().reply(1, value)))["value"]


def codec_cost(args: argparse.Namespace) -> str:
    """Encode + decode of one call's request and reply (no I/O), for a small call and the data-heavy payloads."""
    records = [
        {"id": i, "name": f"item-{i}", "score": i * 0.5, "tags": ["a", "b"], "ok": i % 2 == 0} for i in range(200)
    ]
    floats = {f"k{i}": i * 0.25 for i in range(10_000)}
    payloads = {"area(2.5, 'metres', [1, 2, 3])": (2.5, "metres", [1, 2, 3]), "200 records": records,
                "dict of 10,000 floats": floats}  # fmt: skip
    rows = []
    for label, value in payloads.items():
        call_args = value if isinstance(value, tuple) else (value,)
        contenders: dict[str, Callable[[], object]] = {
            "pypods BSON": lambda a=call_args, v=value: bson_round_trip(a, v),  # type: ignore[misc]
            "pypods fast1": lambda a=call_args, v=value: fast1_round_trip(a, v),  # type: ignore[misc]
            "pypods fast2": lambda a=call_args, v=value: fast2_round_trip(a, v),  # type: ignore[misc]
            "pypods fast1, json only (no msgspec)": lambda a=call_args, v=value: plain_json(fast1_round_trip, a, v),  # type: ignore[misc]
            "pickle (protocol 5)": lambda a=call_args, v=value: (
                pickle.loads(pickle.dumps(a, protocol=5)),
                pickle.loads(pickle.dumps(v, protocol=5)),
            ),  # type: ignore[misc]
            "json (C)": lambda a=call_args, v=value: (json.loads(json.dumps(a)), json.loads(json.dumps(v))),  # type: ignore[misc]
        }
        try:
            import msgpack

            contenders["msgpack"] = lambda a=call_args, v=value: (  # type: ignore[misc]
                msgpack.unpackb(msgpack.packb(a)),
                msgpack.unpackb(msgpack.packb(v)),
            )
        except ImportError:
            pass
        n = 20 if args.quick else (2000 if label.startswith("area") else 100)
        results: dict[str, list[float]] = {}
        for _ in range(3 if args.quick else 7):  # interleaved rounds
            for name, fn in contenders.items():
                began = time.perf_counter()
                for _ in range(n):
                    fn()
                results.setdefault(name, []).append((time.perf_counter() - began) / n)
        base = median(results["pickle (protocol 5)"])
        rows += [
            [label, name, fmt_time(median(times)), f"{median(times) / base:.2f}x"] for name, times in results.items()
        ]
    return table(["payload", "codec", "request + reply, encode + decode", "vs pickle"], rows)


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
