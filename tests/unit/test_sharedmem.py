"""Sealed memfds over a real socketpair: round trips both ways, many threads, and a hostile peer's fds."""

from __future__ import annotations

import array
import fcntl
import hashlib
import os
import random
import socket
import struct
import sys
import tempfile
import threading
from typing import TYPE_CHECKING

import pytest

from pypods._worker import codec, decoding, sharedmem
from pypods._worker.sharedmem import FdChannel, Inbox, OutOfBand, SharedMemoryError

from .shmpeer import Side

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.skipif(not sharedmem.supported(), reason="no memfd / SCM_RIGHTS here")

MiB = 1 << 20


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture
def pair() -> Iterator[tuple[Side, Side]]:
    """Two ends of one socketpair; asserts that no descriptor is left open afterwards."""
    before = open_fds()
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    left, right = Side(FdChannel(a)), Side(FdChannel(b))
    yield left, right
    for side in (left, right):
        side.inbox.clear()
        side.channel.close()
    assert open_fds() <= before


def raw_send(side: Side, token: int, fds: list[int]) -> None:
    """What a hostile peer can put on the socket: any token with any descriptors, any payload."""
    sendmsg(side, struct.pack("<Q", token), fds)


def sendmsg(side: Side, payload: bytes, fds: list[int]) -> None:
    rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    side.channel.sock.sendmsg([payload], rights)


def roundtrip(value: object, sender: Side, receiver: Side, threshold: int = MiB) -> object:
    big = sender.out(threshold)
    frame = bytes(codec.Encoder(big).document({"v": value}))
    assert len(frame) < 200  # the payload went out of band
    sender.send(big, receiver)
    return decoding.Decoder(receiver.oob()).document(frame)["v"]


def test_encoding_and_decoding_do_no_io(monkeypatch: pytest.MonkeyPatch) -> None:
    """The core's half: put names buffers (the shell sends them), get reads an inbox (the shell filled)."""
    for name in ("memfd_create", "write", "read"):
        monkeypatch.setattr(os, name, lambda *a, **k: pytest.fail("I/O in the codec"))
    inbox = Inbox()
    big = OutOfBand(MiB, inbox)
    data = b"q" * (2 * MiB)
    frame = bytes(codec.Encoder(big).document({"v": data, "w": bytearray(data)}))
    attachments = big.take()
    assert [view.nbytes for _, view in attachments] == [2 * MiB, 2 * MiB]
    assert len(frame) < 300
    for token, view in attachments:  # what the peer's shell would have received
        inbox.add(token, sharedmem.Received(bytes(view)))
    back = decoding.Decoder(OutOfBand(inbox=inbox)).document(frame)
    assert back == {"v": data, "w": bytearray(data)}
    assert type(back["w"]) is bytearray
    assert len(inbox) == 0


def test_buffers_cross_both_ways_with_their_types(pair: tuple[Side, Side]) -> None:
    left, right = pair
    data = os.urandom(3 * MiB)
    for sender, receiver in ((left, right), (right, left)):
        back = roundtrip(data, sender, receiver)
        assert type(back) is bytes
        assert back == data
        back = roundtrip(bytearray(data), sender, receiver)
        assert type(back) is bytearray
        assert back == data
        assert roundtrip(memoryview(data), sender, receiver) == data
    assert len(left.inbox) == len(right.inbox) == 0


def test_numpy_arrays_are_mapped_without_a_copy(pair: tuple[Side, Side]) -> None:
    np = pytest.importorskip("numpy")
    left, right = pair
    array = np.arange(1 << 20, dtype=np.float64).reshape(1024, 1024)
    back = roundtrip(array, left, right)
    np.testing.assert_array_equal(back, array)
    assert not back.flags.owndata  # a view of the mapping, not a copy
    back[0, 0] = -1.0  # writable like a local array, private to the receiver
    assert array[0, 0] == 0.0


def test_many_threads_get_their_own_bytes(pair: tuple[Side, Side]) -> None:
    left, right = pair
    frames: list[tuple[bytes, bytes]] = []
    lock = threading.Lock()

    def send(seed: int) -> None:
        data = random.Random(seed).randbytes(MiB + seed * 4099)
        big = left.out(MiB)
        frame = bytes(codec.Encoder(big).document({"v": data}))
        left.send(big)
        with lock:
            frames.append((frame, hashlib.sha256(data).digest()))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    random.Random(0).shuffle(frames)  # frames may arrive in any order relative to their fds
    results: list[bool] = []

    def receive(frame: bytes, digest: bytes) -> None:
        value = decoding.Decoder(right.oob()).document(frame)["v"]
        results.append(hashlib.sha256(value).digest() == digest)

    readers = [threading.Thread(target=receive, args=item) for item in frames]
    for thread in readers:
        thread.start()
    for thread in readers:
        thread.join()
    assert results == [True] * 16


def test_tokens_are_unique_across_threads() -> None:
    tokens: list[int] = []

    def take() -> None:
        tokens.extend(sharedmem._next_token() for _ in range(2000))

    threads = [threading.Thread(target=take) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(tokens)) == len(tokens) == 16000


def test_an_aborted_upload_makes_the_receiver_close_what_it_holds(pair: tuple[Side, Side]) -> None:
    left, right = pair
    big = left.out(MiB)
    codec.Encoder(big).document({"v": b"x" * MiB, "w": b"y" * MiB})
    upload = sharedmem.Upload(left.channel, big.take())
    assert upload.pump()
    upload.abort()  # the frame is never sent: "forget" follows each fd
    right.receive()
    assert len(right.inbox) == 0


def test_discard_before_sending_sends_nothing(pair: tuple[Side, Side]) -> None:
    left, _right = pair
    big = left.out(MiB)
    codec.Encoder(big).document({"v": b"x" * MiB})
    big.discard()
    assert big.take() == []


def test_sealed_buffer_cannot_change_after_sending() -> None:
    fd = sharedmem._sealed_memfd(b"a" * 4096)
    try:
        with pytest.raises(PermissionError):
            os.pwrite(fd, b"b", 0)
        with pytest.raises(PermissionError):
            os.ftruncate(fd, 10)
        with pytest.raises(PermissionError):
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, 0)  # sealed against new seals too
    finally:
        os.close(fd)


def refused(pair: tuple[Side, Side], fd: int, size: int, match: str) -> None:
    """Send *fd* as a buffer of *size* bytes from the hostile side and check that it is refused."""
    hostile, victim = pair
    raw_send(hostile, 77, [fd])
    os.close(fd)
    with pytest.raises(SharedMemoryError, match=match):
        victim.oob().get([77, size], "bytes")


def test_unsealed_memfd_is_refused(pair: tuple[Side, Side]) -> None:
    fd = os.memfd_create("evil", os.MFD_ALLOW_SEALING)
    os.write(fd, b"x" * 100)
    refused(pair, fd, 100, "not sealed")


def test_memfd_sealed_without_write_seal_is_refused(pair: tuple[Side, Side]) -> None:
    fd = os.memfd_create("evil", os.MFD_ALLOW_SEALING)
    os.write(fd, b"x" * 100)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
    refused(pair, fd, 100, "not sealed")


def test_wrong_size_is_refused(pair: tuple[Side, Side]) -> None:
    refused(pair, sharedmem._sealed_memfd(b"x" * 100), 4 * MiB, "holds 100 bytes")


def test_sparse_memfd_is_refused(pair: tuple[Side, Side]) -> None:
    fd = os.memfd_create("evil", os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, 1 << 34)  # 16 GiB of nothing: copying it out would exhaust the receiver
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, sharedmem.SEALS)
    refused(pair, fd, 1 << 34, "sparse")


def test_fifo_is_refused_without_blocking(pair: tuple[Side, Side], tmp_path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    refused(pair, os.open(fifo, os.O_RDONLY | os.O_NONBLOCK), 100, "not a regular file")


def test_pipe_is_refused(pair: tuple[Side, Side]) -> None:
    read_end, write_end = os.pipe()
    os.close(write_end)
    refused(pair, read_end, 100, "not a regular file")


def test_dev_zero_is_refused(pair: tuple[Side, Side]) -> None:
    refused(pair, os.open("/dev/zero", os.O_RDONLY), MiB, "not a regular file")


def test_plain_file_is_refused(pair: tuple[Side, Side]) -> None:
    with tempfile.TemporaryFile() as handle:
        handle.write(b"x" * 100)
        handle.flush()
        refused(pair, os.dup(handle.fileno()), 100, "not a memfd|not sealed")


def test_frame_without_its_fd_is_refused(pair: tuple[Side, Side]) -> None:
    _, victim = pair
    with pytest.raises(SharedMemoryError, match="no shared-memory buffer with token 5"):
        victim.oob().get([5, 100], "bytes")


def test_too_many_fds_are_refused_and_closed() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    hostile, victim = Side(FdChannel(a)), Side(FdChannel(b), limit=64)
    before = len(open_fds())
    fd = sharedmem._sealed_memfd(b"x")
    for token in range(64 + 10):
        raw_send(hostile, token + 1000, [fd])
    os.close(fd)
    with pytest.raises(SharedMemoryError, match="more than 64 shared-memory buffers wait unclaimed"):
        victim.receive()
    assert len(victim.inbox) == 64
    held = 0 if sys.version_info >= (3, 13) else 64  # before 3.13 a mapping keeps a copy of its fd
    assert len(open_fds()) <= before + held  # each was mapped and its own fd closed as it came
    victim.inbox.clear()
    hostile.channel.close()
    victim.channel.close()


def test_malformed_messages_are_refused(pair: tuple[Side, Side]) -> None:
    hostile, victim = pair
    a, b = sharedmem._sealed_memfd(b"a"), sharedmem._sealed_memfd(b"b")
    sendmsg(hostile, struct.pack("<Q", 9), [a, b])  # two fds in one message
    os.close(a)
    os.close(b)
    with pytest.raises(SharedMemoryError, match="malformed"):
        victim.receive()
    sendmsg(hostile, b"short", [])
    with pytest.raises(SharedMemoryError, match="malformed"):
        victim.receive()


@pytest.mark.parametrize("ref", [None, "pypods-1-1", [1], [1, 2, 3], [-1, 5], [1, True], [1.0, 2]])
def test_bad_references_are_refused(pair: tuple[Side, Side], ref: object) -> None:
    with pytest.raises(SharedMemoryError, match="bad shared-memory reference"):
        pair[1].oob().get(ref, "bytes")


def test_decoder_turns_refusals_into_decode_errors(pair: tuple[Side, Side]) -> None:
    enc = codec.Encoder()
    out = bytearray(b"\x00\x00\x00\x00")
    enc.ext(out, b"v\x00", "shm", [123, 4096], k="bytes")
    out += b"\x00"
    out[:4] = struct.pack("<i", len(out))
    with pytest.raises(decoding.DecodeError):
        decoding.Decoder(pair[1].oob()).document(bytes(out))


def test_without_a_channel_buffers_go_inline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sharedmem, "supported", lambda: False)
    assert sharedmem.open_pair() is None
    big = OutOfBand(MiB, Inbox())
    assert big.threshold == sharedmem.INLINE
    data = os.urandom(2 * MiB)
    frame = bytes(codec.Encoder(big).document({"v": data}))
    assert len(frame) > 2 * MiB
    assert decoding.Decoder(OutOfBand()).document(frame)["v"] == data


def test_more_buffers_than_the_socket_queues_cross_when_the_receiver_drains(pair: tuple[Side, Side]) -> None:
    left, right = pair
    big = left.out(4096)
    frame = bytes(codec.Encoder(big).document({"v": [bytes([i % 256]) * 4096 for i in range(1000)]}))
    left.send(big, right)  # about 278 messages fit in the socket: the receiver drains as they come
    assert decoding.Decoder(right.oob()).document(frame)["v"] == [bytes([i % 256]) * 4096 for i in range(1000)]
    assert len(right.inbox) == 0
