"""Start a worker in a pod's interpreter with private pipes, forward its output, and end it for sure."""

from __future__ import annotations

import atexit
import collections
import logging
import os
import signal
import subprocess
import sys
import threading
import weakref
from pathlib import Path

from .._env.tools import clean_environ
from .._worker import BOOTSTRAP

WORKER_DIR = str(Path(__file__).resolve().parent.parent / "_worker")
_output_lock = threading.Lock()  # one whole line at a time, whichever worker wrote it
_live: weakref.WeakSet[WorkerProcess] = weakref.WeakSet()


class WorkerProcess:
    """One worker OS process: ``python -I -c BOOTSTRAP`` with stdin/stdout as the protocol pipes.

    The worker moves the protocol off fds 0 and 1 at once (see ``_worker/serve.py``), so whatever
    the pod prints arrives on its stderr pipe, which a thread here forwards line by line.
    """

    def __init__(
        self,
        python: str,
        pod_name: str,
        pod_dir: str,
        project_root: str,
        env: dict[str, str] | None = None,
        log: str = "stderr",
        codec: str = "bson",
        describe: bool = True,
    ) -> None:
        self.pod_name = pod_name
        self.codec = codec
        flag = "1" if describe else "0"
        argv = [python, "-I", "-c", BOOTSTRAP, WORKER_DIR, pod_name, pod_dir, project_root, codec, flag]
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=clean_environ(env),
            bufsize=0,
            close_fds=True,
            # A session of its own: Ctrl-C in the client's terminal must not reach the worker.
            start_new_session=True,
        )
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        self.pid = self.proc.pid
        self.write_fd = self.proc.stdin.fileno()
        self.read_fd = self.proc.stdout.fileno()
        self.tail: collections.deque[str] = collections.deque(maxlen=40)
        self._log_mode = log
        self._logger = logging.getLogger(f"pypods.pod.{pod_name}")
        self._drain = threading.Thread(target=self._forward, name=f"pypods-{pod_name}-log", daemon=True)
        self._drain.start()
        _live.add(self)

    def _forward(self) -> None:
        stream = self.proc.stderr
        assert stream is not None
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "backslashreplace").rstrip("\n")
            self.tail.append(line)
            if self._log_mode == "logging":
                self._logger.info("%s", line)
            else:
                with _output_lock:
                    try:
                        sys.stderr.write(f"[{self.pod_name}] {line}\n")
                        sys.stderr.flush()
                    except (OSError, ValueError):
                        pass

    def alive(self) -> bool:
        return self.proc.poll() is None

    def interrupt(self) -> None:
        """Pass a Ctrl-C on to the pod function (the worker turns it into an error reply)."""
        if self.alive():
            try:
                os.kill(self.pid, signal.SIGINT)
            except OSError:
                pass

    def exit_report(self, wait: float = 1.0) -> tuple[int | None, str]:
        """After the pipe closed: the exit status and the last lines the worker wrote to stderr."""
        try:
            code = self.proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            code = None
        self._drain.join(timeout=0.5)
        return code, "\n".join(self.tail)

    def kill(self) -> None:
        """End the worker now (SIGKILL) and reap it."""
        if self.proc.poll() is None:
            try:
                self.proc.kill()
            except OSError:
                pass
        self._close_pipes()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - a kill that did not take
            pass
        self._end_drain()
        _live.discard(self)

    def stop(self, grace: float = 2.0) -> None:
        """Ask the worker to finish (close its input), then kill it if it has not within *grace*."""
        self._close_pipes()
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.kill()
        self._end_drain()
        _live.discard(self)

    def _end_drain(self) -> None:
        self._drain.join(timeout=0.5)
        if not self._drain.is_alive() and self.proc.stderr is not None:
            self.proc.stderr.close()

    def _close_pipes(self) -> None:
        # Only the input: the output fd may be in a reader's os.read; closing it there could hand
        # the number to another file. The connection releases it once nobody reads (release()).
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except OSError:
            pass

    def release(self) -> None:
        """Close the output pipe; call only when no thread can be reading it."""
        try:
            if self.proc.stdout is not None:
                self.proc.stdout.close()
        except OSError:
            pass


@atexit.register
def _end_all() -> None:
    """No pod process outlives the client: close inputs first (fast exits), then kill stragglers."""
    workers = list(_live)
    for worker in workers:
        worker._close_pipes()
    for worker in workers:
        try:
            worker.proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            worker.kill()
