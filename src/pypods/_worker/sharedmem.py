"""Move big buffers as sealed memfds over a private Unix socket, so what the receiver checked cannot change.

A named file in ``/dev/shm`` can be swapped for a FIFO or a symlink, truncated under a mapping
(SIGBUS), written after it was read, reached by any process of the user, and leaked by a crash.
A memfd has no name; once sealed it can neither change nor shrink; and it lives only as long as a
descriptor to it does, so a killed client or worker leaves nothing behind.

Protocol (one ``socketpair(AF_UNIX, SOCK_SEQPACKET)`` per worker, made by the client):

1. Encoding is pure: ``OutOfBand.put`` only names a buffer (a token from one 64-bit counter per
   process) and the frame carries ``{"$t": "shm", "v": [token, size], "k": kind}`` instead of the
   bytes; the buffers wait in ``OutOfBand.outgoing`` as the frame's attachments.
2. The sender's I/O shell sends the attachments, then the frame: each attachment is copied into a
   memfd, sealed (write, shrink, grow, seal) and sent as one message, 8 bytes of token (unsigned,
   little-endian) + SCM_RIGHTS with one fd (``Upload``). It never blocks: while the socket is full
   it reads what the peer sends (full duplex), so both sides may send any number at once.
3. The receiver's shell polls the socket beside the pipe and drains it whenever it is readable
   (``FdChannel.receive``), also just before decoding a frame (its fds were sent before it). Each
   fd is checked at once (regular file, all four seals, pages really allocated), mapped privately
   and closed; the mapping, or why it was refused, waits in a bounded ``Inbox`` by token.
4. Decoding is pure too: ``OutOfBand.get`` claims the token from the inbox, checks the declared
   size, and copies the bytes out (``raw``: arrays keep the private, copy-on-write mapping).
5. A message of a token with no fd means "forget it": the sender's frame will never come.

Where memfds or SCM_RIGHTS are missing (macOS, old kernels), there is no channel and the threshold
is infinite: every buffer goes inline in the frame.
"""

from __future__ import annotations

import array
import itertools
import mmap
import os
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
# Buffers received but not yet claimed by a frame; more is a protocol error. A frame's buffers all
# arrive before it, so this bounds how many one message may carry (each is one mapping, and a
# process has about 65,000 of those).
MAX_PENDING = 4096
WORKER_PENDING = 16384  # the same in the worker, which trusts its client (many threads may send at once)
CHUNK = 4 << 20  # bytes copied into a memfd per step, so a budgeted pump stays within its budget

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
_SEND_FLAGS = getattr(socket, "MSG_DONTWAIT", 0)
# Before 3.13 a mapping keeps a duplicate of its fd: a waiting buffer then costs one descriptor.
_UNTRACKED: Dict[str, Any] = {"trackfd": False} if sys.version_info >= (3, 13) else {}

# The bytes every out-of-band reference starts with (codec.Encoder.ext of tag "shm"): a frame
# without them has no attachments (a nested one is named inside one the frame names).
SHM_TAG = b"\x02$t\x00\x04\x00\x00\x00shm\x00"

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


class Received:
    """One buffer as received: its checked, private mapping (or bytes, in tests), or why it was refused."""

    __slots__ = ("buffer", "error")

    def __init__(self, buffer: Any = None, error: Optional[str] = None) -> None:
        self.buffer = buffer
        self.error = error

    @classmethod
    def from_fd(cls, fd: int) -> Received:
        """Check that *fd* is a sealed memfd with its pages allocated, and map it; closes *fd* always."""
        try:
            info = os.fstat(fd)  # never blocks, whatever the fd is (a FIFO's open is what blocks)
            if not stat.S_ISREG(info.st_mode):
                return cls(error="shared-memory buffer is not a regular file")
            try:
                seals = fcntl.fcntl(fd, _F_GET_SEALS)
            except OSError as exc:
                return cls(error="shared-memory buffer is not a memfd (%s)" % exc)
            if seals & SEALS != SEALS:
                return cls(error="shared-memory buffer is not sealed (seals 0x%x)" % seals)
            if info.st_blocks * 512 < info.st_size:  # sparse: the sender never paid for these pages
                return cls(error="shared-memory buffer of %d bytes is sparse" % info.st_size)
            if info.st_size == 0:
                return cls(b"")
            # Private (copy-on-write): a received array is writable like a local one, and its
            # writes never reach the sender; sealed, so its bytes cannot change under us.
            return cls(mmap.mmap(fd, info.st_size, access=mmap.ACCESS_COPY, **_UNTRACKED))
        except OSError as exc:
            return cls(error="shared-memory buffer cannot be mapped (%s)" % exc)
        finally:
            os.close(fd)

    def value(self, size: int, kind: str) -> Any:
        """The buffer as *kind* (``bytes``/``bytearray`` copy it out, ``raw`` keeps the mapping)."""
        if self.error is not None:
            raise SharedMemoryError(self.error)
        buffer = self.buffer
        held = len(buffer)
        if held != size:
            self.release()
            raise SharedMemoryError("shared-memory buffer holds %d bytes, not %d" % (held, size))
        if kind == "raw":
            return memoryview(buffer if isinstance(buffer, mmap.mmap) else bytearray(buffer))
        value = bytes(buffer) if kind == "bytes" else bytearray(buffer)
        self.release()
        return value

    def release(self) -> None:
        if isinstance(self.buffer, mmap.mmap):
            self.buffer.close()
        self.buffer = None


class Inbox:
    """Buffers received and not yet claimed by a frame, by token; at most *limit* (thread-safe)."""

    def __init__(self, limit: int = MAX_PENDING) -> None:
        self.limit = limit
        self._items: Dict[int, Received] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def add(self, token: int, item: Received) -> None:
        """Keep *item* until a frame claims *token*; a full table or a reused token is refused."""
        with self._lock:
            if token not in self._items and len(self._items) < self.limit:
                self._items[token] = item
                return
        item.release()
        raise SharedMemoryError("more than %d shared-memory buffers wait unclaimed" % self.limit)

    def forget(self, token: int) -> None:
        with self._lock:
            item = self._items.pop(token, None)
        if item is not None:
            item.release()

    def claim(self, token: int) -> Received:
        """The buffer sent with *token* (it leaves the table), or SharedMemoryError."""
        with self._lock:
            item = self._items.pop(token, None)
        if item is None:
            raise SharedMemoryError("no shared-memory buffer with token %d arrived" % token)
        return item

    def clear(self) -> None:
        with self._lock:
            items, self._items = list(self._items.values()), {}
        for item in items:
            item.release()


class FdChannel:
    """One end of the private socket: non-blocking sends and receives; the caller does the waiting.

    Safe to use from many threads: each message is one atomic ``sendmsg``, receiving is serialised.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sends = supported()  # this side can make memfds (receiving needs only the socket)
        self._lock = threading.Lock()

    @classmethod
    def from_fd(cls, fd: int) -> FdChannel:
        """The worker's end, from the descriptor number the client passed in argv."""
        os.set_inheritable(fd, False)  # programs the pod starts do not get it
        return cls(socket.socket(fileno=fd))

    def fileno(self) -> int:
        return self.sock.fileno()

    def try_send(self, token: int, fd: Optional[int]) -> bool:
        """Send *fd* under *token* (None: a "forget") if the socket has room now; False if it has not.

        Raises OSError when the peer is gone.
        """
        fds = [] if fd is None else [fd]
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        try:
            self.sock.sendmsg([_TOKEN.pack(token)], ancillary, _SEND_FLAGS)
        except (BlockingIOError, InterruptedError):
            return False
        return True

    def receive(self, inbox: Inbox, most: int = 256) -> bool:
        """Move up to *most* waiting messages into *inbox* without blocking; False once the peer closed.

        Raises SharedMemoryError for a malformed message or a full inbox (a peer that floods it).
        """
        with self._lock:
            for _ in range(most):  # bounded, so a flooding peer cannot keep us here
                try:
                    data, ancillary, flags, _ = self.sock.recvmsg(_TOKEN.size + 1, _FD_SPACE, _RECV_FLAGS)
                except (BlockingIOError, InterruptedError):
                    return True
                except OSError:
                    return False
                fds: List[int] = []
                for level, kind, payload in ancillary:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                        usable = len(payload) - len(payload) % 4
                        fds.extend(array.array("i", payload[:usable]))
                if not data and not fds:
                    return False  # the peer closed its end
                bad = flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC) or len(data) != _TOKEN.size or len(fds) > 1
                if bad:
                    _close_all(fds)
                    raise SharedMemoryError("malformed message on the shared-memory socket")
                (token,) = _TOKEN.unpack(data)
                if not fds:  # "forget": its frame will never come
                    inbox.forget(token)
                    continue
                inbox.add(token, Received.from_fd(fds[0]))
            return True

    def close(self) -> None:
        self.sock.close()


def _close_all(fds: List[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class Upload:
    """One frame's attachments on their way out: sealed into memfds and sent as the socket takes them.

    ``pump`` never waits: the caller's shell polls the socket for room (and reads meanwhile).
    """

    __slots__ = ("_fd", "_written", "channel", "done", "items")

    def __init__(self, channel: FdChannel, items: List[Tuple[int, memoryview]]) -> None:
        self.channel = channel
        self.items = items
        self.done = 0  # attachments sent
        self._fd = -1  # the memfd being filled or waiting for room
        self._written = 0

    @property
    def finished(self) -> bool:
        return self.done >= len(self.items)

    def pump(self, budget: Optional[float] = None) -> bool:
        """Send what the socket takes now (for at most *budget* seconds); True when all went.

        Raises OSError when the peer is gone.
        """
        stop = None if budget is None else time.monotonic() + budget
        while self.done < len(self.items):
            token, view = self.items[self.done]
            if self._fd < 0:
                self._fd = os.memfd_create("pypods", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
                self._written = 0
            while 0 <= self._written < len(view):
                self._written += os.write(self._fd, view[self._written : self._written + CHUNK])
                if stop is not None and time.monotonic() > stop and self._written < len(view):
                    return False
            if self._written >= 0:
                fcntl.fcntl(self._fd, _F_ADD_SEALS, SEALS)
                self._written = -1  # sealed: only the send is left
            if not self.channel.try_send(token, self._fd):
                return False
            os.close(self._fd)
            self._fd = -1
            self.done += 1
            if stop is not None and time.monotonic() > stop:
                return self.done >= len(self.items)
        return True

    def abort(self) -> None:
        """The frame will not be sent: close what is unsent, and tell the peer to forget what went."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        try:
            for token, _ in self.items[: self.done]:
                if not self.channel.try_send(token, None):
                    break  # no room: the peer's table keeps them until its connection ends
        except OSError:
            pass
        self.done = len(self.items)


class OutOfBand:
    """Move buffers of ``threshold`` bytes or more out of band, without I/O: one object per message.

    ``put`` names a buffer and returns what the frame carries (the buffer waits in ``outgoing``
    for the shell to send); ``get`` takes one back from the *inbox* the shell filled. Without an
    inbox (no channel, or memfds unsupported) every buffer stays inline.
    """

    __slots__ = ("inbox", "outgoing", "threshold")

    def __init__(self, threshold: int = DEFAULT_THRESHOLD, inbox: Optional[Inbox] = None) -> None:
        self.inbox = inbox
        self.threshold = threshold if inbox is not None and supported() else INLINE
        self.outgoing: List[Tuple[int, memoryview]] = []  # this frame's attachments, to send before it

    def attach(self, inbox: Inbox) -> None:
        """Send and receive through a channel from now on (the worker's, once main() has it)."""
        self.inbox = inbox
        if supported() and self.threshold == INLINE:
            self.threshold = DEFAULT_THRESHOLD

    def put(self, data: Any) -> List[int]:
        """Name *data* (a bytes-like object) as an attachment of this frame; return ``[token, size]``."""
        if self.inbox is None:
            raise SharedMemoryError("no shared-memory channel to send on")
        view = memoryview(data).cast("B")
        token = _next_token()
        self.outgoing.append((token, view))
        return [token, view.nbytes]

    def get(self, ref: Any, kind: Any) -> Any:
        """Take the buffer that ``[token, size]`` names: ``bytes``/``bytearray`` copies, ``raw`` maps."""
        if type(ref) not in (list, tuple) or len(ref) != 2 or not all(type(n) is int and n >= 0 for n in ref):
            raise SharedMemoryError("bad shared-memory reference %r" % (ref,))
        if kind not in ("bytes", "bytearray", "raw"):
            raise SharedMemoryError("bad shared-memory kind %r" % (kind,))
        if self.inbox is None:
            raise SharedMemoryError("a shared-memory buffer arrived where none can")
        return self.inbox.claim(ref[0]).value(ref[1], kind)

    def take(self) -> List[Tuple[int, memoryview]]:
        """This frame's attachments (the shell sends them before the frame); the list starts afresh."""
        items, self.outgoing = self.outgoing, []
        return items

    def discard(self) -> None:
        """Forget every buffer put since the last ``take``: their frame will not be sent."""
        del self.outgoing[:]

    def sent(self) -> None:
        """Kept for callers of the old API: the attachments were taken with the frame."""
        del self.outgoing[:]
