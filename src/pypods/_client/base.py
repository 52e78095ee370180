"""The seam between the loader and a transport: ``Connection``, plus reply-to-exception mapping.

The loader only ever calls ``Connection.call``; tests can pass an ``InProcessConnection`` and a later
backend (Ray) is one more implementation.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from .._errors import (
    PodProtocolError,
    PodRemoteError,
    PodSerializationError,
    PodWorkerError,
    remote_error_type,
)


class Connection(Protocol):
    """A way to run one pod's functions: a worker process, a pool of them, or anything else."""

    description: list[dict[str, Any]]

    def call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None) -> Any:
        """Run pod function *name*; return its value, or a ``Stream`` if it is a generator."""

    def close(self) -> None:
        """Stop serving; calls after this raise PodClosedError."""

    def in_flight(self) -> int:
        """Calls sent and not yet answered (for picking the least busy worker)."""


class Stream(Iterator[Any]):
    """Items of a pod generator as the pod produces them; ``close()`` stops the generator there."""

    def close(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


STREAM_WINDOW = 64  # stream items the worker may send ahead of the consumer (the "window" of a call)


class StreamCredit:
    """The client's half of stream flow control: after every half window of items taken, grant more."""

    __slots__ = ("unacked",)

    def __init__(self) -> None:
        self.unacked = 0

    def take(self, call_id: int) -> dict[str, Any] | None:
        """Count one item taken; return the ``more`` message to send now, if one is due."""
        self.unacked += 1
        if self.unacked < STREAM_WINDOW // 2:
            return None
        granted, self.unacked = self.unacked, 0
        return {"id": call_id, "op": "more", "n": granted}


def check_hello(pod: str, hello: dict[str, Any]) -> list[dict[str, Any]]:
    """Validate a worker's hello; return its functions (empty if it did not describe the pod).

    Raises:
        PodProtocolError: it is not a hello of this protocol version.
        PodRemoteError: importing the pod's ``pod.py`` failed in the worker.
    """
    from .._worker.messages import PROTOCOL

    if hello.get("op") != "hello" or hello.get("protocol") != PROTOCOL:
        raise PodProtocolError(
            f"pod {pod!r}: worker speaks protocol {hello.get('protocol')!r}, this pypods speaks {PROTOCOL}"
        )
    if "error" in hello:
        raise error_from_reply(pod, None, hello["error"])
    return list(hello.get("functions") or [])


def error_from_reply(pod: str, function: str | None, error: Any) -> Exception:
    """Turn an error reply into the exception to raise in the client (the one place that maps them)."""
    if not isinstance(error, dict):
        return PodProtocolError(f"pod {pod!r} sent a malformed error reply: {error!r}")
    kind = error.get("kind")
    message = str(error.get("message", ""))
    remote_type = str(error.get("type", "Exception"))
    tb = str(error.get("traceback", ""))
    where = f"pod {pod!r}" + (f", function {function!r}" if function else "")
    if kind == "serialization":
        return PodSerializationError(f"{where}: {message}")
    if kind == "import":
        text = f"{where}: importing pod.py failed: {remote_type}: {message}"
    elif kind == "decode":
        text = f"{where}: the pod could not receive the arguments: {remote_type}: {message}"
    elif kind == "interrupted":
        return PodWorkerError(f"{where}: interrupted")
    elif message.startswith("pod "):
        text = message
    else:
        text = f"{where}: {remote_type}: {message}"
    cls = remote_error_type(error.get("mro") or [])
    try:
        exc = cls(text, remote_type=remote_type, remote_traceback=tb, mro=error.get("mro") or ())
    except TypeError:  # a builtin base whose constructor wants other arguments
        exc = PodRemoteError(text, remote_type=remote_type, remote_traceback=tb, mro=error.get("mro") or ())
    if isinstance(exc, KeyError):
        exc.args = (text,)
    return exc
