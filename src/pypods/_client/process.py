"""Start a worker in a pod's interpreter with private pipes, forward its output, and end it for sure.

The worker leads a session and process group of its own, so ending it ends everything it started
(``os.killpg``). Its stderr is forwarded in lines of at most ``MAX_LINE`` bytes, and the tail kept
for crash reports holds at most ``TAIL_BYTES``: an endless line cannot grow the client's memory.
"""

from __future__ import annotations

import atexit
import collections
import fcntl
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

from .._env.tools import clean_environ
from .._terminal import for_terminal
from .._worker import BOOTSTRAP
from .._worker.debugger import ENV as DEBUG_ENV
from .._worker.reaper import end_tree
from .._worker.sharedmem import FdChannel, open_pair
from . import forking, limits
from .cgroups import WorkerCgroup
from .debugrelay import open_relay
from .diagnosis import explain

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

MAX_LINE = 64 * 1024  # bytes of one stderr line forwarded; the rest of a longer line is dropped
TAIL_BYTES = 16 * 1024  # bytes of the last stderr lines kept for a crash report
TAIL_LINES = 40
CUT_MARK = " [pypods: line cut]"
WORKER_DIR = str(Path(__file__).resolve().parent.parent / "_worker")
_output_lock = threading.Lock()  # one whole line at a time, whichever worker wrote it
_live: weakref.WeakSet[WorkerProcess] = weakref.WeakSet()


def _new_output_lock() -> None:
    global _output_lock
    _output_lock = threading.Lock()  # a parent's drain thread may have held it at the fork


forking.on_fork(_new_output_lock)


def _current_output_lock() -> threading.Lock:
    return _output_lock


PIPE_SIZE = 1 << 18  # bytes each protocol pipe holds (Linux; the default 64 KiB splits 100 KiB frames)


def widen_pipes(*fds: int) -> None:
    """Let each pipe hold PIPE_SIZE bytes, so a frame of up to that size goes in one write and one read.

    A frame bigger than the pipe is written in pieces, each waiting for the reader to drain the
    last (two context switches per 64 KiB). Best effort: Linux only, and refused past the user's
    pipe memory (``/proc/sys/fs/pipe-user-pages-soft``), where the default size stays.
    """
    setsize = getattr(fcntl, "F_SETPIPE_SZ", 1031 if sys.platform.startswith("linux") else None)
    if setsize is None:
        return
    for fd in fds:
        try:
            fcntl.fcntl(fd, setsize, PIPE_SIZE)
        except OSError:
            pass


def _own_peak_rss() -> int:
    """This process's peak RSS in bytes (0 where ``resource`` is missing)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


class WorkerProcess:
    """One worker OS process: ``python -I -c BOOTSTRAP`` with stdin/stdout as the protocol pipes.

    The worker moves the protocol off fds 0 and 1 at once (see ``_worker/serve.py``), so whatever
    the pod prints arrives on its stderr pipe, which a thread here forwards line by line. Big
    buffers travel as sealed memfds over a private socketpair (``channel``; None where the
    platform lacks memfds, and then buffers go inline).
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
        memory: int | None = None,
        debug: bool = False,
    ) -> None:
        self.pod_name = pod_name
        self.codec = codec
        self._owner = os.getpid()  # only this process ever signals the worker (not a forked child)
        self._forgotten = 0  # the pid of the forked child that forgot this worker (_forget_after_fork)
        flag = "1" if describe else "0"
        pair = open_pair()
        self.channel: FdChannel | None = None if pair is None else pair[0]
        theirs = -1 if pair is None else pair[1].fileno()
        argv = [python, "-I", "-c", BOOTSTRAP, WORKER_DIR, pod_name, pod_dir, project_root, codec, flag, str(theirs)]
        environ = clean_environ(env)
        debug_end = None
        if debug:  # breakpoint() in the pod: a pdb prompt here (debugrelay.py), over a socket of its own
            debug_end, _ = open_relay(pod_name, _current_output_lock)
            environ[DEBUG_ENV] = str(debug_end.fileno())
        passed = tuple(fd for fd in (theirs, -1 if debug_end is None else debug_end.fileno()) if fd >= 0)
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=environ,
                bufsize=0,
                close_fds=True,
                pass_fds=passed,
                # A session (and process group) of its own: Ctrl-C in the client's terminal must not
                # reach the worker, and killing the group ends every process the pod started.
                start_new_session=True,
            )
        except BaseException:
            if self.channel is not None:
                self.channel.close()
            raise
        finally:
            if pair is not None:
                pair[1].close()  # the worker holds it now
            if debug_end is not None:
                debug_end.close()  # likewise; the relay ends when the worker does
        self._adopt(log, memory)

    def _adopt(self, log: str, memory: int | None) -> None:
        """The worker runs (``self.proc``): its cgroup and limit, its pipes, the thread forwarding its stderr."""
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        self.pid = self.proc.pid
        self._cgroup = WorkerCgroup.enter(self.pid, memory)  # None unless this user may make cgroups
        self._init_limits(memory)
        self.write_fd = self.proc.stdin.fileno()
        self.read_fd = self.proc.stdout.fileno()
        widen_pipes(self.write_fd, self.read_fd)
        self.tail: collections.deque[str] = collections.deque()
        self._tail_bytes = 0
        self._tail_lock = threading.Lock()  # the drain thread appends while a crash report reads
        self._log_mode = log
        self._logger = logging.getLogger(f"pypods.pod.{self.pod_name}")
        self._drain = threading.Thread(target=self._forward, name=f"pypods-{self.pod_name}-log", daemon=True)
        self._drain.start()
        _live.add(self)
        forking.track(self)

    def _init_limits(self, memory: int | None) -> None:
        """Cap the worker at *memory* bytes: the kernel's memory.max where its cgroup took it, else a watch."""
        self.memory = memory
        self._killed_by = ""  # why pypods ended the worker, if it did ("limit", "close", "kill")
        self._peak_rss: int | None = None  # from the reaped worker's rusage
        # A new process starts with its parent's high-water mark (the fork copies it, and exec keeps
        # it): a worker's ru_maxrss at or below the client's own at spawn says nothing of the worker.
        self._spawn_rss = _own_peak_rss()
        self._note = ""
        self._peak: limits.Peak | None = None
        if memory is not None and (self._cgroup is None or self._cgroup.memory is None):
            self._peak = limits.watch(self, memory)

    def over_limit(self, seen: int) -> None:
        """Called by the memory watch (its thread) once the worker's tree passed its limit: kill it all now."""
        if not self._killed_by:
            self._killed_by = "limit"
        self._kill_group()

    def exit_note(self, code: int | None) -> str:
        """After ``exit_report``: who ended the worker and why as far as known, and its peak RSS."""
        return self._note

    def _diagnose(self, code: int | None) -> str:
        cgroup = self._cgroup
        return explain(
            code,
            self._killed_by,
            self.memory,
            [
                self._peak_rss,
                None if self._peak is None else self._peak.value,
                None if cgroup is None else cgroup.peak(),
            ],
            cgroup is not None and cgroup.memory is not None and cgroup.oom_killed(),
            None if self._peak is None else self._peak.killed_at,
        )

    def _reap(self) -> int:
        """Reap the exited worker, keeping its peak RSS from the kernel's rusage (Linux: ru_maxrss in KiB)."""
        if self.proc.returncode is None and hasattr(os, "wait4"):
            try:
                _, status, usage = os.wait4(self.pid, 0)
            except ChildProcessError:
                pass
            else:
                self.proc.returncode = os.waitstatus_to_exitcode(status)
                peak = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
                self._peak_rss = peak if peak > self._spawn_rss else None  # else perhaps inherited
        return self.proc.wait()

    def _forget_after_fork(self) -> None:
        """In a forked child: the worker is the parent's. Close our copies of its pipes, never signal it."""
        if self._forgotten == os.getpid():
            return  # idempotent: the asyncio connection calls it first
        self._forgotten = os.getpid()
        _live.discard(self)
        self._peak = None  # the parent's watch; the child has none
        self._cgroup = None  # the parent's to kill and remove
        self._tail_lock = threading.Lock()
        self.proc.returncode = 0  # as if reaped: Popen never waits for (nor warns about) a stranger's child
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                if stream is not None:
                    stream.close()  # the child's copy only; the parent's stays open
            except OSError:
                pass
        if self.channel is not None:
            self.channel._lock = threading.Lock()
            self.channel.close()

    def _forward(self) -> None:
        stream = self.proc.stderr
        assert stream is not None
        forward_lines(stream.fileno(), self.pod_name, self._log_mode, self._logger, self._keep)

    def _keep(self, line: str) -> None:
        """Remember *line* for a crash report, within TAIL_LINES lines and about TAIL_BYTES."""
        line = line[:TAIL_BYTES]
        with self._tail_lock:
            self.tail.append(line)
            self._tail_bytes += len(line)
            while len(self.tail) > TAIL_LINES or self._tail_bytes > TAIL_BYTES:
                self._tail_bytes -= len(self.tail.popleft())

    def alive(self) -> bool:
        # Never reaps (unlike Popen.poll): exit_report reaps, and keeps the rusage that reaping gives.
        return self._owner == os.getpid() and not self._exited(0)

    def interrupt(self) -> None:
        """Pass a Ctrl-C on to the pod function (the worker turns it into an error reply)."""
        if self.alive():  # never in a forked child: the worker is the parent's
            try:
                os.kill(self.pid, signal.SIGINT)
            except OSError:
                pass

    def exit_report(self, wait: float = 1.0) -> tuple[int | None, str]:
        """After the pipe closed: the exit status and the last lines the worker wrote to stderr."""
        code = None
        if self._exited(wait):
            self._kill_group()  # the worker died: what it started goes with it (and frees the pipes)
            code = self._reap()
        if not self._note:
            self._note = self._diagnose(code)
        self._drain.join(timeout=0.5)
        with self._tail_lock:
            return code, "\n".join(self.tail)

    def kill(self) -> None:
        """End the worker and every process of its group now (SIGKILL), and reap it."""
        if not self._killed_by:
            self._killed_by = "kill"
        self._kill_group()
        self._close_pipes()
        if self._exited(5):  # else a kill that did not take
            self._reap()
        self._end()

    def stop(self, grace: float = 2.0) -> None:
        """Ask the worker to finish (close its input), then kill its group; the worker gets *grace* s."""
        if not self._killed_by:
            self._killed_by = "close"
        self._close_pipes()
        self._exited(grace)
        self.kill()  # the worker, if still there, and whatever it started

    def _exited(self, timeout: float) -> bool:
        """Wait up to *timeout* s for the worker to exit, without reaping it (so its pid stays ours)."""
        deadline = time.monotonic() + timeout
        delay = 0.001
        while self.proc.returncode is None:
            try:
                if os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None:
                    return True
            except ChildProcessError:
                return True  # reaped already
            except (AttributeError, OSError):  # no waitid here: reaping is the only way to wait
                try:
                    self.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    return False
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(2 * delay, 0.05)
        return True

    def _kill_group(self) -> None:
        # Never from a forked child: the worker is the parent's. Its descendants first, while it
        # lives: the worker is their subreaper (``_worker/reaper.py``), so even those that left its
        # group (setsid, setpgid, a double fork) are found by walking down from it; each is
        # stopped, then all are killed. Then the worker's group: it leads it (start_new_session),
        # so its pid is the group id. We signal before reaping the worker (a zombie keeps its pid),
        # and afterwards only while the group has members, whose pgid the kernel does not hand out
        # again: a stranger is never hit. Every member gets SIGKILL at once; a racing fork fails.
        # Where the worker has a cgroup of its own, cgroup.kill ends all of it at once, also the
        # orphans of a worker that died, which no walk can find (``cgroups.py``).
        if self._owner != os.getpid():
            return
        if self._cgroup is not None and self._cgroup.kill():
            pass
        elif self.proc.returncode is None and not self._exited(0):  # once it died, its orphans left its tree
            self._signal(signal.SIGSTOP)  # it cannot start one more while we walk
            end_tree(self.pid)
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except OSError:
            pass

    def _signal(self, signum: int) -> None:
        try:
            os.kill(self.pid, signum)
        except OSError:
            pass

    def _end(self) -> None:
        limits.unwatch(self)
        self._end_drain()
        if self._cgroup is not None and self._owner == os.getpid():
            self._cgroup.remove()
        if self.channel is not None:
            self.channel.close()
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


def forward_lines(
    fd: int, pod_name: str, log_mode: str, logger: logging.Logger, keep: Callable[[str], None] | None
) -> None:
    """Forward what a pod process writes to *fd*, line by line, to the client's stderr or *logger*, until EOF."""
    for raw in bounded_lines(fd):
        line = raw.decode("utf-8", "backslashreplace")
        if line.endswith("\r"):
            line = line[:-1]  # a CRLF line end, not a control to show
        if keep is not None:
            keep(line)
        if log_mode == "logging":
            logger.info("%s", line)
        else:
            with _output_lock:
                try:  # escape sequences only as text: a pod must not drive the user's terminal
                    sys.stderr.write(f"[{pod_name}] {for_terminal(line, sys.stderr)}\n")
                    sys.stderr.flush()
                except (OSError, ValueError):
                    pass


def bounded_lines(fd: int, limit: int | None = None) -> Iterator[bytes]:
    """Yield the lines read from *fd* (without newline) until EOF, each cut to *limit* bytes.

    A longer line yields its first *limit* bytes plus ``CUT_MARK``, then its rest is skipped up to
    the next newline, so memory stays bounded even for a line that never ends.
    """
    limit = MAX_LINE if limit is None else limit
    pending = b""
    skipping = False
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            chunk = b""
        if not chunk:
            if pending and not skipping:
                yield pending
            return
        pending += chunk
        while True:
            newline = pending.find(b"\n")
            if newline < 0:
                break
            if not skipping:
                yield pending[:newline] if newline <= limit else pending[:limit] + CUT_MARK.encode()
            skipping = False
            pending = pending[newline + 1 :]
        if len(pending) > limit:
            if not skipping:
                yield pending[:limit] + CUT_MARK.encode()
            skipping = True
            pending = b""


@atexit.register
def _end_all() -> None:
    """No pod process outlives the client: close inputs first (fast exits), then kill every group."""
    workers = list(_live)
    for worker in workers:
        worker._close_pipes()
    deadline = time.monotonic() + 1.0
    for worker in workers:
        try:
            worker.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        worker.kill()  # the worker if it is still there, and whatever it started
