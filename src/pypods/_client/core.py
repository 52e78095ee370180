"""The pod protocol without I/O: ids, encoding a call, decoding a frame, and a reply's outcome.

The sync connection, the asyncio connection and (where it applies) the Ray backend all use this one
module, as h11 is HTTP without sockets: the I/O layers only read, write and wait. Everything a pod
may send is checked here, and anything wrong becomes a typed ``PodError`` (``PodProtocolError`` for
a malformed frame or field), never a raw ``TypeError``/``AttributeError``.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

from .._env.settings import encoding_from_environ
from .._errors import (
    PodCrashedError,
    PodError,
    PodProtocolError,
    PodRemoteError,
    PodSerializationError,
    PodTimeoutError,
    PodWorkerError,
    describe_exit,
    remote_error_type,
)
from .._worker import codec, fastcodec, messages
from .._worker.codec import Encoder
from .._worker.decoding import DecodeError, Decoder
from .._worker.exttypes import DEFAULT_THRESHOLD, MissingLibrary, OutOfBand

if TYPE_CHECKING:
    from .base import WorkerHandle

START = "(start)"  # the name a start handshake waits under
STREAM_WINDOW = 64  # stream items the worker may send ahead of the consumer (the "window" of a call)
# Replies one call may have waiting unread: a window of items and an end, with room to spare. A pod
# that sends more ignores flow control (it is hostile) and would otherwise grow client memory forever.
MAX_PENDING = 2 * STREAM_WINDOW


def new_out_of_band(worker: WorkerHandle | None, threshold: int = DEFAULT_THRESHOLD) -> OutOfBand:
    """The one place a client-side ``OutOfBand`` is made: it sends and receives through the worker's channel."""
    return OutOfBand(threshold, getattr(worker, "channel", None))


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


class StreamCursor:
    """A stream's client-side state without I/O: its call, deadline, credit, and whether it ended."""

    __slots__ = ("call_id", "credit", "done", "name", "timeout")

    def __init__(self, call_id: int, name: str, timeout: float | None) -> None:
        self.call_id = call_id
        self.name = name
        self.timeout = timeout
        self.done = False
        self.credit = StreamCredit()

    def advance(self, outcome: Outcome) -> tuple[bool, Any, bytearray | None]:
        """``(True, item, credit frame to send or None)`` for an item; ``(False, None, None)`` at the end."""
        if outcome.kind != Outcome.ITEM:
            self.done = True
            return False, None, None
        grant = self.credit.take(self.call_id)
        frame = None if grant is None else CallProtocol.control(self.call_id, "more", grant["n"])
        return True, outcome.value, frame

    def cancel(self) -> bytearray | None:
        """End the stream here; the ``cancel`` frame to send, or None if it had already ended."""
        if self.done:
            return None
        self.done = True
        return CallProtocol.control(self.call_id, "cancel")


class Outcome:
    """What a reply means for its caller: a value, the start of a stream, or a stream item / end."""

    __slots__ = ("kind", "value")

    VALUE, STREAM, ITEM, END = "value", "stream", "item", "end"

    def __init__(self, kind: str, value: Any = None) -> None:
        self.kind = kind
        self.value = value


class CallProtocol:
    """One connection's protocol state: ids, the class registry it sent, its codec and decoder."""

    def __init__(self, pod: str, codec_name: str = "bson", worker: WorkerHandle | None = None) -> None:
        self.pod = pod
        self.codec = codec_name
        self.worker = worker
        self._ids = itertools.count(1)
        self._registered = 0  # the class registry version the worker knows
        self._decoder = Decoder(new_out_of_band(worker))
        self.encoding = "bson"  # "fast1" once chosen in choose_encoding (docs/encoding.md)

    def choose_encoding(self, hello: dict[str, Any]) -> bytearray | None:
        """Pick fast1 if the worker offers it (and neither codec="pickle" nor PYPODS_ENCODING=bson says
        otherwise); return the ``encoding`` message to send before the first call, if any."""
        wanted = encoding_from_environ()  # PodConfigError for an unknown value
        offered = hello.get("encodings")
        if self.codec == "pickle" or wanted != fastcodec.NAME or not isinstance(offered, list):
            return None
        if fastcodec.NAME not in offered:
            return None
        self.encoding = fastcodec.NAME
        return Encoder().document({"id": 0, "op": "encoding", "name": fastcodec.NAME})

    def next_id(self) -> int:
        return next(self._ids)

    def registry_frame(self) -> bytearray | None:
        """The ``register`` message to send before the next call, if the client registered classes since."""
        version = codec.registry_version()
        if self._registered == version:
            return None
        self._registered = version
        return Encoder().document({"id": 0, "op": "register", "classes": sorted(codec.REGISTERED.values())})

    def encode_call(
        self, call_id: int, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], deadline: float | None = None
    ) -> tuple[bytearray, OutOfBand]:
        """Encode a call (and its out-of-band buffers), or raise PodSerializationError: nothing was sent.

        *deadline* (``time.monotonic()``) bounds the wait for room on the shared-memory socket.
        """
        big = new_out_of_band(self.worker)
        big.deadline = deadline
        try:
            if self.encoding == fastcodec.NAME:
                return fastcodec.encode_request(big, call_id, name, args, kwargs), big
            if self.codec != "pickle":
                return Encoder(big).request(call_id, name, args, kwargs), big
            message: dict[str, Any] = {"id": call_id, "op": "call", "name": name}
            message.update(messages.pack_pickle((args, kwargs)))
            return Encoder(big).document(message), big
        except PodError:
            big.discard()
            raise
        except Exception as exc:  # EncodeError (any failure), or pickling with the opt-in codec
            big.discard()
            raise PodSerializationError(f"pod {self.pod!r}, function {name!r}: {exc}") from exc

    @staticmethod
    def control(call_id: int, op: str, n: int | None = None) -> bytearray:
        """A message that expects no reply: ``more`` (stream credit) or ``cancel``."""
        message: dict[str, Any] = {"id": call_id, "op": op}
        if n is not None:
            message["n"] = n
        return Encoder().document(message)

    def decode(self, frame: bytes) -> dict[str, Any]:
        """Turn one frame into a message; a frame that is not one raises PodProtocolError."""
        try:
            message = self._decoder.document(frame)
        except MissingLibrary as exc:  # our side lacks a library for a value: that call fails, not the pipe
            return {"id": messages.peek_id(frame), "ok": False, "error": messages.error_info(exc, "receive")}
        except (DecodeError, RecursionError, MemoryError, ValueError, TypeError) as exc:
            raise self.protocol_error(exc) from exc
        if type(message.get("id")) is not int:
            raise self.protocol_error("a message without an integer id")
        return message

    def value_of(self, message: dict[str, Any], key: str) -> Any:
        """The value a reply carries; pickled values only where this client chose codec="pickle"."""
        if "p" not in message:
            if self.encoding != fastcodec.NAME:
                if "j" in message or "f" in message or "k" in message:
                    raise self.protocol_error("a fast1 value on a connection that did not choose fast1")
                return message.get(key)
            try:
                return fastcodec.reply_value(message, key)
            except DecodeError as exc:
                raise self.protocol_error(exc) from exc
        if self.codec != "pickle":
            raise self.protocol_error("a pickled value on a connection that does not use the pickle codec")
        try:
            return messages.unpack_pickle(message)
        except Exception as exc:
            raise PodSerializationError(f"pod {self.pod!r}: the pickled value could not be loaded: {exc}") from exc

    def outcome(self, name: str, reply: dict[str, Any]) -> Outcome:
        """A call's first reply: its value, or the start of a stream; raises the error it carries."""
        if reply.get("stream") is True and reply.get("ok") is True:
            return Outcome(Outcome.STREAM)
        ok = reply.get("ok")
        if ok is True and ("value" in reply or "p" in reply):
            return Outcome(Outcome.VALUE, self.value_of(reply, "value"))
        if ok is False and "error" in reply:
            raise error_from_reply(self.pod, name, reply["error"])
        raise self.protocol_error(f"a malformed reply to {name!r} (keys {sorted(reply)})")

    def stream_item(self, name: str, reply: dict[str, Any]) -> Outcome:
        """A stream's next reply: an item or its end; raises the error it carries."""
        if "yield" in reply:
            return Outcome(Outcome.ITEM, self.value_of(reply, "yield"))
        if reply.get("end") is True:
            return Outcome(Outcome.END)
        if reply.get("ok") is False and "error" in reply:
            raise error_from_reply(self.pod, name, reply["error"])
        raise self.protocol_error(f"a malformed stream reply from {name!r} (keys {sorted(reply)})")

    # -- errors the I/O layers raise -------------------------------------------------------------

    def protocol_error(self, cause: object) -> PodProtocolError:
        return PodProtocolError(f"pod {self.pod!r}: bad data from the worker: {cause}")

    def flooded(self, call_id: int) -> PodProtocolError:
        return self.protocol_error(f"more than {MAX_PENDING} unread replies to call {call_id} (stream credit ignored)")

    def crash_error(self, pid: int, code: int | None, tail: str, note: str = "") -> PodCrashedError:
        text = f"pod {self.pod!r}: worker (pid {pid}) died: {describe_exit(code)}"
        text += f"; {note}" if note else ""  # who ended it, the limit, the peak RSS (process.py exit_note)
        if tail:
            text += "\nLast lines it wrote to stderr:\n" + tail
        return PodCrashedError(text, returncode=code, stderr=tail)

    def timeout_error(self, name: str, timeout: float | None) -> PodTimeoutError:
        if name == START:
            return PodTimeoutError(
                f"pod {self.pod!r}: the worker did not start within {timeout}s (start_timeout); it was killed"
            )
        return PodTimeoutError(
            f"pod {self.pod!r}, function {name!r}: no answer within {timeout}s; the worker was killed"
        )

    def killed_error(self, name: str) -> PodWorkerError:
        """What other calls on a worker get when it was killed for one call's timeout (not a crash)."""
        return PodWorkerError(f"pod {self.pod!r}: worker killed after a call timed out ({name!r})")


class WorkerConnection:
    """What the sync and asyncio process connections share: worker, protocol core, hello, calls, end."""

    def __init__(self, worker: WorkerHandle) -> None:
        self.pod = worker.pod_name
        self.worker = worker
        self.proto = CallProtocol(self.pod, worker.codec, worker)
        self._calls: dict[int, Any] = {}  # call id -> where its replies go (an inbox or a queue)
        self._broken: PodError | None = None
        self.description: list[dict[str, Any]] = []
        self.hello: dict[str, Any] = {}

    def _started(self, hello: dict[str, Any]) -> bytearray | None:
        """Take the hello; return the ``encoding`` message the I/O layer must send before any call."""
        self.description = check_hello(self.pod, hello)
        self.hello = hello
        return self.proto.choose_encoding(hello)

    @property
    def pid(self) -> int:
        return self.worker.pid

    @property
    def broken(self) -> PodError | None:
        """None while usable; else the error that ended this connection."""
        return self._broken

    def in_flight(self) -> int:
        return len(self._calls)


def check_hello(pod: str, hello: dict[str, Any]) -> list[dict[str, Any]]:
    """Validate a worker's hello; return its functions (empty if it did not describe the pod).

    Raises:
        PodProtocolError: it is not a hello of this protocol version, or its fields are malformed.
        PodRemoteError: importing the pod's ``pod.py`` failed in the worker.
    """
    if hello.get("op") != "hello" or hello.get("protocol") != messages.PROTOCOL:
        raise PodProtocolError(
            f"pod {pod!r}: worker speaks protocol {hello.get('protocol')!r}, this pypods speaks {messages.PROTOCOL}"
        )
    if "error" in hello:
        raise error_from_reply(pod, None, hello["error"])
    functions = hello.get("functions") or []
    if not isinstance(functions, list) or not all(
        isinstance(info, dict) and isinstance(info.get("name"), str) for info in functions
    ):
        raise PodProtocolError(f"pod {pod!r}: the worker's hello lists malformed functions")
    if not isinstance(hello.get("pid", 0), int) or not isinstance(hello.get("files", []), list):
        raise PodProtocolError(f"pod {pod!r}: the worker's hello has malformed fields")
    return list(functions)


def _text(error: dict[str, Any], key: str, default: str, pod: str) -> str:
    value = error.get(key, default)
    if not isinstance(value, str):
        raise PodProtocolError(f"pod {pod!r} sent a malformed error reply ({key!r} is not a string)")
    return value


def error_from_reply(pod: str, function: str | None, error: Any) -> Exception:
    """Turn an error reply into the exception to raise in the client (the one place that maps them)."""
    if not isinstance(error, dict):
        return PodProtocolError(f"pod {pod!r} sent a malformed error reply: {type(error).__name__}")
    try:
        kind = _text(error, "kind", "remote", pod)
        message = _text(error, "message", "", pod)
        remote_type = _text(error, "type", "Exception", pod)
        tb = _text(error, "traceback", "", pod)
        mro = error.get("mro") or []
        if not isinstance(mro, list) or not all(isinstance(name, str) for name in mro):
            raise PodProtocolError(f"pod {pod!r} sent a malformed error reply ('mro' is not a list of strings)")
    except PodProtocolError as malformed:
        return malformed
    where = f"pod {pod!r}" + (f", function {function!r}" if function else "")
    if kind == "serialization":
        return PodSerializationError(f"{where}: {message}")
    if kind == "interrupted":
        return PodWorkerError(f"{where}: interrupted")
    if kind == "import":
        text = f"{where}: importing pod.py failed: {remote_type}: {message}"
    elif kind == "decode":
        text = f"{where}: the pod could not receive the arguments: {remote_type}: {message}"
    elif kind == "receive":  # made by this client's own decode (e.g. a numpy array without numpy here)
        text = f"{where}: this client could not receive the result: {remote_type}: {message}"
    else:
        text = f"{where}: {remote_type}: {message}"
    cls = remote_error_type(mro)
    try:
        exc: PodRemoteError = cls(text, remote_type=remote_type, remote_traceback=tb, mro=mro)
    except TypeError:  # a builtin base whose constructor wants other arguments
        exc = PodRemoteError(text, remote_type=remote_type, remote_traceback=tb, mro=mro)
    if isinstance(exc, KeyError):
        exc.args = (text,)
    return exc
