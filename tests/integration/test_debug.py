"""``breakpoint()`` in a pod gives a pdb prompt at the client's terminal (#23 part 3); ``debug=False`` a notice."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import pytest

import pypods
from conftest import pythons
from pypods._env.settings import toml_string

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a pty")

POD = """
def f(x):
    y = x * 2
    breakpoint()
    return y

def g(x):
    import pdb; pdb.set_trace()
    return x + 1
"""

CLIENT = """
import sys, pypods
debug = {"auto": None, "off": False}[sys.argv[3]]
with pypods.load("dbg", root=sys.argv[1], progress=False, debug=debug, template=sys.argv[4] == "1") as pod:
    print(f"RESULT {pod.call(sys.argv[2], 21)}", flush=True)  # one write: a forwarded stderr line cannot split it
"""


def _session(root: Path, function: str, debug: str, lines: list[str], template: bool = False) -> str:
    """Run a client at a pty, type *lines* as prompts appear, return all it showed."""
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-c", CLIENT, str(root), function, debug, "1" if template else "0"],
        stdin=slave, stdout=slave, stderr=slave, close_fds=True,
    )  # fmt: skip
    os.close(slave)
    shown = b""
    pending = list(lines)
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the client exited and closed the pty
                    break
                if not chunk:
                    break
                shown += chunk
            elif proc.poll() is not None:
                break
            if pending and shown.count(b"(Pdb) ") > len(lines) - len(pending):
                os.write(master, pending.pop(0).encode() + b"\n")
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return shown.decode("utf-8", "replace")


@pytest.fixture
def dbg(make_pod, root: Path) -> Path:
    make_pod("dbg", POD)
    with pypods.load("dbg", root=root, progress=False):
        pass  # builds the environment before the client at the pty needs it
    return root


def test_breakpoint_gives_a_pdb_prompt_at_the_terminal(dbg: Path) -> None:
    shown = _session(dbg, "f", "auto", ["p y * 10", "c"])
    assert "(Pdb) " in shown, shown
    assert "420" in shown, shown
    assert "RESULT 42" in shown, shown


def test_pdb_set_trace_too(dbg: Path) -> None:
    shown = _session(dbg, "g", "auto", ["p x + 100", "c"])
    assert "121" in shown, shown
    assert "RESULT 22" in shown, shown


def test_a_forked_worker_debugs_too(dbg: Path) -> None:
    shown = _session(dbg, "f", "auto", ["p y + 1", "c"], template=True)
    assert "43" in shown, shown
    assert "RESULT 42" in shown, shown


def test_debug_false_keeps_the_notice(dbg: Path) -> None:
    shown = _session(dbg, "f", "off", [])
    assert "(Pdb)" not in shown, shown
    assert "breakpoint() ignored" in shown, shown
    assert "RESULT 42" in shown, shown


def test_not_at_a_terminal_keeps_the_notice(dbg: Path, capfd: pytest.CaptureFixture[str]) -> None:
    with pypods.load("dbg", root=dbg, progress=False) as pod:
        assert pod.f(21) == 42
    assert "breakpoint() ignored" in capfd.readouterr().err


def test_pod_toml_may_not_turn_debug_on(make_pod, root: Path) -> None:
    make_pod("dbg", POD, toml="debug = true\n")
    with pytest.raises(pypods.PodConfigError, match="debug"):
        pypods.load("dbg", root=root)


@pytest.mark.parametrize("version", sorted(pythons()), ids=lambda v: f"py{v}")
def test_breakpoint_on_each_python(make_pod, root: Path, version: str) -> None:
    make_pod("dbg", POD, toml=f"python = {toml_string(pythons()[version])}\n")
    with pypods.load("dbg", root=root, progress=False):
        pass
    shown = _session(root, "f", "auto", ["p y * 10", "c"])
    assert "420" in shown, shown
    assert "RESULT 42" in shown, shown
