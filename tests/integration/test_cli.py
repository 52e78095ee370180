"""The `pypods` command end to end, as a subprocess, against real pods in temp folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING

import pytest

import pypods

if TYPE_CHECKING:
    from pathlib import Path

GEO = '''
def area(radius: float, *, pi: float = 3.14159) -> float:
    """Area of a circle.

    Second paragraph.
    """
    return pi * radius * radius

def countdown(n: int):
    while n > 0:
        yield n
        n -= 1

def fail(message: str) -> None:
    raise ValueError(message)
'''


def run(root: Path, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYPODS_ROOT": str(root)}
    return subprocess.run(
        [sys.executable, "-m", "pypods", *args], capture_output=True, text=True, env=env, input=input, timeout=300,
        check=False,
    )  # fmt: skip


@pytest.fixture
def geo(make_pod, root: Path) -> Path:
    make_pod("geo", GEO)
    return root


def test_help_and_version(root: Path) -> None:
    result = run(root, "--help")
    assert result.returncode == 0
    for command in ("new", "list", "describe", "sync", "call", "stubs", "rm", "gc", "doctor"):
        assert command in result.stdout
        assert run(root, command, "--help").returncode == 0
    assert pypods.__version__ in run(root, "--version").stdout


def test_new_builds_and_rejects_bad_names(root: Path, wheelhouse: Path) -> None:
    result = run(root, "new", "fresh", "-r", f"--find-links={wheelhouse}", "-r", "tinypkg==1.0")
    assert result.returncode == 0, result.stderr
    assert (root / "pods" / "fresh" / "venv" / ".pypods-ready").exists()
    assert "tinypkg==1.0" in (root / "pods" / "fresh" / "requirements.lock").read_text()
    assert run(root, "new", "fresh").returncode == 1
    bad = run(root, "new", "../evil")
    assert bad.returncode == 2
    assert "pod name" in bad.stderr
    assert not (root / "evil").exists()


def test_list_plain_and_json(geo: Path) -> None:
    result = run(geo, "list")
    assert result.returncode == 0
    assert result.stdout.splitlines()[0].split("\t") == ["pod", "python", "state", "functions", "size"]
    assert "geo\t-\tmissing" in result.stdout
    assert run(geo, "sync").returncode == 0
    records = json.loads(run(geo, "list", "--json").stdout)
    assert records[0]["name"] == "geo"
    assert records[0]["state"] == "ready"
    (geo / "pods" / "geo" / "requirements.txt").write_text("# edited\nsomething-new\n")
    stale = json.loads(run(geo, "list", "--json").stdout)[0]
    assert stale["state"] == "stale"
    assert stale["why"] == "requirements changed"


def test_describe(geo: Path) -> None:
    result = run(geo, "describe", "geo")
    assert result.returncode == 0, result.stderr
    assert "area(radius: float, *, pi: float = 3.14159) -> float\tArea of a circle." in result.stdout
    records = json.loads(run(geo, "describe", "geo", "--json").stdout)
    assert [r["name"] for r in records] == ["area", "countdown", "fail"]
    missing = run(geo, "describe", "nope")
    assert missing.returncode == 1
    assert "no pod 'nope'" in missing.stderr


def test_call(geo: Path) -> None:
    assert run(geo, "call", "geo", "area", "2").stdout.strip() == "12.56636"
    assert run(geo, "call", "geo", "area", "2", "-k", "pi=3").stdout.strip() == "12"
    assert json.loads(run(geo, "call", "geo", "countdown", "3", "--json").stdout) == [3, 2, 1]
    failed = run(geo, "call", "geo", "fail", '"boom"')
    assert failed.returncode == 1
    assert "ValueError" in failed.stderr
    assert "boom" in failed.stderr
    unknown = run(geo, "call", "geo", "nope")
    assert unknown.returncode == 1
    assert "has no function 'nope'" in unknown.stderr


def test_sync_reports_failures(make_pod, root: Path) -> None:
    make_pod("good", "def f():\n    return 1\n")
    make_pod("bad", "def f():\n    return 1\n", requirements=("tinypkg==7.7",))
    result = run(root, "sync")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "good: ready" in result.stdout
    assert "bad: failed" in result.stdout


def test_rm_and_gc(geo: Path) -> None:
    assert run(geo, "sync", "geo").returncode == 0
    assert run(geo, "rm", "geo").returncode == 0
    assert not (geo / "pods" / "geo" / "venv").exists()
    assert (geo / "pods" / "geo" / "pod.py").exists()
    assert run(geo, "rm", "geo", "--all", input="n\n").returncode == 1
    assert (geo / "pods" / "geo").exists()
    assert run(geo, "rm", "geo", "--all", "--yes").returncode == 0
    assert not (geo / "pods" / "geo").exists()
    orphan = geo / "pods" / "gone" / "venv"
    orphan.mkdir(parents=True)
    (orphan / "big").write_bytes(b"x" * 5000)
    result = run(geo, "gc")
    assert result.returncode == 0, result.stderr
    assert "removed" in result.stdout
    assert not orphan.exists()


def test_doctor(geo: Path) -> None:
    result = run(geo, "doctor")
    assert "uv" in result.stdout
    assert sys.executable in result.stdout or "interpreters" in result.stdout
    assert result.returncode == 1  # geo has no environment yet
    assert "pypods sync geo" in result.stdout
    assert run(geo, "sync").returncode == 0
    assert run(geo, "doctor").returncode == 0


def test_stubs_make_mypy_check_pod_calls(geo: Path) -> None:
    result = run(geo, "stubs")
    assert result.returncode == 0, result.stderr
    good = textwrap.dedent(
        """
        import pods_typed
        from pods_typed import geo

        a: float = geo.area(2.0)
        with pods_typed.load("geo") as pod:
            b: float = pod.area(1.0, pi=3.0)
        print(a, b)
        """
    )
    (geo / "good.py").write_text(good)
    (geo / "bad.py").write_text(good.replace("geo.area(2.0)", 'geo.area("two")'))
    mypy = [sys.executable, "-m", "mypy", "--no-incremental", "--strict"]
    ok = subprocess.run([*mypy, "good.py"], cwd=geo, capture_output=True, text=True, timeout=300, check=False)
    assert ok.returncode == 0, ok.stdout
    bad = subprocess.run([*mypy, "bad.py"], cwd=geo, capture_output=True, text=True, timeout=300, check=False)
    assert bad.returncode == 1
    assert 'Argument 1 to "area" has incompatible type "str"; expected "float"' in bad.stdout
    ran = subprocess.run([sys.executable, "good.py"], cwd=geo, capture_output=True, text=True, timeout=300, check=False)
    assert ran.stdout.split() == ["12.56636", "3.0"], ran.stderr
