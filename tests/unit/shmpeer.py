"""Both ends of a shared-memory socket in one test: what the I/O shells do, done at once."""

from __future__ import annotations

import select
from typing import Any

from pypods._worker.sharedmem import DEFAULT_THRESHOLD, FdChannel, Inbox, OutOfBand, Upload


class Side:
    """One end: its channel, the inbox its received buffers wait in, and OutOfBand objects over them."""

    def __init__(self, channel: FdChannel, limit: int | None = None) -> None:
        self.channel = channel
        self.inbox = Inbox() if limit is None else Inbox(limit)

    def out(self, threshold: int = DEFAULT_THRESHOLD) -> OutOfBand:
        """An OutOfBand to encode one frame with (its attachments go out with ``send``)."""
        return OutOfBand(threshold, self.inbox)

    def send(self, big: OutOfBand, peer: Side | None = None) -> None:
        """Send a frame's attachments, draining *peer* meanwhile if the socket fills."""
        upload = Upload(self.channel, big.take())
        while not upload.pump():
            if peer is not None:
                peer.receive()
            else:
                select.select([], [self.channel.sock], [], 5)

    def receive(self) -> None:
        self.channel.receive(self.inbox, self.inbox.limit + 1)

    def oob(self) -> OutOfBand:
        """An OutOfBand to decode with, after taking what waits on the socket."""
        self.receive()
        return OutOfBand(inbox=self.inbox)


def encode_and_send(encode: Any, sender: Side, receiver: Side, threshold: int = DEFAULT_THRESHOLD) -> Any:
    """``encode(big)`` a frame with *sender*, send its attachments, return the frame."""
    big = sender.out(threshold)
    frame = encode(big)
    sender.send(big, receiver)
    return frame
