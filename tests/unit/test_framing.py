"""FrameReader: frames whole, split, batched, or kept as read; forged lengths refused."""

from __future__ import annotations

import os
import struct
import time

import pytest

from pypods._worker.codec import Encoder
from pypods._worker.framing import MISSES, REST, FrameError, FrameReader, PipeClosed


def frame(n: int, size: int = 10) -> bytes:
    return bytes(Encoder().document({"id": n, "pad": "x" * size}))


@pytest.fixture
def pipe():
    r, w = os.pipe()
    yield r, w
    for fd in (r, w):
        try:
            os.close(fd)
        except OSError:
            pass


def test_one_frame_per_read_is_returned_as_read(pipe: tuple[int, int]) -> None:
    r, w = pipe
    reader = FrameReader(r)
    for n in range(3):
        os.write(w, frame(n))
        got = reader.read_frame()
        assert type(got) is bytes
        assert got == frame(n)
    assert reader.pop() is None


def test_several_frames_in_one_read_and_a_frame_split_across_reads(pipe: tuple[int, int]) -> None:
    r, w = pipe
    reader = FrameReader(r)
    first, second, third = frame(1), frame(2, 3000), frame(3)
    os.write(w, first + second[:7])
    assert reader.read_frame() == first
    os.write(w, second[7:] + third)
    assert reader.read_frame() == second
    assert reader.read_frame() == third
    os.close(w)
    with pytest.raises(PipeClosed):
        reader.read_frame()


def test_bytes_fed_after_a_kept_frame_stay_in_order() -> None:
    reader = FrameReader(-1)
    first, second = frame(1), frame(2)
    reader.feed(first)
    reader.feed(second[:3])
    assert reader.pop() == first
    assert reader.pop() is None
    reader.feed(bytearray(second[3:]))
    assert reader.pop() == second
    assert reader.pop() is None
    reader.feed(first + second)
    assert [reader.pop(), reader.pop(), reader.pop()] == [first, second, None]


def test_a_peeked_frame_stays_the_same_object_when_more_bytes_come(pipe: tuple[int, int]) -> None:
    """The client's router hands a peeked frame over, then drops it; a leader interrupted between
    the two leaves it peeked, and the next leader may read more first: the frame must still be the
    same object, or it is handed over twice (a stream's item repeated)."""
    r, w = pipe
    reader = FrameReader(r)
    for first, then in ((frame(1), frame(2)), (frame(1) + frame(2)[:7], frame(2)[7:])):  # kept as read; cut
        os.write(w, first)
        reader.fill()
        peeked = reader.peek()
        os.write(w, then + frame(3))
        reader.fill()
        assert reader.peek() is peeked
        reader.drop()
        assert [reader.pop(), reader.pop(), reader.pop()] == [frame(2), frame(3), None]


def test_a_kept_frame_counts_as_readable_and_skips_the_spin(pipe: tuple[int, int]) -> None:
    r, _w = pipe
    reader = FrameReader(r)
    reader.feed(frame(1))
    assert reader.readable(0)
    reader.spin(10.0)  # returns at once: a frame is already here
    assert reader.read_frame() == frame(1)
    assert not reader.readable(0)


@pytest.mark.parametrize("size", [0, 4, -1, (1 << 20) + 1])
def test_forged_lengths_are_refused(size: int) -> None:
    reader = FrameReader(-1, max_frame=1 << 20)
    reader.feed(struct.pack("<i", size) + b"\x00" * 8)
    with pytest.raises(FrameError):
        reader.pop()


def test_a_whole_frame_larger_than_the_limit_is_not_kept() -> None:
    data = frame(1, 100)
    reader = FrameReader(-1, max_frame=len(data) - 1)
    reader.feed(data)
    with pytest.raises(FrameError):
        reader.pop()


def test_the_spin_rests_after_missing_twice_in_a_row(pipe: tuple[int, int]) -> None:
    r, w = pipe
    reader = FrameReader(r)
    for _ in range(MISSES):
        reader.spin(0.002)  # nothing comes: a miss
    began = time.monotonic()
    for _ in range(REST):
        reader.spin(10.0)  # resting: each returns at once instead of spinning 10 s
    assert time.monotonic() - began < 5.0
    os.write(w, frame(1))
    reader.spin(10.0)  # spinning again, and input is there
    assert reader.read_frame() == frame(1)
