"""Frames on a pipe: each frame is one BSON document, which carries its own length.

A BSON document starts with its total size as a little-endian int32, so the document *is* the
frame: no second header, no copy to add one. The reader keeps unread bytes in its buffer between
calls, so a frame split across reads, or several frames in one read, both work.
"""

from __future__ import annotations

import math
import os
import select
import struct
import time
from typing import Optional

_SIZE = struct.Struct("<i")
# The largest frame a reader accepts (1 GiB; the format's own limit is 2 GiB - 1). Buffers of 1 MiB or
# more normally travel out of band, so only a forged or runaway frame comes near it.
MAX_FRAME = 1 << 30
CHUNK = 1 << 16
MISSES, REST = 2, 16  # after 2 spins in a row that missed, the next 16 waits block without spinning


class FrameError(ValueError):
    """The byte stream is not a sequence of frames (a forged or corrupt length)."""


class PipeClosed(EOFError):
    """The other side closed the pipe (it exited, or crashed)."""


class FrameReader:
    """Read whole frames from a file descriptor, one ``os.read`` per call when frames are small."""

    __slots__ = ("_buf", "_misses", "_poll", "_rest", "_whole", "fd", "max_frame", "ready")

    def __init__(self, fd: int, max_frame: int = MAX_FRAME) -> None:
        self.fd = fd
        self._buf = bytearray()
        self._whole = None  # type: Optional[bytes]  # one whole frame as read, kept without a copy
        self.max_frame = max_frame
        self._poll = None  # type: Optional[select.poll]
        self._misses = 0  # spins in a row that ended without input
        self._rest = 0  # spins still to skip after MISSES misses in a row
        self.ready = False  # the last spin saw input arrive: a read now will not wait

    def spin(self, seconds: float) -> None:
        """Busy-wait up to *seconds* for input before a blocking read would put us to sleep.

        A process that sleeps in read() and is woken by the other side's write pays the CPU's
        wake-up from idle (about 50 µs on a virtual machine); a reply that comes within the spin
        is taken without sleeping. Costs CPU only while calls are flowing (see docs/performance.md).
        Each turn of the loop yields the CPU: when the other side is runnable on this CPU (both
        processes on one core, or a loaded machine) it runs at once instead of waiting out our spin,
        which made a small call cost two whole spins (~230 µs instead of ~35 µs). A spin misses when
        no input came in time, or when a yield gave the CPU away for more than a quarter of the spin
        (another process needed it); after MISSES misses in a row the next REST waits block at once,
        so long calls and a busy machine stop paying for a spin that does not help.
        """
        if seconds <= 0 or len(self._buf) >= 4 or self._whole is not None:
            return
        if self._rest:  # the last spins were wasted (long calls, or a busy machine): block instead
            self._rest -= 1
            return
        poll = self._poller().poll
        clock = time.perf_counter
        yield_ = getattr(os, "sched_yield", time.perf_counter)  # Unix; elsewhere a no-op
        now = clock()
        end = now + seconds
        while not poll(0):
            if now > end:
                self._missed()
                return
            yield_()
            turn, now = now, clock()
            if now - turn > seconds / 4:  # another process ran on this CPU: spinning only competes with it
                self._missed()
                return
        self._misses = 0
        self.ready = True

    def _missed(self) -> None:
        self._misses += 1
        if self._misses >= MISSES:
            self._misses, self._rest = 0, REST

    def readable(self, timeout: Optional[float]) -> bool:
        """Wait up to *timeout* seconds for bytes to read (None waits forever)."""
        if len(self._buf) >= 4 or self._whole is not None:
            return True
        # poll, not select: no lists to build, and no limit on the fd number (0.26 against 0.66 µs).
        return bool(self._poller().poll(None if timeout is None else math.ceil(timeout * 1000)))

    def _poller(self) -> select.poll:
        poll = self._poll
        if poll is None:
            poll = self._poll = select.poll()
            poll.register(self.fd, select.POLLIN)
        return poll

    def read_frame(self) -> bytes:
        """Block until one whole frame is in, and return it."""
        frame = self.pop()
        while frame is None:
            self.fill()
            frame = self.pop()
        return frame

    def _declared(self) -> int:
        # Bytes 0-3 of a frame: its total length, little-endian int32 (the BSON document's own size).
        size = _SIZE.unpack_from(self._buf, 0)[0]
        if size < 5 or size > self.max_frame:
            raise FrameError("frame length %d is out of range (5 to %d)" % (size, self.max_frame))
        return int(size)

    def fill(self) -> None:
        """Read once (blocking if nothing is there); raise PipeClosed at end of file.

        Never allocates from a declared length alone: a read asks for at most as many bytes as the
        buffer already holds (at least 64 KiB), so memory grows only with the bytes that arrived.
        """
        buf = self._buf
        want = CHUNK
        if len(buf) >= 4:
            want = max(min(_SIZE.unpack_from(buf, 0)[0] - len(buf), len(buf)), CHUNK)
        self._fill(want)

    def feed(self, data: bytes) -> None:
        """Add bytes read elsewhere (an event loop's reader callback)."""
        self._keep(data)

    def pop(self) -> Optional[bytes]:
        """Return the next whole frame if the buffer holds one, else None (never reads)."""
        frame = self.peek()
        self._whole = None
        return frame

    def peek(self) -> Optional[bytes]:
        """The next whole frame, left in the reader until ``drop()`` (the same object each time), or None.

        A reader that routes frames to other threads peeks, hands the frame on, then drops it: an
        interruption between the two can repeat a hand-over (the caller notices by identity) but
        never lose a frame.
        """
        whole = self._whole
        if whole is not None:
            return whole
        buf = self._buf
        if len(buf) < 4:
            return None
        size = self._declared()
        if len(buf) < size:
            return None
        frame = bytes(buf[:size]) if len(buf) > size else bytes(buf)
        del buf[:size]
        self._whole = frame
        return frame

    def drop(self) -> None:
        """Consume the frame ``peek()`` returned."""
        self._whole = None

    def _fill(self, want: int) -> None:
        data = os.read(self.fd, want)
        if not data:
            raise PipeClosed("pipe closed with %d bytes of a frame unread" % len(self._buf))
        self._keep(data)

    def _keep(self, data: bytes) -> None:
        # The usual case, one read bringing exactly one frame into an empty buffer, keeps the bytes
        # object as the frame: no copy into the buffer and none out of it (a 100 KiB frame costs two).
        buf = self._buf
        if not buf and self._whole is None and 5 <= len(data) <= self.max_frame:
            if _SIZE.unpack_from(data, 0)[0] == len(data):
                self._whole = bytes(data)  # bytes(b) of a bytes object is b itself: no copy
                return
        # Bytes after a kept (or peeked) frame go to the buffer, behind it: the frame stays the same
        # object until drop(), which the client's router relies on (an interrupted hand-over is
        # noticed by identity; a copy of it would be handed over twice: a stream item repeated).
        buf += data


def write_all(fd: int, data: bytes | bytearray) -> None:
    """Write every byte of *data* to *fd* (a pipe write may be partial for large frames)."""
    written = os.write(fd, data)
    if written == len(data):
        return
    view = memoryview(data)
    while written < len(view):
        written += os.write(fd, view[written:])
