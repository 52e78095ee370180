"""The Ray backend against the local backend and a plain Ray actor doing the same work, in one run,
and the time to a new Ray pod's first answer (runtime_env creation) cold and warm.

    python benchmarks/ray_backend.py [--quick] [--write docs/performance.md]     # needs pypods[ray]
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import arguments, fmt_time, interleaved, measured_on, median, p99, publish, rate, table
from run import make_project

import pypods

POD = "def add(a, b):\n    return a + b\n"


def main(argv: list[str] | None = None) -> int:
    args = arguments(__doc__, argv)
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    base = Path(tempfile.mkdtemp(prefix="pypods-bench-"))
    try:
        make_project(base, "plain", POD)
        (base / "pods" / "withreq").mkdir(parents=True)
        (base / "pods" / "withreq" / "pod.py").write_text(POD)
        (base / "pods" / "withreq" / "requirements.txt").write_text("six\n")

        @ray.remote
        class Plain:
            def add(self, a, b):
                return a + b

        plain = Plain.remote()
        ray.get(plain.add.remote(0, 0))
        starts = []
        began = time.perf_counter()
        with pypods.load("withreq", root=base, backend="ray") as pod:
            pod.add(1, 1)
        starts.append(["new pod with a requirement, cold (runtime_env built)", fmt_time(time.perf_counter() - began)])
        began = time.perf_counter()
        with pypods.load("withreq", root=base, backend="ray") as pod:
            pod.add(1, 1)
        starts.append(["same pod again, warm (runtime_env cached by Ray)", fmt_time(time.perf_counter() - began)])
        with pypods.load("plain", root=base, backend="ray") as on_ray, pypods.load("plain", root=base) as local:
            contenders = {
                "local pod add(1, 2)": lambda: local.add(1, 2),
                "Ray pod add(1, 2)": lambda: on_ray.add(1, 2),
                "plain Ray actor add(1, 2)": lambda: ray.get(plain.add.remote(1, 2)),
            }
            rounds, batch = (2, 20) if args.quick else (10, 200)
            samples = interleaved(contenders, rounds, batch)
            total = 100 if args.quick else 4000
            rates = {name: rate(call, 4, total) for name, call in contenders.items()}
        base_median = median(samples["plain Ray actor add(1, 2)"])
        rows = [
            [name, fmt_time(median(v)), fmt_time(p99(v)), f"{median(v) / base_median:.2f}x", f"{rates[name]:,.0f}/s"]
            for name, v in samples.items()
        ]
    finally:
        ray.shutdown()
        shutil.rmtree(base, ignore_errors=True)
    body = measured_on(", a local Ray with 2 CPUs") + table(
        ["contender", "median", "p99", "vs plain Ray actor", "throughput, 4 threads"], rows
    )
    body += "\n" + table(["Ray pod start", "load to first answer"], starts)
    publish(args.write, "Ray backend", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
