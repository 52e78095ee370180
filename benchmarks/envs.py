"""How long environments take: a new pod to its first answer (cold and warm cache), a no-change
reload, a re-sync after a requirements edit, against ``python -m venv`` + ``pip install`` and
``uv venv`` + ``uv pip install`` (the same tool pypods uses, without the pod around it).

    python benchmarks/envs.py [--quick] [--write docs/performance.md] [--requirement packaging==24.1]

Uses the real package index (the requirement is downloaded once for the cold runs).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import arguments, fmt_time, measured_on, median, publish, table

import pypods

POD = "import importlib.metadata as m\n\ndef version(name):\n    return m.version(name)\n"


def new_pod(base: Path, name: str, requirement: str) -> Path:
    pod = base / "pods" / name
    pod.mkdir(parents=True)
    (pod / "pod.py").write_text(POD)
    (pod / "requirements.txt").write_text(requirement + "\n")
    return pod


def ratio(baseline: list[float] | None, values: list[float]) -> str:
    if not baseline:
        return "-"
    factor = median(baseline) / median(values)
    return f"{factor:.1f}x faster" if factor >= 1 else f"{1 / factor:.1f}x slower"


def first_answer(base: Path, name: str, package: str) -> float:
    began = time.perf_counter()
    with pypods.load(name, root=base, start="eager") as pod:
        pod.version(package)
    return time.perf_counter() - began


def venv_pip(base: Path, requirement: str, cache: str | None) -> float:
    target = base / f"venv-{time.perf_counter_ns()}"
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(target)], check=True)
    args = [str(target / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", requirement]
    env = {**os.environ, "PIP_CACHE_DIR": cache} if cache else {**os.environ, "PIP_NO_CACHE_DIR": "1"}
    subprocess.run(args, check=True, env=env)
    took = time.perf_counter() - began
    shutil.rmtree(target)
    return took


def uv_venv_pip(base: Path, requirement: str, cache: str) -> float:
    """``uv venv`` + ``uv pip install``: the honest peer (pypods builds with uv too)."""
    from pypods._env.tools import uv_binary

    uv = uv_binary() or "uv"
    target = base / f"uv-venv-{time.perf_counter_ns()}"
    env = {**os.environ, "UV_CACHE_DIR": cache}
    began = time.perf_counter()
    subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(target)], check=True, env=env)
    subprocess.run(
        [uv, "pip", "install", "-q", "--python", str(target / "bin" / "python"), requirement], check=True, env=env
    )
    took = time.perf_counter() - began
    shutil.rmtree(target)
    return took


def main(argv: list[str] | None = None) -> int:
    args = arguments(__doc__, argv, lambda parser: parser.add_argument("--requirement", default="packaging==24.1"))
    repeats = 1 if args.quick else 5
    package = args.requirement.split("==")[0]
    base = Path(tempfile.mkdtemp(prefix="pypods-bench-"))
    rows = []
    try:
        cold, warm, reload_, resync, pip_cold, pip_warm, uv_cold, uv_warm = [], [], [], [], [], [], [], []
        pip_cache = str(base / "pip-cache")
        for i in range(repeats):
            os.environ["UV_CACHE_DIR"] = str(base / f"uv-cache-{i}")  # empty: cold
            new_pod(base, f"cold{i}", args.requirement)
            cold.append(first_answer(base, f"cold{i}", package))
            new_pod(base, f"warm{i}", args.requirement)  # same cache, now holding the package
            warm.append(first_answer(base, f"warm{i}", package))
            began = time.perf_counter()
            with pypods.load(f"warm{i}", root=base):
                reload_.append(time.perf_counter() - began)
            requirements = base / "pods" / f"warm{i}" / "requirements.txt"
            requirements.write_text(requirements.read_text() + "six\n")
            resync.append(first_answer(base, f"warm{i}", package))
            pip_cold.append(venv_pip(base, args.requirement, None))
            pip_warm.append(venv_pip(base, args.requirement, pip_cache))
            uv_cache = str(base / f"uv-peer-cache-{i}")  # empty: cold, then warm
            uv_cold.append(uv_venv_pip(base, args.requirement, uv_cache))
            uv_warm.append(uv_venv_pip(base, args.requirement, uv_cache))
        os.environ.pop("UV_CACHE_DIR", None)
        for label, values, pip, uv in (
            ("new pod, cold cache, to first answer", cold, pip_cold, uv_cold),
            ("new pod, warm cache, to first answer", warm, pip_warm, uv_warm),
            ("no-change reload (load only)", reload_, None, None),
            ("re-sync after a one-line edit, to first answer", resync, None, None),
            ("python -m venv + pip install, no pip cache", pip_cold, None, None),
            ("python -m venv + pip install, warm pip cache", pip_warm, None, None),
            ("uv venv + uv pip install, empty uv cache", uv_cold, None, None),
            ("uv venv + uv pip install, warm uv cache", uv_warm, None, None),
        ):
            rows.append([label, fmt_time(median(values)), ratio(pip, values), ratio(uv, values)])
    finally:
        shutil.rmtree(base, ignore_errors=True)
    body = measured_on(f"; requirement `{args.requirement}`; medians of {repeats}")
    body += table(["step", "time", "vs venv + pip (same cache state)", "vs uv venv + uv pip (same cache state)"], rows)
    body += (
        "\nA pod's first answer includes what a bare venv does not: the lock (`uv pip compile`), the worker"
        " start and a call.\n"
    )
    publish(args.write, "Environments", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
