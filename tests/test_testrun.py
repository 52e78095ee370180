"""``make test``'s runner stops everything the suite started on SIGTERM, even processes in their own session."""

from __future__ import annotations

import os
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


def _run_suite(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    """Run *source* as a one-file suite under ``make test``'s runner (cwd *tmp_path*)."""
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(source))
    return subprocess.run(
        [sys.executable, str(RUNNER), "-q", "-p", "no:cacheprovider", "test_inner.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_the_suite_runs_with_an_empty_home_and_temp_folder_of_its_own(tmp_path: Path) -> None:
    real_home = os.environ["HOME"]
    result = _run_suite(
        tmp_path,
        f"""
        import os, tempfile
        from pathlib import Path

        def test_home():
            home = Path.home()
            assert str(home) != {real_home!r}
            assert all(path.is_dir() for path in home.rglob("*"))  # only the empty XDG folders
            for key in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME"):
                assert Path(os.environ[key]).is_relative_to(home)
            assert Path(tempfile.gettempdir()).parent == home.parent
        """,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "not hermetic" not in result.stderr


def test_a_file_written_into_the_real_home_fails_the_run(tmp_path: Path) -> None:
    planted = Path(os.environ["HOME"]) / f"planted-{os.getpid()}"
    try:
        result = _run_suite(tmp_path, f"def test_plant():\n    open({str(planted)!r}, 'w').close()\n")
        assert result.returncode != 0
        assert "changed in the real home" in result.stderr
        assert planted.name in result.stderr
    finally:
        planted.unlink(missing_ok=True)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sweep reads /proc")
def test_a_process_or_temp_file_left_behind_fails_the_run_and_the_process_is_stopped(tmp_path: Path) -> None:
    pidfile = tmp_path / "daemon.pid"
    result = _run_suite(
        tmp_path,
        f"""
        import subprocess, sys, tempfile

        def test_leave():
            daemon = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
            open({str(pidfile)!r}, "w").write(str(daemon.pid))
            tempfile.mkdtemp(prefix="forgotten-")
        """,
    )
    assert result.returncode != 0
    assert "not hermetic" in result.stderr
    assert f"process {pidfile.read_text()}" in result.stderr
    assert "forgotten-" in result.stderr
    assert not _alive(int(pidfile.read_text())), "the runner did not stop what the suite left"


def test_the_slowest_tests_are_listed(tmp_path: Path) -> None:
    result = _run_suite(tmp_path, "import time\n\ndef test_slow():\n    time.sleep(1.2)\n")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "slowest" in result.stdout
    assert "test_slow" in result.stdout
