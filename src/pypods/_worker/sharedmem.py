"""Move big buffers as sealed memfds over a private Unix socket, so what the receiver checked cannot change.

A named file in ``/dev/shm`` can be swapped for a FIFO or a symlink, truncated under a mapping
(SIGBUS), written after it was read, reached by any process of the user, and leaked by a crash.
A memfd has no name; once sealed it can neither change nor shrink; and it lives only as long as a
descriptor to it does, so a killed client or worker leaves nothing behind.

Protocol (one ``socketpair(AF_UNIX, SOCK_SEQPACKET)`` per worker, made by the client):

1. The sender copies the buffer into a memfd, seals it (write, shrink, grow, seal) and sends the
   descriptor in one message: 8 bytes of token (unsigned, little-endian) + SCM_RIGHTS with one fd.
   Tokens come from one 64-bit counter per process, so frames and fds need no common lock.
2. The frame carries ``{"$t": "shm", "v": [token, size], "k": kind}`` instead of the bytes. The fd
   message is queued before the frame is written, so it has arrived when the frame is read.
3. The receiver reads the socket without blocking until the frame's token arrives, keeping the
   fds of later frames in a table of at most ``MAX_PENDING``. It checks the fd (regular file, all
   four seals, the declared size, pages really allocated), then maps it privately (``raw``:
   arrays read in place) or copies it out, and closes it.
4. A message of a token with no fd means "forget it": the sender's frame was never sent.

Where memfds or SCM_RIGHTS are missing (macOS, old kernels), ``OutOfBand`` has no channel and its
threshold is infinite: every buffer goes inline in the frame.
"""

from __future__ import annotations

import array
import itertools
import mmap
import os
import select
import socket
import stat
import struct
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

try:
    import fcntl
except ImportError:  # Windows: no memfds; every buffer goes inline
    fcntl = None  # type: ignore[assignment]

DEFAULT_THRESHOLD = 1 << 20
INLINE = sys.maxsize  # the threshold of an OutOfBand without a channel: nothing goes out of band
MAX_PENDING = 64  # fds received from a pod but not yet claimed by a frame; more is a protocol error
WORKER_PENDING = 1024  # the same in the worker, which trusts its client (many threads may send at once)
SEND_TIMEOUT = 10.0  # seconds to wait for room on the socket before giving up on a peer that never reads

# Linux values, for Pythons whose fcntl module lacks the names (they are stable kernel ABI).
_F_ADD_SEALS = getattr(fcntl, "F_ADD_SEALS", 1033)
_F_GET_SEALS = getattr(fcntl, "F_GET_SEALS", 1034)
SEALS = (
    getattr(fcntl, "F_SEAL_SEAL", 0x1)
    | getattr(fcntl, "F_SEAL_SHRINK", 0x2)
    | getattr(fcntl, "F_SEAL_GROW", 0x4)
    | getattr(fcntl, "F_SEAL_WRITE", 0x8)
)
_TOKEN = struct.Struct("<Q")  # an fd message's whole payload: the sender's 64-bit token
_FD_SPACE = socket.CMSG_SPACE(array.array("i").itemsize) if hasattr(socket, "CMSG_SPACE") else 0
_RECV_FLAGS = getattr(socket, "MSG_DONTWAIT", 0) | getattr(socket, "MSG_CMSG_CLOEXEC", 0)

_tokens = itertools.count(1)
_token_lock = threading.Lock()


class SharedMemoryError(ValueError):
    """A shared-memory buffer was refused: unknown token, full table, or not a sealed memfd of its size.

    The decoder turns it into its ``DecodeError`` (the client then raises ``PodProtocolError``).
    """


def _next_token() -> int:
    with _token_lock:
        return next(_tokens)


_supported: Optional[bool] = None


def supported() -> bool:
    """True when this process can create sealed memfds and pass descriptors over a Unix socket."""
    global _supported
    if _supported is None:
        _supported = False
        needed = (
            fcntl is not None,
            hasattr(os, "memfd_create"),
            hasattr(socket, "SCM_RIGHTS"),
            hasattr(socket, "SOCK_SEQPACKET"),
        )
        if all(needed) and _FD_SPACE:
            try:
                os.close(_sealed_memfd(b"ok"))
                _supported = True
            except OSError:  # ENOSYS (kernel < 3.17) or EINVAL (no sealing)
                pass
    return _supported


def _sealed_memfd(data: Any) -> int:
    """A new memfd holding *data*, sealed so that nobody can change, shrink or grow it."""
    view = memoryview(data).cast("B")
    fd = os.memfd_create("pypods", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        written = 0
        while written < len(view):
            written += os.write(fd, view[written:])
        fcntl.fcntl(fd, _F_ADD_SEALS, SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_pair() -> Optional[Tuple[FdChannel, socket.socket]]:
    """A channel for this side and the socket to hand to the worker, or None where memfds are missing."""
    if not supported():
        return None
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    return FdChannel(mine), theirs


class FdChannel:
    """One end of the private socket: sends sealed memfds, receives them into a bounded table.

    Safe to use from many threads: tokens are unique per process, each message is one atomic
    ``sendmsg``, and the table is drained under a lock.
    """

    def __init__(self, sock: socket.socket, limit: Optional[int] = None) -> None:
        self.sock = sock
        self.limit = MAX_PENDING if limit is None else limit
        self.sends = supported()  # this side can make memfds (receiving needs only the socket)
        self._pending: Dict[int, int] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_fd(cls, fd: int) -> FdChannel:
        """The worker's end, from the descriptor number the client passed in argv."""
        os.set_inheritable(fd, False)  # programs the pod starts do not get it
        return cls(socket.socket(fileno=fd), WORKER_PENDING)

    def send(self, data: Any, deadline: Optional[float] = None) -> int:
        """Seal *data* in a memfd, send it, and return its token (the fd is closed here once sent).

        A peer that is gone, or has read nothing for ``SEND_TIMEOUT`` seconds (or until *deadline*,
        a ``time.monotonic()`` value: the call's), is not an error here: the token then never
        arrives, and the frame fails on the pipe or at the receiver.
        """
        fd = _sealed_memfd(data)
        token = _next_token()
        try:
            self._sendmsg(_TOKEN.pack(token), [fd], deadline)
        except OSError:
            pass
        finally:
            os.close(fd)
        return token

    def forget(self, token: int, deadline: Optional[float] = None) -> None:
        """Tell the receiver that *token*'s frame will never come, so it closes that fd."""
        try:
            self._sendmsg(_TOKEN.pack(token), [], deadline)
        except OSError:
            pass

    def _sendmsg(self, payload: bytes, fds: List[int], until: Optional[float] = None) -> None:
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        deadline = time.monotonic() + SEND_TIMEOUT
        if until is not None:  # a call's deadline: a peer that reads nothing cannot stretch it
            deadline = min(deadline, until)
        while True:
            try:
                self.sock.sendmsg([payload], ancillary, getattr(socket, "MSG_DONTWAIT", 0))
                return
            except (BlockingIOError, InterruptedError):
                pass
            # The peer has not read what we sent before: wait for room, but not for ever.
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the peer took no shared-memory buffer in time")
            select.select([], [self.sock], [], min(1.0, remaining))

    def take(self, token: int) -> int:
        """The fd sent with *token* (the caller closes it), or SharedMemoryError."""
        with self._lock:
            if token not in self._pending:
                self._drain(token)
            fd = self._pending.pop(token, None)
        if fd is None:
            raise SharedMemoryError("no shared-memory buffer with token %d arrived" % token)
        return fd

    def _drain(self, wanted: int) -> None:
        """Read waiting messages into the table until *wanted* arrives (at most 4 x limit messages).

        Stopping at *wanted* keeps the table small: an fd is queued just before its frame, so
        what waits there is only the buffers of frames still behind the one being decoded.
        """
        for _ in range(4 * self.limit):  # bounded, so a flooding peer cannot keep us here
            if wanted in self._pending:
                return
            try:
                data, ancillary, flags, _ = self.sock.recvmsg(_TOKEN.size + 1, _FD_SPACE, _RECV_FLAGS)
            except (BlockingIOError, InterruptedError):
                return
            fds: List[int] = []
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    usable = len(payload) - len(payload) % 4
                    fds.extend(array.array("i", payload[:usable]))
            if not data and not fds:
                return  # the peer closed its end
            bad = flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC) or len(data) != _TOKEN.size or len(fds) > 1
            if bad:
                _close_all(fds)
                raise SharedMemoryError("malformed message on the shared-memory socket")
            (token,) = _TOKEN.unpack(data)
            if not fds:  # "forget": its frame will never come
                old = self._pending.pop(token, None)
                if old is not None:
                    os.close(old)
                continue
            if token in self._pending or len(self._pending) >= self.limit:
                os.close(fds[0])
                raise SharedMemoryError("more than %d shared-memory buffers wait unclaimed" % self.limit)
            self._pending[token] = fds[0]

    def close(self) -> None:
        """Close the socket and every fd still waiting in the table."""
        with self._lock:
            _close_all(list(self._pending.values()))
            self._pending.clear()
            self.sock.close()


def _close_all(fds: List[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def map_sealed(fd: int, size: int, kind: Any) -> Any:
    """Check that *fd* is a sealed memfd of *size* bytes, then copy it out or map it (``raw``).

    The mapping is private (copy-on-write): a received array is writable like a local one, and
    its writes never reach the sender. Closes *fd* in every case.
    """
    try:
        info = os.fstat(fd)  # never blocks, whatever the fd is (a FIFO's open is what blocks)
        if not stat.S_ISREG(info.st_mode):
            raise SharedMemoryError("shared-memory buffer is not a regular file")
        try:
            seals = fcntl.fcntl(fd, _F_GET_SEALS)
        except OSError as exc:
            raise SharedMemoryError("shared-memory buffer is not a memfd (%s)" % exc) from exc
        if seals & SEALS != SEALS:
            raise SharedMemoryError("shared-memory buffer is not sealed (seals 0x%x)" % seals)
        if info.st_size != size:
            raise SharedMemoryError("shared-memory buffer holds %d bytes, not %d" % (info.st_size, size))
        if info.st_blocks * 512 < size:  # sparse: the sender never paid for these pages
            raise SharedMemoryError("shared-memory buffer of %d bytes is sparse" % size)
        if size == 0:
            return b"" if kind == "bytes" else bytearray()
        if kind == "raw":
            return memoryview(mmap.mmap(fd, size, access=mmap.ACCESS_COPY))
        with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as mapped:  # shared pages: the fastest copy
            return bytearray(mapped) if kind == "bytearray" else mapped[:]
    finally:
        os.close(fd)


class OutOfBand:
    """Move buffers of ``threshold`` bytes or more out of band: one object per message being encoded.

    ``put`` sends a buffer and returns what the frame carries; ``get`` takes one back on the other
    side; ``discard`` forgets what was put for a frame that will not be sent. Without a channel
    (``channel=None``, or memfds unsupported) every buffer stays inline.
    """

    __slots__ = ("channel", "created", "deadline", "threshold")

    def __init__(self, threshold: int = DEFAULT_THRESHOLD, channel: Optional[FdChannel] = None) -> None:
        self.channel = channel
        self.deadline: Optional[float] = None  # a call's time.monotonic() deadline bounds every send
        self.threshold = threshold if channel is not None and channel.sends else INLINE
        self.created: List[int] = []  # tokens sent whose frame is not known to be written

    def attach(self, channel: FdChannel) -> None:
        """Send and receive through *channel* from now on (the worker's, once main() has it)."""
        self.channel = channel
        if channel.sends and self.threshold == INLINE:
            self.threshold = DEFAULT_THRESHOLD

    def put(self, data: Any) -> List[int]:
        """Send *data* (a bytes-like object) through a sealed memfd; return ``[token, size]``."""
        if self.channel is None:
            raise SharedMemoryError("no shared-memory channel to send on")
        size = memoryview(data).nbytes
        token = self.channel.send(data, self.deadline)
        self.created.append(token)
        return [token, size]

    def get(self, ref: Any, kind: Any) -> Any:
        """Take the buffer that ``[token, size]`` names: ``bytes``/``bytearray`` copies, ``raw`` maps."""
        if type(ref) not in (list, tuple) or len(ref) != 2 or not all(type(n) is int and n >= 0 for n in ref):
            raise SharedMemoryError("bad shared-memory reference %r" % (ref,))
        if kind not in ("bytes", "bytearray", "raw"):
            raise SharedMemoryError("bad shared-memory kind %r" % (kind,))
        if self.channel is None:
            raise SharedMemoryError("a shared-memory buffer arrived where none can")
        return map_sealed(self.channel.take(ref[0]), ref[1], kind)

    def discard(self) -> None:
        """Forget every buffer put since the last ``sent()``: their frame will not be sent."""
        if self.channel is not None:
            for token in self.created:
                self.channel.forget(token, self.deadline)
        del self.created[:]

    def sent(self) -> None:
        """The frame went out: what was put now belongs to the receiver."""
        del self.created[:]
