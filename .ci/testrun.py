"""Run pytest hermetically, stop everything it started, and fail if it touched the home or left anything.

``make test`` (and so CI) runs the suite through this runner:

1. A new run folder under the system temp folder holds an empty ``HOME`` (with ``XDG_CACHE_HOME``,
   ``XDG_CONFIG_HOME`` and ``XDG_DATA_HOME`` inside it) and the suite's ``TMPDIR``: the suite can
   neither read the user's tokens, caches or settings nor write there (uv's cache and managed
   Pythons, Ray's token, pip's config all live under ``HOME``/``XDG_*``). Installed interpreters
   stay reachable through ``PATH`` and ``PYENV_ROOT`` when the caller's environment sets them.
2. pytest runs in its own session; a signal to this runner is passed on to it (SIGINT first, so
   fixtures tear down, then SIGKILL to its process group).
3. Afterwards the run fails if the suite left anything: a process that carries this run's marker
   in its environment (workers, Ray's daemons: they start their own sessions but inherit it; each
   is killed and named), a file in its ``TMPDIR`` other than pytest's own ``pytest-of-*`` folder,
   a new entry in ``/dev/shm``, a worker cgroup (``pypods-*``), anything created or changed in the
   real home, or a ``~/.ray`` in the suite's own home (a Ray cluster started without a token of its
   own). Then the run folder is removed.

``PYPODS_TEST_HOME_IGNORE`` (colon-separated paths relative to the home) lists home folders that
something else on a developer's machine writes while the suite runs (an editor's state, say);
CI sets none. Usage: python .ci/testrun.py [pytest arguments]
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

MARK = "MAKE_TEST_RUN_ID"  # not PYPODS_*: the suite and pypods clear those, and children must inherit it
GRACE = 20.0  # seconds pytest's teardown may take after a stop signal
SETTLE = 15.0  # seconds the suite's processes may take to end on their own after pytest exits
SLOWEST = 10  # tests whose durations are printed at the end


def ours(token: str) -> list[int]:
    """Pids of live processes whose environment carries *token* (Linux /proc; elsewhere none)."""
    needle = f"{MARK}={token}".encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        pid = int(entry.name)
        if pid == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    found.append(pid)
        except (OSError, IndexError):
            continue
    return found


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()[:160]
    except OSError:
        return "?"


def leftover_processes(token: str) -> list[str]:
    """Wait up to SETTLE for the suite's processes to end, then kill and describe those still running."""
    deadline = time.monotonic() + SETTLE
    while ours(token) and time.monotonic() < deadline:
        time.sleep(0.2)
    found = []
    for pid in ours(token):
        found.append(f"process {pid}: {command_line(pid)}")
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return found


class HomeWatch:
    """What changes in a folder tree: each folder's mtime before, then the entries changed since.

    A folder's mtime changes when an entry is created, removed or renamed in it, so comparing the
    mtimes of all folders (files are not stat'ed) finds every creation at any depth.
    """

    def __init__(self, home: Path, ignore: list[str]) -> None:
        self.home = home
        self.ignore = [str(home / item) for item in ignore if item]
        self.started = time.time()
        self.before = self._folders()

    def _skipped(self, path: str) -> bool:
        return any(path == item or path.startswith(item + os.sep) for item in self.ignore)

    def _folders(self) -> dict[str, int]:
        found: dict[str, int] = {}
        if not self.home.is_dir():
            return found
        for folder, subfolders, _files in os.walk(self.home, onerror=lambda _error: None):
            subfolders[:] = [name for name in subfolders if not self._skipped(os.path.join(folder, name))]
            try:
                found[folder] = os.stat(folder).st_mtime_ns
            except OSError:
                continue
        return found

    def changes(self) -> list[str]:
        changed = []
        for folder, mtime in self._folders().items():
            if self.before.get(folder) == mtime:
                continue
            if folder not in self.before:
                changed.append(f"{folder}{os.sep} (new)")
                continue
            names = []
            try:
                for entry in os.scandir(folder):
                    if entry.stat(follow_symlinks=False).st_ctime >= self.started - 1:
                        names.append(entry.name)
            except OSError:
                pass
            changed.append(f"{folder}{os.sep}: {', '.join(sorted(names)) or 'an entry removed or renamed'}")
        return changed


def shm_entries() -> set[str]:
    try:
        return set(os.listdir("/dev/shm"))
    except OSError:
        return set()


def cgroup_entries() -> set[str]:
    """The ``pypods-*`` cgroups under ours (pypods puts workers there where it may; Linux cgroup v2)."""
    try:
        ours = next(line[3:] for line in Path("/proc/self/cgroup").read_text().splitlines() if line[:3] == "0::")
        mount = next(
            fields[4]
            for fields in (line.split() for line in Path("/proc/self/mountinfo").read_text().splitlines())
            if "-" in fields and fields[fields.index("-") + 1] == "cgroup2"
        )
        folder = Path(mount) / ours.strip().lstrip("/")
        return {str(entry) for entry in folder.iterdir() if entry.name.startswith("pypods-")}
    except (OSError, StopIteration, IndexError):
        return set()


def hermetic_environ(run: Path, token: str) -> dict[str, str]:
    """The suite's environment: this one with an empty home and temp folder of its own."""
    home = run / "home"
    folders = {
        "HOME": home,
        "XDG_CACHE_HOME": home / ".cache",
        "XDG_CONFIG_HOME": home / ".config",
        "XDG_DATA_HOME": home / ".local" / "share",
        "XDG_STATE_HOME": home / ".local" / "state",
        "TMPDIR": run / "t",
    }
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, MARK: token, **{key: str(value) for key, value in folders.items()}}
    for key in ("UV_CACHE_DIR", "UV_PYTHON_INSTALL_DIR", "UV_TOOL_DIR", "PIP_CONFIG_FILE", "RAY_AUTH_TOKEN_PATH"):
        env.pop(key, None)  # each would point the suite back at the user's state
    return env


def leftover_files(temp: Path) -> list[str]:
    """Entries the suite left in its TMPDIR (pytest's own numbered folders excepted)."""
    return [f"{temp / name}" for name in sorted(os.listdir(temp)) if not name.startswith("pytest-of-")]


def main() -> int:
    token = uuid.uuid4().hex
    home = Path.home()
    watch = HomeWatch(home, os.environ.get("PYPODS_TEST_HOME_IGNORE", "").split(":"))
    shm_before = shm_entries()
    cgroups_before = cgroup_entries()
    run = Path(tempfile.mkdtemp(prefix="ppt-"))  # short: Ray's socket paths under it must fit in 107 bytes
    env = hermetic_environ(run, token)
    started = time.monotonic()
    command = [sys.executable, "-m", "pytest", f"--durations={SLOWEST}", "--durations-min=1.0", *sys.argv[1:]]
    proc = subprocess.Popen(command, env=env, start_new_session=True)
    stopping: list[float] = []  # the time of each stop signal
    received: list[int] = []

    def stop(signum: int, _frame: object) -> None:
        received.append(signum)
        stopping.append(time.monotonic())
        try:
            os.kill(proc.pid, signal.SIGINT)  # pytest stops and runs its teardown (ray.shutdown, pod.close)
        except OSError:
            pass

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    while proc.poll() is None:
        if stopping and (len(stopping) > 1 or time.monotonic() - stopping[0] > GRACE):
            break  # a second signal, or teardown takes too long
        time.sleep(0.2)
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # whatever of pytest's session is left
    except OSError:
        pass
    code = proc.wait()
    minutes = (time.monotonic() - started) / 60
    if received:
        for pid in ours(token):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        shutil.rmtree(run, ignore_errors=True)
        print(f"make test: interrupted after {minutes:.1f} min; everything it started is stopped", file=sys.stderr)
        return 128 + received[0]
    problems = leftover_processes(token)
    problems += [f"left in the suite's temp folder: {path}" for path in leftover_files(run / "t")]
    problems += [f"left in /dev/shm: {name}" for name in sorted(shm_entries() - shm_before)]
    problems += [f"cgroup left behind: {path}" for path in sorted(cgroup_entries() - cgroups_before)]
    problems += [f"changed in the real home: {change}" for change in watch.changes()]
    if (run / "home" / ".ray").exists():
        problems.append("Ray wrote a token into the suite's home (~/.ray): a cluster was started without its own")
    shutil.rmtree(run, ignore_errors=True)
    print(f"make test: took {minutes:.1f} min", file=sys.stderr)
    if problems:
        print("make test: the suite was not hermetic:", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return code or 1
    return code


if __name__ == "__main__":
    sys.exit(main())
