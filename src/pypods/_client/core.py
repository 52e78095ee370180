"""The pod protocol without I/O: ids, encoding a call, decoding a frame, and a reply's outcome.

The sync connection, the asyncio connection and (where it applies) the Ray backend all use this one
module, as h11 is HTTP without sockets: the I/O layers only read, write and wait. Encoding returns a
frame plus its attachments (the big buffers, which the shell sends before the frame); decoding takes
the attachments the shell already received (an ``Inbox``). No descriptor, syscall or clock here.
Everything a pod may send is checked here, and anything wrong becomes a typed ``PodError``
(``PodProtocolError`` for a malformed frame or field), never a raw ``TypeError``/``AttributeError``.
"""

from __future__ import annotations

import builtins
import itertools
import struct
from typing import TYPE_CHECKING, Any

from .._env.settings import encoding_from_environ
from .._errors import (
    PodCrashedError,
    PodError,
    PodObjectLimitError,
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
from .._worker.sharedmem import Inbox
from .callbacks import take_callbacks
from .objects import ObjectLedger, ObjectRef

if TYPE_CHECKING:
    from .._worker.sharedmem import FdChannel
    from .base import WorkerHandle

START = "(start)"  # the name a start handshake waits under
# Stream items the worker may send ahead of the consumer (the "window" of a call). Sent in every
# call request; a worker that finds none (an older client) uses this same default.
STREAM_WINDOW = 64
# Replies one call may have waiting unread: a window of items and an end, with room to spare. A pod
# that sends more ignores flow control (it is hostile) and would otherwise grow client memory forever.
MAX_PENDING = 2 * STREAM_WINDOW
Attachments = list[tuple[int, memoryview]]  # a frame's big buffers by token, sent before the frame
_I32, _F64 = struct.Struct("<i"), struct.Struct("<d")


class StreamCredit:
    """The client's half of stream flow control: after every half window of items taken, grant more."""

    __slots__ = ("unacked", "window")

    def __init__(self, window: int = STREAM_WINDOW) -> None:
        self.unacked = 0
        self.window = window

    def take(self, call_id: int) -> dict[str, Any] | None:
        """Count one item taken; return the ``more`` message to send now, if one is due."""
        self.unacked += 1
        if self.unacked < max(self.window // 2, 1):
            return None
        granted, self.unacked = self.unacked, 0
        return {"id": call_id, "op": "more", "n": granted}


class StreamCursor:
    """A stream's client-side state without I/O: its call, deadline, credit, and whether it ended."""

    __slots__ = ("call_id", "credit", "done", "name", "timeout")

    def __init__(self, call_id: int, name: str, timeout: float | None, window: int = STREAM_WINDOW) -> None:
        self.call_id = call_id
        self.name = name
        self.timeout = timeout
        self.done = False
        self.credit = StreamCredit(window)

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

    VALUE, STREAM, ITEM, END, CALLBACK = "value", "stream", "item", "end", "callback"

    def __init__(self, kind: str, value: Any = None) -> None:
        self.kind = kind
        self.value = value


class CallProtocol:
    """One connection's protocol state: ids, the class registry it sent, its codec and decoder.

    *inbox* holds the attachments the shell received (None: no shared-memory channel, so every
    buffer travels inline both ways).
    """

    def __init__(
        self, pod: str, codec_name: str = "bson", inbox: Inbox | None = None, window: int = STREAM_WINDOW
    ) -> None:
        self.pod = pod
        self.codec = codec_name
        self.inbox = inbox
        self.window = window  # sent in every call request (the worker's default is the same 64)
        self._ids = itertools.count(1)
        self._registered = 0  # the class registry version the worker knows
        self._decoder = Decoder(OutOfBand(DEFAULT_THRESHOLD, inbox))
        self.encoding = "bson"  # "fast1"/"fast2" once chosen in choose_encoding (docs/encoding.md)
        self.objects = ObjectLedger()  # ids of the live objects this worker made (objects.py)
        self.callbacks: dict[int, list[Any]] = {}  # call id -> the callables it passed (callbacks.py)

    def choose_encoding(self, hello: dict[str, Any]) -> bytearray | None:
        """Pick fast2 (fast1 if PYPODS_ENCODING says so or the worker offers no more) unless codec="pickle"
        or PYPODS_ENCODING=bson; return the ``encoding`` message to send before the first call, if any."""
        wanted = encoding_from_environ()  # PodConfigError for an unknown value
        name = fastcodec.choose(wanted, hello.get("encodings"))  # fast2: fast1 or fast2, None for BSON
        if self.codec == "pickle" or name is None:
            return None
        self.encoding = name
        return Encoder().document({"id": 0, "op": "encoding", "name": name})

    def next_id(self) -> int:
        return next(self._ids)

    @property
    def max_pending(self) -> int:
        """Replies one call may have waiting unread (a window of items and an end, with room to spare)."""
        return 2 * self.window

    def registry_frame(self) -> bytearray | None:
        """The ``register`` message to send before the next call, if the client registered classes since."""
        version = codec.registry_version()
        if self._registered == version:
            return None
        self._registered = version
        return Encoder().document({"id": 0, "op": "register", "classes": sorted(codec.REGISTERED.values())})

    def encode_call(
        self, call_id: int, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None = None
    ) -> tuple[bytearray, Attachments]:
        """Encode a call: its frame and attachments, or PodSerializationError (nothing to send).

        The shell sends the attachments, then the frame. The request carries the stream window and,
        if set, *timeout*: the worker bounds its own waits for this call (its reply's buffers) by it.
        """
        if args or kwargs:  # callables among the arguments cross as callbacks
            name, args, kwargs, found = take_callbacks(name, args, kwargs)
            if found:
                self.callbacks[call_id] = found
        big = OutOfBand(DEFAULT_THRESHOLD, self.inbox)
        try:
            if self.encoding in fastcodec.NAMES and not _nested_buffers(args, kwargs, big.threshold):
                frame = fastcodec.encode_request(big, call_id, name, args, kwargs)  # fast2: fast1's requests
            elif self.codec != "pickle":
                frame = Encoder(big).request(call_id, name, args, kwargs)
            else:
                message: dict[str, Any] = {"id": call_id, "op": "call", "name": name}
                message.update(messages.pack_pickle((args, kwargs)))
                frame = Encoder(big).document(message)
            return _with_fields(frame, self.window, timeout), big.take()
        except PodError:
            big.discard()
            raise
        except Exception as exc:  # EncodeError (any failure), or pickling with the opt-in codec
            big.discard()
            raise PodSerializationError(f"pod {self.pod!r}, function {shown(name)!r}: {exc}") from exc

    @staticmethod
    def control(call_id: int, op: str, n: int | None = None) -> bytearray:
        """A message that expects no reply: ``more`` (stream credit) or ``cancel``."""
        message: dict[str, Any] = {"id": call_id, "op": op}
        if n is not None:
            message["n"] = n
        return Encoder().document(message)

    def decode(self, frame: bytes) -> dict[str, Any]:
        """Turn one frame into a message; a frame that is not one raises PodProtocolError.

        Its attachments must be in the inbox already: the shell drains the socket first (the
        sender sent them before the frame).
        """
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
            if self.encoding not in fastcodec.NAMES:  # fast2: and "c" below
                if "j" in message or "f" in message or "k" in message or "c" in message:
                    raise self.protocol_error("a fast1 value on a connection that did not choose fast1")
                return message.get(key)
            try:
                return fastcodec.reply_value(message, key, self.encoding)  # fast2: the encoding
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
        if "callback" in reply:
            return self._callback(name, reply)
        ok = reply.get("ok")
        if ok is True and "object" in reply:  # the result stays in the pod: a handle to it
            return Outcome(Outcome.VALUE, self._object(name, reply))
        if ok is True and ("value" in reply or "p" in reply):
            return Outcome(Outcome.VALUE, self.value_of(reply, "value"))
        if ok is False and "error" in reply:
            raise error_from_reply(self.pod, name, reply["error"])
        raise self.protocol_error(f"a malformed reply to {name!r} (keys {sorted(reply)})")

    def _callback(self, name: str, reply: dict[str, Any]) -> Outcome:
        """The pod invokes a callback of call ``reply["id"]``: ``(callable, args, kwargs)`` to run here."""
        passed = self.callbacks.get(reply["id"])
        index, args, kwargs = reply.get("callback"), reply.get("args", []), reply.get("kwargs", {})
        if passed is None or type(index) is not int or not 0 <= index < len(passed):
            raise self.protocol_error(f"a callback {index!r} that call {name!r} did not pass")
        if not isinstance(args, list) or not isinstance(kwargs, dict) or not all(type(k) is str for k in kwargs):
            raise self.protocol_error(f"a malformed callback from {name!r}")
        return Outcome(Outcome.CALLBACK, (passed[index], args, kwargs))

    def ended(self, call_id: int) -> None:
        """Call *call_id* returned: its callbacks can no longer be invoked."""
        self.callbacks.pop(call_id, None)

    def _object(self, name: str, reply: dict[str, Any]) -> ObjectRef:
        cls = reply.get("class")
        if not isinstance(cls, str) or not cls.replace(".", "").replace("_", "").isalnum() or len(cls) > 200:
            raise self.protocol_error(f"a malformed object reply to {name!r} (class {cls!r})")
        forged = self.objects.created(reply.get("object"))
        if forged is not None:
            raise self.protocol_error(f"a forged object reply to {name!r}: {forged}")
        return ObjectRef(reply["object"], cls, self.objects)

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
            f"pod {self.pod!r}, function {shown(name)!r}: no answer within {timeout}s; the worker was killed"
        )

    def killed_error(self, name: str) -> PodWorkerError:
        """What other calls on a worker get when it was killed for one call's timeout (not a crash)."""
        return PodWorkerError(f"pod {self.pod!r}: worker killed after a call timed out ({name!r})")


def _nested_buffers(args: tuple[Any, ...], kwargs: dict[str, Any], threshold: int) -> bool:
    """A buffer of *threshold* bytes or more directly inside an argument (a list, tuple or dict).

    fast1 would copy it into one pickle, holding the GIL for the whole copy (an asyncio loop stalls
    124 ms for 200 x 1 MiB); BSON names each buffer as an attachment instead, without a copy.
    A bounded look (the first 64 values), so a long list of numbers costs next to nothing.
    """
    seen = 0
    for top in (args, kwargs.values()):
        for item in top:
            kind = type(item)
            if kind is not list and kind is not tuple and kind is not dict:
                continue
            for value in item.values() if kind is dict else item:
                seen += 1
                if type(value) in _BUFFERS and memoryview(value).nbytes >= threshold:
                    return True
                if seen > 64:
                    return False
    return False


_BUFFERS = (bytes, bytearray, memoryview)


def _with_fields(frame: bytearray, window: int, timeout: float | None) -> bytearray:
    """Append ``window`` (when not the default) and ``timeout`` to an encoded request document."""
    if window == STREAM_WINDOW and timeout is None:
        return frame  # the hot path: the worker's fixed-layout decoder reads it as it is
    del frame[-1]  # the document's terminating NUL
    if window != STREAM_WINDOW:
        frame += b"\x10window\x00" + _I32.pack(window)  # int32
    if timeout is not None:
        frame += b"\x01timeout\x00" + _F64.pack(float(timeout))  # double, seconds
    frame += b"\x00"
    _I32.pack_into(frame, 0, len(frame))  # bytes 0-3: the document's total length
    return frame


class WorkerConnection:
    """What the sync and asyncio process connections share: worker, protocol core, hello, calls, end."""

    def __init__(self, worker: WorkerHandle) -> None:
        self.pod = worker.pod_name
        self.worker = worker
        self.channel: FdChannel | None = worker.channel  # the shared-memory socket, None without one
        self.inbox = None if self.channel is None else Inbox()
        self.proto = CallProtocol(self.pod, worker.codec, self.inbox)
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


def shown(name: str) -> str:
    """A wire name as the user wrote the call: ``~1;@3.predict?0:2`` is ``object 3.predict``."""
    if "~" not in name[:1] and "@" not in name[:1] and "?" not in name:
        return name  # a plain function: the hot path
    name = name.partition(";")[2] if name.startswith("~") else name
    name = name.partition("?")[0]
    return f"object {name[1:]}" if name.startswith("@") else name


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
        attrs = _attrs(error.get("attrs"), pod)
    except PodProtocolError as malformed:
        return malformed
    where = f"pod {pod!r}" + (f", function {shown(function)!r}" if function else "")
    if kind == "serialization":
        return PodSerializationError(f"{where}: {message}")
    if kind == "interrupted":
        return PodWorkerError(f"{where}: interrupted")
    if kind == "limit":
        return PodObjectLimitError(f"{where}: {message}")
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
    for base, names in messages.ERROR_ATTRS.items():
        if isinstance(exc, getattr(builtins, base)):
            for name in names:
                if name in attrs:
                    setattr(exc, name, attrs[name])  # slots of the builtin (e.errno), not in __dict__
    return exc


def _attrs(attrs: Any, pod: str) -> dict[str, Any]:
    """An error reply's ``attrs`` (``messages.ERROR_ATTRS``), checked as the pod's input: known names,
    plain small values, else a ``PodProtocolError``."""
    if attrs is None:
        return {}
    known = {name for names in messages.ERROR_ATTRS.values() for name in names}
    if not isinstance(attrs, dict) or len(attrs) > len(known):
        raise PodProtocolError(f"pod {pod!r} sent a malformed error reply ('attrs' is not a small dict)")
    for name, value in attrs.items():
        if name not in known:
            raise PodProtocolError(f"pod {pod!r} sent a malformed error reply (unknown attribute {name[:40]!r})")
        plain = (type(value) is int and -(1 << 31) <= value < 1 << 31) or (
            type(value) in (str, bytes) and len(value) <= messages.ATTR_MAX
        )
        if not plain:
            raise PodProtocolError(
                f"pod {pod!r} sent a malformed error reply (attribute {name!r}: {type(value).__name__})"
            )
    return attrs
