"""``make test``'s runner stops everything the suite started on SIGTERM, even processes in their own session."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

RUNNER = Path(__file__).resolve().parent.parent / ".ci" / "testrun.py"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sweep reads /proc")
def test_sigterm_stops_the_suite_and_a_daemon_it_started(tmp_path: Path) -> None:
    pidfile = tmp_path / "daemon.pid"
    (tmp_path / "test_hang.py").write_text(
        textwrap.dedent(
            f"""
            import subprocess, sys, time

            def test_hang():
                # like Ray's daemons: a new session, so a signal to pytest's group misses it
                daemon = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                                          start_new_session=True)
                open({str(pidfile)!r}, "w").write(str(daemon.pid))
                time.sleep(600)
            """
        )
    )
    runner = subprocess.Popen(
        [sys.executable, str(RUNNER), "-q", "-p", "no:cacheprovider", "test_hang.py"], cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not pidfile.exists() or not pidfile.read_text():
        assert time.monotonic() < deadline, "the test never started"
        time.sleep(0.1)
    daemon = int(pidfile.read_text())
    runner.send_signal(signal.SIGTERM)
    _out, err = runner.communicate(timeout=60)
    assert runner.returncode == 128 + signal.SIGTERM
    assert "everything it started is stopped" in err
    assert not _alive(daemon), "the daemon outlived make test"


def _alive(pid: int) -> bool:
    """True if *pid* runs (a zombie waiting for its new parent to reap it counts as dead)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return False
        if state == "Z":
            return False
        time.sleep(0.1)
    return True
