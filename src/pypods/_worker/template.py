"""Import a pod once and fork each of its workers from that state, on request over a private socket.

The client starts this like a worker (``python -I -c TEMPLATE_BOOTSTRAP``) with one end of a
socketpair as ``argv[3]``; the protocol on it is one JSON object per line:

1. After importing ``pod.py`` the template says ``{"ready": true, "pid": ...}``, or
   ``{"ready": false, "why": ...}`` and exits: the import raised (a fresh worker reports it the
   usual way), or it started threads, or this platform has no ``fork``.
2. ``{"op": "fork", "codec": ..., "describe": ...}`` carries, as SCM_RIGHTS, the new worker's
   protocol read end, protocol write end, stderr write end and (optionally) its shared-memory
   socket. If the template still has one thread (``/proc/self/task``, the kernel's count, not only
   ``threading``'s), it forks; the child leads a session of its own, takes those fds and serves as
   any worker does (the same hello). The template answers ``{"pid": ...}`` or ``{"error": ...}``.
3. When a child ends, the template reaps it and says ``{"exited": pid, "code": ..., "maxrss": ...}``
   (code as ``Popen.returncode``: negative for a signal), since the client cannot wait for a
   process that is not its child.
4. End of file on the socket: the client is gone or closed the pod; the template exits (its
   children notice their parent is gone and exit, as workers do when the client dies).

The template never holds a client's pipes beyond the fork that hands them on (it closes its
copies at once), nor any call state: it never serves a call itself.
"""

from __future__ import annotations

import array
import importlib
import json
import os
import signal
import socket
import sys
from typing import Any, Dict, List, Optional, Tuple

from . import debugger, reaper, serve
from .framing import FrameError, PipeClosed
from .sharedmem import FdChannel

MAX_FDS = 5
MAX_LINE = 4096


def _threads() -> int:
    """How many threads this process has, as the kernel counts them (``threading`` misses C threads)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        import threading

        return threading.active_count()


class Template:
    def __init__(self, pod_name: str, pod_dir: str, control: socket.socket) -> None:
        self.pod_name = pod_name
        self.pod_dir = pod_dir
        self.control = control
        self.buffer = b""

    def send(self, message: Dict[str, Any]) -> None:
        # One line per send() call (each under 4 KiB, so one syscall), and SIGCHLD blocked meanwhile:
        # the handler's exit notice (also sent from the main thread) never lands inside a reply.
        data = json.dumps(message).encode() + b"\n"
        blocked = hasattr(signal, "pthread_sigmask")
        if blocked:
            old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
        try:
            self.control.sendall(data)
        except OSError:
            pass
        finally:
            if blocked:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def receive(self) -> Tuple[Optional[Dict[str, Any]], List[int]]:
        """The next request and the fds that came with it; (None, []) at end of file."""
        fds: List[int] = []
        while b"\n" not in self.buffer:
            data, ancdata, _flags, _addr = self.control.recvmsg(
                MAX_LINE, socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)
            )
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    got = array.array("i")
                    got.frombytes(payload[: len(payload) - len(payload) % got.itemsize])
                    fds.extend(got)
            if not data:
                for fd in fds:
                    os.close(fd)
                return None, []
            self.buffer += data
            if len(self.buffer) > MAX_LINE:
                raise ValueError("request too long")
        line, _, self.buffer = self.buffer.partition(b"\n")
        return json.loads(line.decode()), fds

    def on_child(self, signum: int, frame: Any) -> None:
        while True:
            try:
                pid, status, usage = os.wait3(os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            self.send({"exited": pid, "code": code, "maxrss": usage.ru_maxrss * 1024})

    def fork(self, request: Dict[str, Any], fds: List[int]) -> Dict[str, Any]:
        threads = _threads()
        if threads > 1:
            return {"error": "the template has %d threads now (pod code started them): forking is not safe" % threads}
        if len(fds) < 3:
            return {"error": "a fork request needs 3 or 4 fds, got %d" % len(fds)}
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()  # else the child would write the template's buffered output again
            except (OSError, ValueError):
                pass
        pid = os.fork()
        if pid == 0:
            try:
                self.child(request, fds)
            finally:
                os._exit(0)
        return {"pid": pid}

    def child(self, request: Dict[str, Any], fds: List[int]) -> None:
        """In the forked worker: take the fds, forget the template, serve as ``serve.main`` does.

        Keep the steps from ``Worker(...)`` on in step with the end of ``serve.main``.
        """
        os.setsid()  # a session and group of our own, as a spawned worker's (start_new_session)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        template = os.getppid()
        self.control.close()
        proto_in, proto_out, err = fds[:3]
        rest = fds[3:]
        channel_fd = rest.pop(0) if request.get("channel") and rest else -1
        if request.get("debug") and rest:
            debugger.attach(rest.pop(0))
        os.dup2(err, 2)
        os.dup2(err, 1)  # what the pod prints lands in its log, as in _guard_stdio
        os.close(err)
        reaper.become_subreaper()  # not inherited across fork
        serve._watch_parent(template)  # the template exits when the client goes: so do we
        worker = serve.Worker(self.pod_name, self.pod_dir, proto_in, proto_out, str(request.get("codec") or "bson"))
        if channel_fd >= 0:
            worker.attach(FdChannel.from_fd(channel_fd))
        worker.describe = bool(request.get("describe", True))
        signal.signal(signal.SIGINT, worker.on_sigint)
        worker.load("pods.%s.pod" % self.pod_name)  # imported already: sys.modules has it
        try:
            worker.hello()
            worker.serve()
        except (PipeClosed, FrameError, BrokenPipeError):
            pass
        finally:
            worker.inbox.clear()
            try:
                sys.stdout.flush()
            except (OSError, ValueError):
                pass
            serve._end_children()

    def run(self) -> int:
        signal.signal(signal.SIGCHLD, self.on_child)
        self.send({"ready": True, "pid": os.getpid()})
        while True:
            try:
                request, fds = self.receive()
            except (OSError, ValueError) as exc:
                print("pypods: template: bad request: %s" % exc, file=sys.stderr)
                return 1
            if request is None:
                return 0
            try:
                reply = self.fork(request, fds) if request.get("op") == "fork" else {"error": "unknown op"}
            except OSError as exc:
                reply = {"error": "fork failed: %s" % exc}
            for fd in fds:
                try:
                    os.close(fd)  # the child's now, or nobody's: never the template's to keep
                except OSError:
                    pass
            self.send(reply)


def main(argv: List[str]) -> int:
    """Entry point: ``argv`` is ``[pod_name, pod_dir, project_root, control fd]``."""
    pod_name, pod_dir, project_root = argv[:3]
    control = socket.socket(fileno=int(argv[3]))
    template = Template(pod_name, pod_dir, control)
    serve.quiet_stdio()
    sys.breakpointhook = serve._no_breakpoint
    sys.path[:] = [p for p in sys.path if p not in ("", project_root)]
    if not hasattr(os, "fork"):
        template.send({"ready": False, "why": "this platform has no fork"})
        return 0
    try:
        serve.import_pods_package(project_root)
        importlib.import_module("pods.%s.pod" % pod_name)
    except BaseException as exc:  # a fresh worker reports the import error the usual way
        template.send({"ready": False, "why": "importing pod.py raised %s" % type(exc).__name__})
        return 0
    threads = _threads()
    if threads > 1:
        template.send(
            {
                "ready": False,
                "why": "importing pod.py started %d thread(s), and forking is safe only with one" % (threads - 1),
            }
        )
        return 0
    return template.run()
