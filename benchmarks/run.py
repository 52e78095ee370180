"""Per-call latency of a pod against the pipe floor and the peers, and worker start time, in one run.

    python benchmarks/run.py [--quick] [--write docs/performance.md]

Every contender is timed in the same interleaved rounds (see ``common.interleaved``), so machine
noise hits all of them alike; the table gives median, p99 and ratios to the pod and to the floor.
Peers that are not installed (``pip install -e .[bench]``) are left out with a note.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
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

import pypods
from pypods._worker import codec

if TYPE_CHECKING:
    import argparse

POD = "def add(a, b):\n    return a + b\n\ndef size(value):\n    return len(value)\n"


class Floor:
    """A bare length-prefixed os.pipe round trip to a child Python process."""

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
                pass
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


def latency(args: argparse.Namespace, base: Path) -> str:
    make_project(base, "bench", POD)
    make_project(base, "bench_pickle", POD)
    floor = Floor()
    spin_floor = Floor(spin=100e-6)
    pod = pypods.load("bench", root=base)
    pickled = pypods.load("bench_pickle", root=base, codec="pickle")  # never from pod.toml
    kib, hundred = b"x" * 1024, b"x" * (100 * 1024)
    contenders = {
        "floor: bare os.pipe round trip (16 B)": lambda: floor.call(b"x" * 16),
        "floor: bare os.pipe round trip (1 KiB)": lambda: floor.call(kib),
        "floor: bare os.pipe round trip (100 KiB)": lambda: floor.call(hundred),
        "floor, both sides spinning 100 µs before sleeping (16 B)": lambda: spin_floor.call(b"x" * 16),
        "pod add(1, 2)": lambda: pod.add(1, 2),
        "pod size(1 KiB)": lambda: pod.size(kib),
        "pod size(100 KiB)": lambda: pod.size(hundred),
        "pod, pickle codec: add(1, 2)": lambda: pickled.add(1, 2),
        "pod, pickle codec: size(100 KiB)": lambda: pickled.size(hundred),
    }
    notes = []
    closers = [floor.close, spin_floor.close, pod.close, pickled.close]
    executor = concurrent.futures.ProcessPoolExecutor(1)
    executor.submit(peers.add, 0, 0).result()
    contenders["ProcessPoolExecutor(1) add(1, 2)"] = lambda: executor.submit(peers.add, 1, 2).result()
    closers.append(executor.shutdown)
    parent, child = multiprocessing.Pipe()
    proc = multiprocessing.Process(target=peers.mp_pipe_child, args=(child,), daemon=True)
    proc.start()

    def mp_call() -> object:
        parent.send(("add", (1, 2)))
        return parent.recv()

    contenders["multiprocessing.Pipe + pickle add(1, 2)"] = mp_call
    closers.append(lambda: (parent.close(), proc.join(5)))
    try:
        import execnet

        gateway = execnet.makegateway("popen")
        channel = gateway.remote_exec("while True:\n    a, b = channel.receive()\n    channel.send(a + b)\n")

        def execnet_call() -> object:
            channel.send((1, 2))
            return channel.receive()

        contenders["execnet popen gateway + channel add(1, 2)"] = execnet_call
        closers.append(gateway.exit)
    except ImportError:
        notes.append("execnet not installed: `pip install -e .[bench]`")
    try:
        import rpyc

        socket_path = str(base / "rpyc.sock")
        server = multiprocessing.Process(target=peers.rpyc_server, args=(socket_path,), daemon=True)
        server.start()
        deadline = time.monotonic() + 10
        while not os.path.exists(socket_path) and time.monotonic() < deadline:
            time.sleep(0.01)
        connection = rpyc.utils.factory.unix_connect(socket_path)
        remote_add = connection.root.add
        contenders["rpyc over a Unix socket add(1, 2)"] = lambda: remote_add(1, 2)
        closers.append(lambda: (connection.close(), server.join(5)))
    except ImportError:
        notes.append("rpyc not installed: `pip install -e .[bench]`")

    for call in contenders.values():  # warm up
        for _ in range(50):
            call()
    rounds, batch = (3, 100) if args.quick else (20, 500)
    samples = interleaved(contenders, rounds, batch)
    original = new_interpreter_per_call(base, 3 if args.quick else 20)
    for close in closers:
        close()

    pod_median = median(samples["pod add(1, 2)"])
    floor_median = median(samples["floor: bare os.pipe round trip (16 B)"])
    rows = []
    for name, values in [*samples.items(), ("new interpreter per call (original design) foo(1, 2)", original)]:
        m = median(values)
        rows.append([name, fmt_time(m), fmt_time(p99(values)), f"{m / pod_median:.2f}x", f"{m / floor_median:.2f}x"])
    body = table(["contender", "median", "p99", "vs pod add", "vs floor"], rows)
    body += f"\n{rounds} interleaved rounds of {batch} calls each; the original design: {len(original)} calls.\n"
    for note in notes:
        body += f"\n- {note}"
    return body


def startup(args: argparse.Namespace, base: Path) -> str:
    """Load to first answer, against the bare interpreter's own start (plus the pod's imports)."""
    make_project(base, "empty", "def ping():\n    return 1\n")
    with pypods.load("empty", root=base):
        pass
    python = str(base / "pods" / "empty" / "venv" / "bin" / "python")
    repeats = 3 if args.quick else 15

    def bare(code: str, interpreter: str) -> float:
        began = time.perf_counter()
        subprocess.run([interpreter, "-I", "-c", code], check=True)
        return time.perf_counter() - began

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
    body = table(["pod", "bare `python -I -c` (same imports)", "pypods.load() to first answer", "difference"], rows)
    return body + f"\nMedians of {repeats} starts; the worker start includes the environment check and the hello.\n"


def main(argv: list[str] | None = None) -> int:
    args = arguments(__doc__, argv)
    base = Path(tempfile.mkdtemp(prefix="pypods-bench-"))
    try:
        calls = latency(args, base)
        starts = startup(args, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    publish(args.write, "Calls", f"{measured_on()}{calls}\n### Worker start\n\n{starts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
