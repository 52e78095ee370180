"""Each benchmark runs briefly (--quick) so it cannot rot; no timing is asserted here (see benchmarks/)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from contracts.ray_backend import auth_token_environ

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.slow
@pytest.mark.parametrize(
    "script",
    [
        "run.py",
        "transfer.py",
        "concurrency.py",
        "startup.py",
        pytest.param("envs.py", marks=pytest.mark.network),
        pytest.param("ray_backend.py", marks=[pytest.mark.network, pytest.mark.ray]),
    ],
)
def test_benchmark_runs(script: str, tmp_path: Path) -> None:
    if script == "ray_backend.py":
        pytest.importorskip("ray")
    out = tmp_path / "performance.md"
    # A benchmark measures its own local setup: not a Ray cluster another test of this session joined.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH_"))}
    scratch = Path(tempfile.mkdtemp(prefix="rb-"))  # short: Ray's socket paths under it must fit in 107 bytes
    if script == "ray_backend.py":
        env.update(auth_token_environ(tmp_path))  # its local Ray's token: not one in ~/.ray
        env["RAY_TMPDIR"] = str(scratch)  # its session folder, removed below (Ray leaves it behind)
    try:
        result = subprocess.run(
            [sys.executable, str(BENCHMARKS / script), "--quick", "--write", str(out)],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    assert result.returncode == 0, result.stderr[-3000:]
    text = out.read_text()
    assert text.startswith("# PyPods performance")
    assert "| " in text
