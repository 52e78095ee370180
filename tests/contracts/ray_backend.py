"""The Ray backend for the contract suite: a real two-node Ray cluster on this machine, one per session.

The cluster is two ``ray start --block`` processes started here (a head, then a second node joining
it), so calls cross two raylets the way they do on a real cluster. Each runs under a guard
(``rayguard.py``) in its own session, detached (not a child of pytest). The client joins through
``RAY_ADDRESS``. Stopping sends SIGTERM to the two guards, which stop their nodes (Ray's own
shutdown stops what they started) and kill their sessions after a grace period: by the pids we
started, unlike ``ray stop --force``, which would also stop any other Ray on the machine. The stop
runs at the end of the session, at interpreter exit, and on SIGTERM/SIGINT of pytest; if pytest is
killed outright (SIGKILL), each guard notices within a second and stops its node itself.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

import pypods

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

OBJECT_STORE = 200 * 1024 * 1024  # bytes per node: small, this machine runs other suites too
START_DEADLINE = 90.0  # seconds for a node to come up on a loaded 2-core machine


def auth_token_environ(folder: Path) -> dict[str, str]:
    """Ray token authentication with a token of our own: a new 0600 file in *folder*, never ``~/.ray``.

    Ray turns token authentication on for a new head by default and, when no token exists, writes
    one to ``~/.ray/auth_token`` (readable by every user): a test suite must neither read the
    user's token nor leave one behind. ``RAY_AUTH_TOKEN_PATH`` points the nodes and the driver at
    this file instead, and it goes with *folder*.
    """
    path = folder / "auth_token"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(secrets.token_hex(32))
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(path)}


def _refresh_ray_config() -> None:
    """Make an already imported Ray read RAY_AUTH_MODE again (it reads its config at import)."""
    if "ray" in sys.modules:
        from ray._raylet import Config

        Config.initialize("")


# Starts the node's guard (rayguard.py) in a new session and prints its pid: the node is then nobody's
# child here (pytest's stray-process check looks at children), yet we know whom to stop, and the guard
# stops the node even if pytest is killed outright.
LAUNCHER = (
    "import subprocess, sys; "
    "p = subprocess.Popen([sys.executable, *sys.argv[1:]], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, "
    "stderr=subprocess.DEVNULL, start_new_session=True); print(p.pid)"
)
GUARD = str(Path(__file__).with_name("rayguard.py"))


def _alive(pid: int) -> bool:
    """Whether *pid* runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _ray_command() -> list[str]:
    return [sys.executable, "-m", "ray.scripts.scripts"]


class RayCluster:
    """A head node and a second node of Ray on this machine, started and stopped by this process."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.folder = Path(tempfile.mkdtemp(prefix="ray-"))  # short: Ray's socket paths must fit in 107 bytes
        self.nodes: list[int] = []  # pids of the `ray start --block` processes, each leading its own session
        self._previous: dict[int, Any] = {}
        self.auth = auth_token_environ(self.folder)
        self.environ = {"RAY_ADDRESS": self.address, **self.auth}

    def start(self) -> None:
        """Start both nodes and point ``RAY_ADDRESS`` at the head; stop everything if a node fails."""
        common = ["--num-cpus=1", f"--object-store-memory={OBJECT_STORE}", "--disable-usage-stats", "--block"]
        head = [
            "start",
            "--head",
            f"--port={self.port}",
            "--node-ip-address=127.0.0.1",
            "--include-dashboard=false",
            f"--temp-dir={self.folder / 'ray'}",
        ]
        self._install_signal_handlers()
        atexit.register(self.stop)
        os.environ.update(self.environ)
        try:
            self._node("head", head + common)
            self._node("second", ["start", f"--address={self.address}", "--node-ip-address=127.0.0.1", *common])
            self._wait_for_nodes(2)
        except BaseException:
            self.stop()
            raise
        _refresh_ray_config()
        import ray

        # Connect this process now: a Ray driver installs its own SIGTERM handler (which only raises
        # SystemExit in whatever test runs), so ours goes back on top of it afterwards.
        ray.init(address=self.address)
        self._install_signal_handlers()

    def _node(self, name: str, args: list[str]) -> None:
        """Start one ``ray start --block`` under its guard, detached from pytest (not our child); wait for it."""
        log = self.folder / f"{name}.log"
        launcher = subprocess.run(
            [sys.executable, "-c", LAUNCHER, GUARD, str(os.getpid()), str(log), *_ray_command(), *args],
            env=self._node_environ(),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        pid = int(launcher.stdout.strip())
        self.nodes.append(pid)
        deadline = time.monotonic() + START_DEADLINE
        while not log.is_file() or b"will now block forever" not in log.read_bytes():
            if not _alive(pid) or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:] if log.is_file() else "(no output)"
                raise RuntimeError(f"ray node {name!r} did not start:\n{tail}")
            time.sleep(0.2)

    def _node_environ(self) -> dict[str, str]:
        """The environment of a ``ray`` command we run: ours with the cluster's token, no RAY_ADDRESS."""
        return {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, **self.auth}

    def _wait_for_nodes(self, count: int) -> None:
        """Wait until the head sees *count* live nodes (checked in a subprocess: no ray.init here)."""
        probe = (
            "import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False); "
            "sys.exit(0 if sum(n['Alive'] for n in ray.nodes()) >= int(sys.argv[2]) else 1)"
        )
        deadline = time.monotonic() + START_DEADLINE
        command = [sys.executable, "-c", probe, self.address, str(count)]
        while subprocess.run(command, capture_output=True, timeout=60, env=self._node_environ()).returncode:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Ray cluster at {self.address} did not reach {count} nodes")
            time.sleep(0.5)

    def _install_signal_handlers(self) -> None:
        """Ctrl-C or SIGTERM of pytest stops the cluster too, then does what it did before."""

        def handler(signum: int, frame: Any) -> None:
            previous = self._previous.get(signum)
            self.stop()  # restores the previous handlers too
            if callable(previous):
                previous(signum, frame)  # e.g. Python's own SIGINT handler: KeyboardInterrupt
            elif previous != signal.SIG_IGN:
                signal.signal(signum, signal.SIG_DFL)  # end as the signal would have ended us
                os.kill(os.getpid(), signum)

        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: atexit still covers us
                previous = signal.signal(signum, handler)
                self._previous.setdefault(signum, previous)  # the handler from before the cluster

    def stop(self) -> None:
        """Disconnect this process, stop both nodes and remove the session folder (idempotent)."""
        nodes, self.nodes = self.nodes, []
        if not nodes:
            return
        with contextlib.suppress(Exception):
            import ray

            ray.shutdown()
        for pid in reversed(nodes):  # the second node first, then the head; each guard stops its node
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in nodes) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in nodes:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)  # the guard's session: raylet, GCS and their workers
        for key, value in self.environ.items():
            if os.environ.get(key) == value:
                del os.environ[key]
        for signum, previous in self._previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(signum, previous)
        self._previous.clear()
        import shutil

        shutil.rmtree(self.folder, ignore_errors=True)
        from pypods._client.rayactor import sweep_stale

        sweep_stale()  # what killed actors staged (the next actor on a node would sweep it; there is none)


_shared: RayCluster | None = None


def shared_cluster() -> RayCluster:
    """The session's cluster, started on first use (skips the test when Ray is not installed)."""
    global _shared
    pytest.importorskip("ray")
    if _shared is None:
        cluster = RayCluster()
        cluster.start()
        _shared = cluster
    os.environ.update(_shared.environ)
    return _shared


def stop_shared_cluster() -> None:
    global _shared
    if _shared is not None:
        _shared.stop()
        _shared = None


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster]:
    """A two-node Ray cluster for the session (stopped at its end)."""
    yield shared_cluster()
    stop_shared_cluster()


@pytest.fixture(scope="session", autouse=True)
def _stop_ray_cluster_at_session_end() -> Iterator[None]:
    """Stop a cluster that ``make_ray_pod`` started on demand, before the stray-process check."""
    yield
    stop_shared_cluster()


def make_ray_pod(make_pod: Callable[..., Path], name: str, **options: Any) -> pypods.Pod:
    """Open pod *name* (made beforehand with *make_pod*) on the Ray backend of the session's cluster.

    ``root`` may be given in *options*; else the pod is found through ``$PYPODS_ROOT`` or the
    current directory, as for ``pypods.load``.
    """
    shared_cluster()
    return pypods.load(name, backend="ray", **options)
