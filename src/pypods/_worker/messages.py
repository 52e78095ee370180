"""Message shapes of the pod protocol, shared by the worker and the client (stdlib only).

Requests (client -> worker) and replies (worker -> client) are BSON documents; ``id`` is always the
first field so a reply can be routed even when the rest of a frame cannot be decoded.
"""

from __future__ import annotations

import struct
from typing import Any, Callable, Dict, List

PROTOCOL = 1
_MISSING = object()

# The attributes code tests on a raised builtin error (``e.errno == ENOENT``, ``e.filename``, ``e.name``),
# sent beside its message: each is a str, bytes, int or None of at most ATTR_MAX characters (else left out).
ERROR_ATTRS = {
    "OSError": ("errno", "strerror", "filename", "filename2"),
    "ImportError": ("name", "path"),
    "NameError": ("name",),
    "AttributeError": ("name",),
}
ATTR_MAX = 4096


def peek_id(frame: bytes) -> int:
    """Read the leading ``id`` field of a frame without decoding the rest (0 if it is not there)."""
    if frame[4:8] == b"\x10id\x00" and len(frame) >= 12:
        return int(struct.unpack_from("<i", frame, 8)[0])
    if frame[4:8] == b"\x12id\x00" and len(frame) >= 16:
        return int(struct.unpack_from("<q", frame, 8)[0])
    return 0


def hello_header() -> Dict[str, Any]:
    """The fields every hello starts with: protocol version, pid, Python version and executable."""
    import os
    import sys

    return {
        "id": 0,
        "op": "hello",
        "protocol": PROTOCOL,
        "pid": os.getpid(),
        "python": list(sys.version_info[:3]),
        "executable": sys.executable,
    }


def result_message(call_id: Any, value: Any, key: str, pickled: bool) -> Dict[str, Any]:
    """A reply carrying *value* under *key* (``value`` or ``yield``), pickled for a pickle-codec pod.

    A value the pickle codec cannot pack becomes a serialization error reply instead.
    """
    reply: Dict[str, Any] = {"id": call_id, "ok": True} if key == "value" else {"id": call_id}
    if not pickled:
        reply[key] = value
        return reply
    try:
        packed = pack_pickle(value)
    except Exception as exc:
        return {"id": call_id, "ok": False, "error": error_info(exc, "serialization")}
    reply[key] = None
    reply.update(packed)
    return reply


def pack_pickle(value: Any) -> Dict[str, Any]:
    """The opt-in pickle codec: protocol 5, large buffers out of band (as ``RawBuffer`` payloads)."""
    import pickle

    from .exttypes import RawBuffer

    buffers: List[Any] = []
    data = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    return {"p": data, "b": [RawBuffer(buffer.raw()) for buffer in buffers]}


def unpack_pickle(fields: Dict[str, Any]) -> Any:
    """Undo ``pack_pickle``. Runs code from the message: only for pods configured with codec="pickle"."""
    import pickle

    buffers = [b if isinstance(b, (bytearray, memoryview)) else bytearray(b) for b in fields.get("b") or ()]
    return pickle.loads(fields["p"], buffers=buffers)


def _qualified(cls: type) -> str:
    return "%s.%s" % (cls.__module__, cls.__qualname__)


def _message(exc: BaseException) -> str:
    """The exception's message; a SyntaxError names its file with the path; never raises."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return "%s (%s, line %s)" % (exc.msg, exc.filename, exc.lineno)
    try:
        return str(exc)
    except BaseException:  # an exception whose __str__ raises must still be reported
        return "<%s; its message could not be shown>" % type(exc).__name__


def error_info(exc: BaseException, kind: str) -> Dict[str, Any]:
    """Describe an exception for the wire: its type and bases, message and formatted traceback.

    The traceback starts in the pod's code: the worker loop's frames and the import machinery's
    (``importlib.import_module``, ``<frozen importlib._bootstrap>``) are left out.
    """
    import traceback

    cls = type(exc)
    tb = exc.__traceback__
    # Drop our own frames (the worker loop, then importlib.import_module for pod.py) so the
    # traceback starts in the pod's code.
    while tb is not None and (
        tb.tb_frame.f_globals.get("__package__") == __package__
        or str(tb.tb_frame.f_globals.get("__name__", "")).split(".")[0] == "importlib"
    ):
        tb = tb.tb_next
    try:
        lines = traceback.format_exception(cls, exc, tb)
    except BaseException:  # pragma: no cover - a traceback that cannot be formatted
        lines = []
    info: Dict[str, Any] = {
        "kind": kind,
        "type": cls.__name__,
        "mro": [_qualified(base) for base in cls.__mro__ if issubclass(base, BaseException)],
        "message": _message(exc),
        "traceback": "".join(line for line in lines if not line.startswith('  File "<frozen importlib.')),
    }
    attrs = _error_attrs(exc)
    if attrs:
        info["attrs"] = attrs
    return info


def _error_attrs(exc: BaseException) -> Dict[str, Any]:
    """The ``ERROR_ATTRS`` of *exc* that are plain and small; never raises (a property may)."""
    import builtins

    attrs: Dict[str, Any] = {}
    for base, names in ERROR_ATTRS.items():
        if not isinstance(exc, getattr(builtins, base)):
            continue
        for name in names:
            try:
                value = getattr(exc, name, None)
            except Exception:  # a subclass's property that raises
                continue
            if value is None or type(value) is bool:
                continue
            if type(value) is int and -(1 << 31) <= value < 1 << 31:
                attrs[name] = value
            elif type(value) in (str, bytes) and len(value) <= ATTR_MAX:
                attrs[name] = value
    return attrs


def _annotation(value: Any) -> Any:
    import inspect

    if value is inspect.Parameter.empty:
        return None
    try:
        return value if isinstance(value, str) else inspect.formatannotation(value)
    except Exception:  # an annotation object whose repr raises: shown as nothing
        return None


def _shown(value: Any) -> str:
    """A default's source-like text; never raises (a repr may, e.g. an int of 5,000 digits)."""
    try:
        return repr(value)
    except Exception:
        return "<%s>" % type(value).__name__


def describe(name: str, function: Callable[..., Any]) -> Dict[str, Any]:
    """Describe one pod function: what the client needs to rebuild its name, doc and signature."""
    import inspect  # only when describing: workers started with a cached description never need it

    info: Dict[str, Any] = {
        "name": name,
        "doc": inspect.getdoc(function),
        "generator": inspect.isgeneratorfunction(function),
        "async": inspect.iscoroutinefunction(function),
        "module": getattr(function, "__module__", None),
        "qualname": getattr(function, "__qualname__", name),
    }
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        info["params"] = None
        return info
    params: List[Dict[str, Any]] = []
    for param in signature.parameters.values():
        entry: Dict[str, Any] = {"name": param.name, "kind": int(param.kind)}
        if param.default is not inspect.Parameter.empty:
            entry["default"] = _shown(param.default)
            if _plain(param.default):
                entry["value"] = param.default
        annotation = _annotation(param.annotation)
        if annotation is not None:
            entry["annotation"] = annotation
        params.append(entry)
    info["params"] = params
    info["returns"] = _annotation(signature.return_annotation)
    return info


def _plain(value: Any) -> bool:
    """True for defaults that the client can rebuild as the same value (not just their repr)."""
    if type(value) is int:
        return abs(value) < 1 << 64  # a huge one would not cross, and need not
    if value is None or type(value) in (bool, float, str, bytes):
        return True
    if type(value) in (tuple, list, frozenset):
        return all(_plain(item) for item in value)
    return False
