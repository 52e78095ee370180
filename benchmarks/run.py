"""Per-call latency of a pod against the pipe floor and the peers, and worker start time, in one run.

    python benchmarks/run.py [--quick] [--write docs/performance.md]

Every contender is timed in the same interleaved rounds (see ``common.interleaved``), so machine
noise hits all of them alike; the table gives median, p99 and ratios to the pod and to the floor.
Peers that are not installed (``pip install -e .[bench]``) are left out with a note.
"""

from __future__ import annotations

import os
import pickle
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from typing import TYPE_CHECKING

import peers
from common import ROOT, arguments, fmt_time, interleaved, measured_on, median, p99, publish, table
from contenders import Peers

import pypods
from pypods._client import connection
from pypods._client.core import CallProtocol
from pypods._worker import codec, fastcodec, messages
from pypods._worker.decoding import Decoder

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

POD = (
    "def add(a, b):\n    return a + b\n\ndef echo(value):\n    return value\n\n"
    "class Adder:\n    def add(self, a, b):\n        return a + b\n"
)


class Floor:
    """A bare length-prefixed os.pipe round trip to a child Python process (spinning, if asked, as pypods does)."""

    def __init__(self, spin: float = 0.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(peers.__file__)), "pipe", str(spin)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
        )
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.w, self.r = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        self.spin = spin
        self.poll = select.poll()
        self.poll.register(self.r, select.POLLIN)

    def call(self, payload: bytes) -> bytes:
        os.write(self.w, struct.pack("<i", len(payload)) + payload)
        if self.spin:
            end = time.perf_counter() + self.spin
            while not self.poll.poll(0) and time.perf_counter() < end:
                os.sched_yield()  # as FrameReader.spin does: the floor spins the way pypods does
        want = len(payload) + 4
        data = bytearray(os.read(self.r, want))
        while len(data) < want:
            data += os.read(self.r, want - len(data))
        return bytes(data)

    def close(self) -> None:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.close()
        self.proc.kill()  # forked peers may hold a copy of its stdin, so EOF alone may never come
        self.proc.wait()
        self.proc.stdout.close()


def make_project(base: Path, name: str, source: str, toml: str = "") -> Path:
    pod = base / "pods" / name
    pod.mkdir(parents=True, exist_ok=True)
    (pod / "pod.py").write_text(source)
    if toml:
        (pod / "pod.toml").write_text(toml)
    return base


def new_interpreter_per_call(base: Path, calls: int) -> list[float]:
    """The original design: a new pod interpreter per call, BSON on stdin, ``{"response": ...}`` on stdout."""
    pod_dir = base / "pods" / "original"
    pod_dir.mkdir(parents=True, exist_ok=True)
    template = (ROOT / "examples" / "pods" / "hello_world_pod" / "pod.py").read_text()
    (pod_dir / "pod.py").write_text(template.replace("from pods.hello_world_pod.module_test import", "# import"))
    with pypods.load("original", root=base):  # builds its venv
        pass
    python = str(pod_dir / "venv" / "bin" / "python")
    # The original installed pypods (PodListener + a BSON library) into each pod. Give the pod just
    # that: a `pypods.pods` with PodListener over our stdlib BSON codec, not the whole client.
    shim = base / "shim" / "pypods"
    shim.mkdir(parents=True, exist_ok=True)
    (shim / "__init__.py").write_text("")
    if not (shim / "_worker").exists():
        (shim / "_worker").symlink_to(ROOT / "src" / "pypods" / "_worker")
    listener = (ROOT / "src" / "pypods" / "pods.py").read_text()
    listener = listener[listener.index("class PodListener") :]
    (shim / "pods.py").write_text(
        "import sys\nfrom typing import Any\n"
        "from pypods._worker.codec import DecodeError, EncodeError, decode, encode\n\n" + listener
    )
    env = {**os.environ, "PYTHONPATH": str(shim.parent)}
    message = bytes(codec.encode({"name": "foo", "args": [1, 2], "kwargs": {}}))
    times = []
    for _ in range(calls):
        began = time.perf_counter()
        out = subprocess.run(
            [python, "-m", "pods.original.pod"], input=message, capture_output=True, cwd=base, env=env, check=True
        )
        assert codec.decode(out.stdout)["response"] == 3
        times.append(time.perf_counter() - began)
    return times


def load_with(name: str, base: Path, codec_name: str = "bson", **env: str) -> pypods.Pod:
    """Load a pod and start its worker now, with *env* set while it starts (PYPODS_ENCODING, PYPODS_SPIN_US)."""
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        return pypods.load(name, root=base, start="eager", codec=codec_name)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def without_client_spin(call: Callable[[], object]) -> Callable[[], object]:
    """The client's half of PYPODS_SPIN_US=0 (its spin is read per call from this module global)."""

    def unspun() -> object:
        saved = connection.SPIN
        connection.SPIN = 0.0
        try:
            return call()
        finally:
            connection.SPIN = saved

    return unspun


def without_msgspec(call: Callable[[], object]) -> Callable[[], object]:
    """The client reading JSON replies with the standard ``json`` module only (as without the msgspec extra)."""
    plain = fastcodec._json_decoder(fastcodec._UNLIMITED_TEXT_INTS)

    def unaccelerated() -> object:
        saved = fastcodec._json_decode
        fastcodec._json_decode = plain
        try:
            return call()
        finally:
            fastcodec._json_decode = saved

    return unaccelerated


def table_of(samples: dict[str, list[float]], base_name: str, baselines: dict[str, str]) -> str:
    """Median, p99 and ratios to pypods and to each baseline (``{column label: contender}``)."""
    base_median = median(samples[base_name])
    references = {label: median(samples[name]) for label, name in baselines.items()}
    rows = []
    for name, values in samples.items():
        m = median(values)
        rows.append([name, fmt_time(m), fmt_time(p99(values)), f"{m / base_median:.2f}x"]
                    + [f"{m / reference:.2f}x" for reference in references.values()])  # fmt: skip
    return table(["contender", "median", "p99", "vs pypods", *(f"vs {label}" for label in references)], rows)


def latency(args: argparse.Namespace, base: Path, others: Peers) -> str:
    make_project(base, "bench", POD)
    floor = Floor()
    spin_floor = Floor(spin=100e-6)
    pod = load_with("bench", base)
    bson_pod = load_with("bench", base, PYPODS_ENCODING="bson")
    unspun = load_with("bench", base, PYPODS_SPIN_US="0")
    pickled = load_with("bench", base, "pickle")
    adder = pod.Adder()  # a live object in the pod's worker (issue #22)
    kib, hundred = b"x" * 1024, b"x" * (100 * 1024)
    contenders: dict[str, Callable[[], object]] = {
        "floor: bare os.pipe echo (16 B)": lambda: floor.call(b"x" * 16),
        "floor: bare os.pipe echo (1 KiB)": lambda: floor.call(kib),
        "floor: bare os.pipe echo (100 KiB)": lambda: floor.call(hundred),
        "floor, both sides spinning 100 µs before sleeping (16 B)": lambda: spin_floor.call(b"x" * 16),
        "pypods add(1, 2)": lambda: pod.add(1, 2),
        "pypods adder.add(1, 2), a method of a live object": lambda: adder.add(1, 2),
        "pypods add(1, 2), spinning off (PYPODS_SPIN_US=0)": without_client_spin(lambda: unspun.add(1, 2)),
        "pypods add(1, 2), BSON encoding": lambda: bson_pod.add(1, 2),
        "pypods echo(1 KiB)": lambda: pod.echo(kib),
        "pypods echo(100 KiB)": lambda: pod.echo(hundred),
        "pypods, pickle codec: add(1, 2)": lambda: pickled.add(1, 2),
        "pypods, pickle codec: echo(100 KiB)": lambda: pickled.echo(hundred),
    }
    contenders.update(others.contenders("add(1, 2)", "add", 1, 2))
    contenders.update(others.contenders("echo(100 KiB)", "echo", hundred))
    for call in contenders.values():  # warm up
        for _ in range(50):
            call()
    rounds, batch = (3, 100) if args.quick else (20, 500)
    samples = interleaved(contenders, rounds, batch)
    original = new_interpreter_per_call(base, 3 if args.quick else 20)
    for close in (floor.close, spin_floor.close, pod.close, bson_pod.close, unspun.close, pickled.close):
        close()
    samples["new interpreter per call (original design) foo(1, 2)"] = original
    floors = {
        "floor": "floor: bare os.pipe echo (16 B)",
        "spin floor": "floor, both sides spinning 100 µs before sleeping (16 B)",
    }
    body = table_of(samples, "pypods add(1, 2)", floors)
    body += f"\n{rounds} interleaved rounds of {batch} calls each; the original design: {len(original)} calls.\n"
    return body + "".join(f"\n- {note}" for note in others.notes)


RECORDS = [{"id": i, "name": f"item-{i}", "score": i * 0.5, "tags": ["a", "b"], "ok": i % 2 == 0} for i in range(200)]
FLOATS = {f"k{i}": i * 0.25 for i in range(10_000)}


def heavy(args: argparse.Namespace, base: Path, others: Peers) -> str:
    """Calls that carry data: the 200-record echo and a dict of 10,000 floats, every contender alike."""
    make_project(base, "bench", POD)
    pod = load_with("bench", base)
    fast1_pod = load_with("bench", base, PYPODS_ENCODING="fast1")
    bson_pod = load_with("bench", base, PYPODS_ENCODING="bson")
    pickled = load_with("bench", base, "pickle")
    unspun = load_with("bench", base, PYPODS_SPIN_US="0")
    sections = []
    for label, payload in (("echo(200 records)", RECORDS), ("echo(dict of 10,000 floats)", FLOATS)):
        codec_alone = f"pickle alone, in-process: dumps + loads of the call and of the reply ({label})"
        messages_alone = f"pypods pickle-codec messages alone, in-process, no I/O ({label})"
        contenders: dict[str, Callable[[], object]] = {
            f"pypods {label}": lambda payload=payload: pod.echo(payload),  # type: ignore[misc]
            f"pypods {label}, fast1 encoding": lambda payload=payload: fast1_pod.echo(payload),  # type: ignore[misc]
            f"pypods {label}, fast1 encoding, json only (no msgspec)": without_msgspec(
                lambda payload=payload: fast1_pod.echo(payload)
            ),  # type: ignore[misc]
            f"pypods {label}, BSON encoding": lambda payload=payload: bson_pod.echo(payload),  # type: ignore[misc]
            f"pypods {label}, pickle codec (trusts the pod)": lambda payload=payload: pickled.echo(payload),  # type: ignore[misc]
            f"pypods {label}, spinning off": without_client_spin(lambda payload=payload: unspun.echo(payload)),  # type: ignore[misc]
            codec_alone: lambda payload=payload: pickle_alone(payload),  # type: ignore[misc]
            messages_alone: lambda payload=payload: pickle_messages_alone(payload),  # type: ignore[misc]
        }
        contenders.update(others.contenders(label, "echo", payload))
        for name, call in contenders.items():
            assert call() == payload, name
        rounds, batch = (2, 5) if args.quick else (15, 40)
        samples = interleaved(contenders, rounds, batch)
        baselines = {
            "Pipe + pickle": f"multiprocessing.Pipe + pickle {label}",
            "executor": f"ProcessPoolExecutor(1) {label}",
        }
        sections.append(table_of(samples, f"pypods {label}", baselines))
        sections.append(around_pickle(samples, label, codec_alone, messages_alone))
        sections.append(f"\n{rounds} interleaved rounds of {batch} calls each.\n")
    for each in (pod, fast1_pod, bson_pod, pickled, unspun):
        each.close()
    return "\n".join(sections)


def pickle_alone(value: object) -> object:
    """The codec work of one pickled echo, in one process: the call ``("echo", (value,))`` and the reply."""
    pickle.loads(pickle.dumps(("echo", (value,)), protocol=5))
    return pickle.loads(pickle.dumps(value, protocol=5))


_PICKLE_PROTOCOL = CallProtocol("bench", "pickle")
_DECODER = Decoder()


def pickle_messages_alone(value: object) -> object:
    """One pickle-codec echo through pypods' own messages, both sides, in one process: no pipe, no wait."""
    frame, _ = _PICKLE_PROTOCOL.encode_call(1, "echo", (value,), {})
    args, _kwargs = messages.unpack_pickle(_DECODER.document(bytes(frame)))
    reply = codec.Encoder().document(messages.result_message(1, args[0], "value", True))
    return _PICKLE_PROTOCOL.value_of(_PICKLE_PROTOCOL.decode(bytes(reply)), "value")


def around_pickle(samples: dict[str, list[float]], label: str, codec_alone: str, messages_alone: str) -> str:
    """What pypods (pickle codec) and a bare Pipe + pickle add around the same pickling: median minus codec."""
    codec_time = median(samples[codec_alone])
    rows = []
    for name in (
        f"pypods {label}, pickle codec (trusts the pod)",
        messages_alone,
        f"multiprocessing.Pipe + pickle {label}",
    ):
        if name in samples:
            added = median(samples[name]) - codec_time
            rows.append([name, fmt_time(median(samples[name])), fmt_time(codec_time), fmt_time(added)])
    return "\n" + table(
        ["around pickle", "median", "pickle alone", "added (messages, framing, wake-ups, copies)"], rows
    )


def startup(args: argparse.Namespace, base: Path) -> str:
    """Load to first answer, against the bare interpreter's own start (plus the pod's imports)."""
    make_project(base, "empty", "def ping():\n    return 1\n")
    with pypods.load("empty", root=base):
        pass
    python = str(base / "pods" / "empty" / "venv" / "bin" / "python")
    repeats = 3 if args.quick else 15

    def bare(code: str, interpreter: str) -> float:
        """Start to first answer (a byte on stdout after *code* ran), not counting the exit: as for the pod."""
        began = time.perf_counter()
        proc = subprocess.Popen(
            [
                interpreter,
                "-I",
                "-c",
                code + "\nimport sys\nsys.stdout.write('1')\nsys.stdout.flush()\nsys.stdin.read()",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert proc.stdout is not None
        assert proc.stdin is not None
        proc.stdout.read(1)
        took = time.perf_counter() - began
        proc.stdin.close()
        proc.wait()
        proc.stdout.close()
        return took

    def pod_start(name: str) -> float:
        began = time.perf_counter()
        pod = pypods.load(name, root=base, start="eager")
        pod.ping()
        took = time.perf_counter() - began
        pod.close()
        return took

    rows = []
    times = {"bare": [], "pod": []}
    for _ in range(repeats):
        times["bare"].append(bare("pass", python))
        times["pod"].append(pod_start("empty"))
    rows.append(["empty pod", fmt_time(median(times["bare"])), fmt_time(median(times["pod"])),
                 fmt_time(median(times["pod"]) - median(times["bare"]))])  # fmt: skip
    if not args.quick:
        make_project(base, "numpy_pod", "import numpy\n\ndef ping():\n    return 1\n")
        (base / "pods" / "numpy_pod" / "requirements.txt").write_text("numpy\n")
        try:
            with pypods.load("numpy_pod", root=base):
                pass
            numpy_python = str(base / "pods" / "numpy_pod" / "venv" / "bin" / "python")
            bare_np, pod_np = [], []
            for _ in range(repeats):
                bare_np.append(bare("import numpy", numpy_python))
                pod_np.append(pod_start("numpy_pod"))
            rows.append(["pod importing numpy", fmt_time(median(bare_np)), fmt_time(median(pod_np)),
                         fmt_time(median(pod_np) - median(bare_np))])  # fmt: skip
        except pypods.PodBuildError as exc:
            rows.append(["pod importing numpy", "-", "-", f"numpy could not be installed: {exc}".splitlines()[0]])
    body = table(["pod", "bare `python -I -c` (same imports), to first answer", "pypods.load() to first answer",
                  "difference"], rows)  # fmt: skip
    return body + (
        f"\nMedians of {repeats} starts, each timed from start to the first answer, exit not included on either"
        " side; the worker start includes the environment check and the hello.\n"
    )


def main(argv: list[str] | None = None) -> int:
    args = arguments(__doc__, argv)
    base = Path(tempfile.mkdtemp(prefix="pypods-bench-"))
    others = Peers(base)
    try:
        calls = latency(args, base, others)
        data = heavy(args, base, others)
        starts = startup(args, base)
    finally:
        others.close()
        shutil.rmtree(base, ignore_errors=True)
    body = f"{measured_on()}{calls}\n### Calls that carry data\n\n{data}\n### Worker start\n\n{starts}"
    publish(args.write, "Calls", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
