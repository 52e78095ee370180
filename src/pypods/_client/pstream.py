"""A pod generator's items over a ``ProcessConnection``: credit-based flow control, cancel on close or drop."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .._errors import PodError
from .base import Stream
from .core import StreamCursor

if TYPE_CHECKING:
    from .connection import ProcessConnection


class ProcessStream(Stream):
    """The items of a generator running in a worker, with credit-based flow control."""

    def __init__(self, conn: ProcessConnection, call_id: int, name: str, timeout: float | None) -> None:
        self._conn = conn
        self._cursor = StreamCursor(call_id, name, timeout)

    def __next__(self) -> Any:
        conn, cursor = self._conn, self._cursor
        if cursor.done:
            raise StopIteration
        deadline = None if cursor.timeout is None else time.monotonic() + cursor.timeout
        try:
            reply = conn._receive(cursor.call_id, deadline, cursor.name, cursor.timeout)
            more, item, grant = cursor.advance(conn._checked(conn.proto.stream_item, cursor.name, reply))
        except PodError:
            cursor.done = True  # the generator ended in the pod, or the worker did
            conn._abandon(cursor.call_id)
            raise
        except BaseException:
            self.close()  # interrupted while waiting (Ctrl-C): stop the generator in the pod too
            raise
        if grant is not None:
            conn.send_control(grant)
        if more:
            return item
        conn._abandon(cursor.call_id)
        raise StopIteration

    def close(self) -> None:
        """Stop the generator in the pod (it sees GeneratorExit); items still in transit are dropped.

        Never blocks (also from the garbage collector, possibly while this thread holds the write
        lock): the cancel waits for the next write if it cannot go now.
        """
        cancel = self._cursor.cancel()
        if cancel is not None:
            self._conn._abandon(self._cursor.call_id)
            self._conn.send_control(cancel, deferred=True)
