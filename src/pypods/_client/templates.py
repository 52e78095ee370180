"""Serve a pod from a warm template: one process imports ``pod.py``, and each worker is a fork of it.

The template (``_worker/template.py``) is started like a worker, in its own session, with one end
of a private socketpair; each worker is asked for over it, with the worker's new pipes passed as
SCM_RIGHTS, and the template answers with the child's pid. From then on the child is a worker
like any other (``ForkedWorker``): the same pipes, hello and calls; its death is seen through a
pidfd, its exit status and peak RSS come from the template (which reaps it: it is not our child).

Where the template cannot be made safe (importing pod.py raised or started threads, or the
platform has no ``fork``), workers start fresh and a one-line notice says why, once per template.
A reload makes a new pool, and with it a new template (``TemplateSource`` belongs to one pool).
"""

from __future__ import annotations

import array
import atexit
import json
import logging
import os
import queue
import socket
import subprocess
import threading
import time
import weakref
from typing import Any

from .._env.tools import clean_environ
from .._worker import TEMPLATE_BOOTSTRAP
from .._worker.sharedmem import open_pair
from . import forking, limits
from .debugrelay import open_relay
from .process import WORKER_DIR, WorkerProcess, _current_output_lock, forward_lines, widen_pipes

_log = logging.getLogger("pypods")
FORK_TIMEOUT = 10.0  # seconds the template may take to fork (it takes milliseconds)
_live: weakref.WeakSet[Template] = weakref.WeakSet()


class TemplateError(Exception):
    """The template cannot serve (not ready, gone, or refused a fork): start the worker fresh."""


class Template:
    """One template process of a pod and the socket to ask it for workers."""

    def __init__(
        self, python: str, pod_name: str, pod_dir: str, project_root: str, env: dict[str, str], log: str, start: float
    ) -> None:
        self.pod_name = pod_name
        self._owner = os.getpid()
        self._lock = threading.Lock()  # one fork request at a time: replies come in order
        self._replies: queue.Queue[dict[str, Any]] = queue.Queue()
        self._exits: dict[int, dict[str, Any]] = {}
        self._exited = threading.Condition()
        self._buffer = b""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock = ours
        argv = [
            python,
            "-I",
            "-c",
            TEMPLATE_BOOTSTRAP,
            WORKER_DIR,
            pod_name,
            pod_dir,
            project_root,
            str(theirs.fileno()),
        ]
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=clean_environ(env),
                close_fds=True,
                pass_fds=(theirs.fileno(),),
                start_new_session=True,  # Ctrl-C in the client's terminal must not reach it
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        assert self.proc.stderr is not None
        logger = logging.getLogger(f"pypods.pod.{pod_name}")
        self._drain = threading.Thread(
            target=forward_lines,
            args=(self.proc.stderr.fileno(), pod_name, log, logger, None),
            name=f"pypods-{pod_name}-template-log",
            daemon=True,
        )
        self._drain.start()
        _live.add(self)
        forking.track(self)
        self._sock.settimeout(start)
        try:
            hello = self._read()
        except (OSError, ValueError, EOFError) as exc:  # it died importing pod.py (a fresh worker says how)
            self.close()
            raise TemplateError(f"the template did not start ({exc})") from exc
        if not hello.get("ready"):
            self.close()
            raise TemplateError(str(hello.get("why") or "the template did not start"))
        self.pid = int(hello["pid"])
        self._sock.settimeout(None)
        self._reader = threading.Thread(target=self._listen, name=f"pypods-{pod_name}-template", daemon=True)
        self._reader.start()

    def _read(self) -> dict[str, Any]:
        while b"\n" not in self._buffer:
            data = self._sock.recv(65536)
            if not data:
                raise EOFError("the template exited")
            self._buffer += data
            if len(self._buffer) > 1 << 20:
                raise ValueError("the template sent a line over 1 MiB")
        line, _, self._buffer = self._buffer.partition(b"\n")
        message = json.loads(line)
        if not isinstance(message, dict):
            raise ValueError("not an object")
        return message

    def _listen(self) -> None:
        """Sort what the template says: exit notices here, replies to fork requests to the waiter."""
        while True:
            try:
                message = self._read()
            except (OSError, ValueError, EOFError):
                self._replies.put({"error": "the template exited"})
                with self._exited:
                    self._exits[-1] = {}  # the template itself: nobody reports exits any more
                    self._exited.notify_all()
                return
            if "exited" in message:
                with self._exited:
                    self._exits[int(message["exited"])] = message
                    self._exited.notify_all()
            else:
                self._replies.put(message)

    def exit_of(self, pid: int, timeout: float) -> dict[str, Any] | None:
        """The template's report of child *pid*'s exit (``code``, ``maxrss``), waiting up to *timeout* s."""
        deadline = time.monotonic() + timeout
        with self._exited:
            while pid not in self._exits:
                left = deadline - time.monotonic()
                if -1 in self._exits:  # the template is gone: the child was reparented, ask /proc
                    if not os.path.exists(f"/proc/{pid}") or _zombie(pid):
                        return {"code": None}
                    left = min(left, 0.01)
                if left <= 0:
                    return None
                self._exited.wait(left)
            return self._exits[pid]

    def fork(self, codec: str, describe: bool, log: str, memory: int | None, debug: bool = False) -> ForkedWorker:
        """Ask the template for one more worker; raises TemplateError where it cannot give one."""
        to_worker = os.pipe()
        from_worker = os.pipe()
        err = os.pipe()
        pair = open_pair()
        debug_end = open_relay(self.pod_name, _current_output_lock)[0] if debug else None
        theirs = [to_worker[0], from_worker[1], err[1]] + ([] if pair is None else [pair[1].fileno()])
        theirs += [] if debug_end is None else [debug_end.fileno()]
        mine = [to_worker[1], from_worker[0], err[0]]
        try:
            fields = {"op": "fork", "codec": codec, "describe": describe, "channel": pair is not None, "debug": debug}
            request = json.dumps(fields).encode() + b"\n"
            with self._lock:
                try:
                    self._sock.sendmsg(
                        [request], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", theirs).tobytes())]
                    )
                except OSError as exc:
                    raise TemplateError(f"the template is gone ({exc})") from exc
                try:
                    reply = self._replies.get(timeout=FORK_TIMEOUT)
                except queue.Empty:
                    raise TemplateError(f"the template did not answer within {FORK_TIMEOUT}s") from None
        except BaseException:
            for fd in mine:
                os.close(fd)
            if pair is not None:
                pair[0].close()
            raise
        finally:
            for fd in theirs[:3]:
                os.close(fd)
            if pair is not None:
                pair[1].close()
            if debug_end is not None:
                debug_end.close()
        if "pid" not in reply:
            for fd in mine:
                os.close(fd)
            if pair is not None:
                pair[0].close()
            raise TemplateError(str(reply.get("error") or "the template refused"))
        pid = reply["pid"]
        if not isinstance(pid, int) or _parent(pid) != self.pid:  # never adopt (and later kill) a stranger
            for fd in mine:
                os.close(fd)
            if pair is not None:
                pair[0].close()
            raise TemplateError(f"the template named pid {pid!r}, which is not its child")
        return ForkedWorker(self, pid, mine, None if pair is None else pair[0], codec, log, memory)

    def _forget_after_fork(self) -> None:
        _live.discard(self)
        self._lock = threading.Lock()
        self._exited = threading.Condition()
        try:
            self._sock.close()  # the parent's template; our copy only
        except OSError:
            pass

    def close(self) -> None:
        """End the template: close its socket (it exits), kill its group if it lingers, and reap it."""
        if self._owner != os.getpid():
            return
        _live.discard(self)
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        try:
            self.proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, 9)
            except OSError:
                pass
            self.proc.wait()
        self._drain.join(timeout=0.5)
        if self.proc.stderr is not None and not self._drain.is_alive():
            self.proc.stderr.close()


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            return int(file.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            return file.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return True


class _ForkedProc:
    """What ``WorkerProcess`` needs of a ``Popen``, for a worker that is the template's child."""

    def __init__(self, template: Template, pid: int, fds: list[int]) -> None:
        self.template = template
        self.pid = pid
        self.returncode: int | None = None
        self.maxrss: int | None = None
        self.stdin = open(fds[0], "wb", buffering=0)
        self.stdout = open(fds[1], "rb", buffering=0)
        self.stderr = open(fds[2], "rb", buffering=0)

    def exited(self, timeout: float) -> bool:
        if self.returncode is not None:
            return True
        report = self.template.exit_of(self.pid, timeout)
        if report is None:
            return False
        code = report.get("code")
        self.returncode = code if isinstance(code, int) else -9  # reparented and gone: status unknown
        maxrss = report.get("maxrss")
        self.maxrss = maxrss if isinstance(maxrss, int) else None
        return True

    def poll(self) -> int | None:
        self.exited(0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self.exited(1e9 if timeout is None else timeout):
            raise subprocess.TimeoutExpired("forked worker", timeout or 0)
        assert self.returncode is not None
        return self.returncode


class ForkedWorker(WorkerProcess):
    """A worker forked by the template: the same pipes and protocol as a spawned one, not our child."""

    def __init__(
        self, template: Template, pid: int, fds: list[int], channel: Any, codec: str, log: str, memory: int | None
    ) -> None:
        self.pod_name = template.pod_name
        self.codec = codec
        self._owner = os.getpid()
        self._forgotten = 0
        self.channel = channel
        self.template = template
        self.proc = _ForkedProc(template, pid, fds)  # type: ignore[assignment]
        self._adopt(log, memory)
        widen_pipes(self.write_fd, self.read_fd)
        if self._peak is None:
            self._peak = limits.watch(self, None)  # no rusage of a stranger's child: sample its peak

    def _exited(self, timeout: float) -> bool:
        proc: _ForkedProc = self.proc  # type: ignore[assignment]
        return proc.exited(timeout)

    def _reap(self) -> int:
        proc: _ForkedProc = self.proc  # type: ignore[assignment]
        code = proc.wait(timeout=1.0) if proc.exited(1.0) else -9
        if proc.maxrss:
            self._peak_rss = proc.maxrss
        return code


class TemplateSource:
    """One pool's template, made at the first worker's start; None of it where it is not safe."""

    def __init__(self, make: Any) -> None:
        self._make = make  # () -> Template; raises TemplateError
        self._lock = threading.Lock()
        self._template: Template | None = None
        self._refused = False
        self._closed = False
        forking.track(self)

    def fork(self, codec: str, describe: bool, log: str, memory: int | None, debug: bool) -> ForkedWorker | None:
        """A forked worker, or None: start it fresh (a notice said why, once)."""
        with self._lock:
            if self._closed or self._refused:
                return None
            if self._template is None:
                try:
                    self._template = self._make()
                except TemplateError as exc:
                    self._refused = True
                    _log.warning("pypods: pod %r: workers start fresh, not from a template: %s", self._name(), exc)
                    return None
            template = self._template
        try:
            return template.fork(codec, describe, log, memory, debug)
        except TemplateError as exc:
            with self._lock:
                if self._template is template:
                    self._template = None  # the next start makes a new one (or gives up the same way)
            template.close()
            _log.warning("pypods: pod %r: this worker starts fresh, not from the template: %s", template.pod_name, exc)
            return None

    def _name(self) -> str:
        return getattr(self._make, "pod_name", "?")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            template, self._template = self._template, None
        if template is not None:
            template.close()

    def _forget_after_fork(self) -> None:
        self._lock = threading.Lock()
        self._template = None  # the parent's; the child makes its own


@atexit.register
def _end_all() -> None:
    for template in list(_live):
        template.close()
