"""A pod generator's items over a ``ProcessConnection``: credit-based flow control, cancel on close or drop."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import Stream

if TYPE_CHECKING:
    from .connection import ProcessConnection
    from .core import StreamCursor


class ProcessStream(Stream):
    """The items of a generator running in a worker, with credit-based flow control.

    The waiting, decoding and credit live in ``ProcessConnection.next_item`` (the connection's
    public stream API); this object only holds the stream's ``StreamCursor``.
    """

    def __init__(self, conn: ProcessConnection, cursor: StreamCursor) -> None:
        self._conn = conn
        self._cursor = cursor

    def __next__(self) -> Any:
        if self._cursor.done:
            raise StopIteration
        more, item = self._conn.next_item(self._cursor)
        if more:
            return item
        raise StopIteration

    def close(self) -> None:
        """Stop the generator in the pod (it sees GeneratorExit); items still in transit are dropped.

        Never blocks (also from the garbage collector, possibly while this thread holds the write
        lock): the cancel waits for the next write if it cannot go now.
        """
        self._conn.cancel_stream(self._cursor)
