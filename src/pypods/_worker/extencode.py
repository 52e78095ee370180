"""Encoders of the extension values (tuples, sets, dates, enums, exceptions, dataclasses, ...) and the
class registry; ``codec.Encoder`` calls them for every value plain BSON cannot carry (stdlib only).

Each encoder is ``(encoder, out, key, value) -> None`` and writes one element through
``Encoder.ext``; ``_encoder_for_subclass`` picks one for types not in the table. Every failure is
an ``EncodeError`` by the time it leaves ``codec.Encoder``.
"""

from __future__ import annotations

import datetime
import decimal
import enum
import pathlib
import uuid
from typing import TYPE_CHECKING, Any, Callable, Dict, List

from . import exttypes
from .decoding import _BY_NAME

if TYPE_CHECKING:
    from .codec import Encoder


class EncodeError(TypeError):
    """A value cannot be encoded; ``path`` says where it sat, innermost last."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.path: List[str] = []

    def where(self) -> str:
        """Render the path as Python would index it: ``args[1]['items'][3]``."""
        return "".join(reversed(self.path))

    def __str__(self) -> str:
        where = self.where()
        return "%s: %s" % (where, self.message) if where else self.message


def _raw(enc: Encoder, out: bytearray, key: bytes, obj: exttypes.RawBuffer) -> None:
    enc._binary(out, key, obj.view, "raw")


def _tuple(enc: Encoder, out: bytearray, key: bytes, obj: Any) -> None:
    enc.ext(out, key, "tuple", list(obj))


def _set(enc: Encoder, out: bytearray, key: bytes, obj: Any) -> None:
    enc.ext(out, key, "set" if isinstance(obj, set) else "frozenset", list(obj))


def _datetime(enc: Encoder, out: bytearray, key: bytes, obj: Any) -> None:
    tag = "datetime" if isinstance(obj, datetime.datetime) else "date"
    if tag == "datetime" and obj.fold:
        enc.ext(out, key, tag, obj.isoformat(), fold=1)
    else:
        enc.ext(out, key, tag, obj.isoformat())


def _time(enc: Encoder, out: bytearray, key: bytes, obj: datetime.time) -> None:
    if obj.fold:
        enc.ext(out, key, "time", obj.isoformat(), fold=1)
    else:
        enc.ext(out, key, "time", obj.isoformat())


def _timedelta(enc: Encoder, out: bytearray, key: bytes, obj: datetime.timedelta) -> None:
    enc.ext(out, key, "timedelta", [obj.days, obj.seconds, obj.microseconds])


def _uuid(enc: Encoder, out: bytearray, key: bytes, obj: uuid.UUID) -> None:
    out += b"\x05" + key + b"\x10\x00\x00\x00\x04" + obj.bytes


def _complex(enc: Encoder, out: bytearray, key: bytes, obj: complex) -> None:
    enc.ext(out, key, "complex", [obj.real, obj.imag])


def _decimal(enc: Encoder, out: bytearray, key: bytes, obj: decimal.Decimal) -> None:
    enc.ext(out, key, "decimal", str(obj))


def _path(enc: Encoder, out: bytearray, key: bytes, obj: pathlib.PurePath) -> None:
    enc.ext(out, key, "path", str(obj), k=type(obj).__name__)


def _range(enc: Encoder, out: bytearray, key: bytes, obj: range) -> None:
    enc.ext(out, key, "range", [obj.start, obj.stop, obj.step])


def _bytearray(enc: Encoder, out: bytearray, key: bytes, obj: bytearray) -> None:
    enc._binary(out, key, obj, "bytearray")


def _memoryview(enc: Encoder, out: bytearray, key: bytes, obj: memoryview) -> None:
    enc._binary(out, key, obj.cast("B") if obj.c_contiguous else obj.tobytes(), "bytes")


def _enum(enc: Encoder, out: bytearray, key: bytes, obj: enum.Enum) -> None:
    cls = type(obj)
    if cls.__module__ == "__main__":  # the other side's __main__ is another program: it cannot resolve it
        raise EncodeError(
            "cannot send %s: an enum defined in __main__ (the running script) cannot be found on the other "
            "side; define it in a module both sides import, or send its value" % cls.__qualname__
        )
    name = obj._name_
    payload: Any = name
    if name is None or cls._member_map_.get(name) is not obj:
        if not isinstance(obj, enum.Flag) or type(obj._value_) is not int:
            raise EncodeError("cannot send %s: not a member of its enum" % cls.__qualname__)
        payload = obj._value_  # a combination of flags (re.I | re.M) crosses as its int value
    enc.ext(out, key, "enum", payload, c="%s:%s" % (cls.__module__, cls.__qualname__))


def _exception(enc: Encoder, out: bytearray, key: bytes, obj: BaseException) -> None:
    cls = type(obj)
    sendable = [_sendable(enc, a) for a in obj.args]
    args = [a if ok else _safe_text(repr, a) for a, ok in zip(obj.args, sendable)]
    try:
        message = str(obj)
    except Exception as exc:  # a value that cannot be described cannot be sent (issue #11)
        if cls.__str__ is not BaseException.__str__ or not all(sendable):
            raise EncodeError("cannot send %s: its __str__ raised %s" % (cls.__qualname__, type(exc).__name__))
        # The builtin __str__ of exact args failed (an int past 4,300 digits): the args carry the value.
        message = "<%s; its message could not be shown>" % cls.__qualname__
    extra: Dict[str, Any] = {}
    attrs = _exception_attrs(obj)
    if attrs:
        sent = {name: value for name, value in attrs.items() if type(name) is str and _sendable(enc, value)}
        extra["d"] = sent
        if len(sent) != len(attrs):
            extra["x"] = 1  # an attribute cannot cross: the receiver must not rebuild the class without it
    enc.ext(out, key, "exc", args, c="%s:%s" % (cls.__module__, cls.__qualname__), m=message, **extra)


# Attributes builtin exceptions keep beside their args (their constructors take them as keywords or
# past the args): the receiver sets them back, as it does the instance's own __dict__.
_BUILTIN_ATTRS = ((OSError, ("filename", "filename2")), (ImportError, ("name", "path")), (NameError, ("name",)))


def _exception_attrs(obj: BaseException) -> Dict[Any, Any]:
    attrs: Dict[Any, Any] = {}
    for base, names in _BUILTIN_ATTRS:
        if isinstance(obj, base):
            for name in names:
                value = getattr(obj, name, None)
                if value is not None:
                    attrs[name] = value
    if isinstance(obj, AttributeError) and getattr(obj, "name", None) is not None:
        attrs["name"] = obj.name  # not .obj: the object itself rarely crosses
    attrs.update(_slot_values(obj))
    try:
        attrs.update(vars(obj))
    except TypeError:
        pass
    return attrs


_MEMBER = type(OSError.__dict__["errno"])  # a __slots__ entry's descriptor (types.MemberDescriptorType)
_HEAPTYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class statement's class (the builtins' own members are not slots)


def _slot_values(obj: BaseException) -> Dict[str, Any]:
    """The ``__slots__`` values set on *obj* by classes of its own (not in ``vars(obj)``, so sent apart).

    ``class E(ValueError): __slots__ = ("code",)`` with ``e.code = 5``: without this, the receiver
    would rebuild an ``E`` whose ``code`` raises AttributeError.
    """
    values: Dict[str, Any] = {}
    for klass in type(obj).__mro__:
        if not klass.__flags__ & _HEAPTYPE:
            continue
        for name, descriptor in klass.__dict__.items():
            if type(descriptor) is _MEMBER and descriptor.__objclass__ is klass and name not in values:
                try:
                    values[name] = descriptor.__get__(obj, klass)
                except AttributeError:
                    pass  # never set here: not set there either
    return values


def _safe_text(render: Callable[[Any], str], obj: Any) -> str:
    """``str``/``repr`` of a value whose own method may raise (the error is sent instead)."""
    try:
        return str(render(obj))
    except Exception as exc:
        return "<%s of %s failed: %s>" % (render.__name__, type(obj).__name__, type(exc).__name__)


def _as_encode_error(exc: BaseException, roots: Any = ()) -> EncodeError:
    """Any failure while encoding, as the one error type callers catch.

    *roots* are the ``(name, value)`` pairs being encoded: a RecursionError among them is looked
    into, so that a value holding itself is named as a cycle, with the path where it closes.
    """
    if isinstance(exc, EncodeError):
        return exc
    if isinstance(exc, RecursionError):
        for name, value in roots:
            where = _cycle(name, value)
            if where is not None:
                error = EncodeError("cannot send a value that contains itself (a cycle)")
                error.path.append(where)
                return error
        return EncodeError("value is nested too deeply to send")
    return EncodeError("cannot send this value: %s: %s" % (type(exc).__name__, _safe_text(str, exc)))


def _steps(obj: Any) -> Any:
    """The containers' items a cycle can run through, as ``(index text, item)``."""
    if isinstance(obj, dict):
        return (("[%s]" % _safe_text(repr, key), item) for key, item in obj.items())
    if isinstance(obj, (list, tuple)):
        return (("[%d]" % index, item) for index, item in enumerate(obj))
    return None


def _cycle(name: str, value: Any) -> Any:
    """The path (``args[0][1]``) at which *value* first reaches a container it is inside, or None.

    Iterative (it runs after a RecursionError) and linear: each container is entered once.
    """
    first = _steps(value)
    if first is None:
        return None
    stack: List[Any] = [(value, first, name)]
    inside = {id(value)}
    done = set()
    while stack:
        _, items, _step = stack[-1]
        for step, item in items:
            children = _steps(item)
            if children is None or id(item) in done:
                continue
            if id(item) in inside:
                return "".join(frame[2] for frame in stack) + step
            inside.add(id(item))
            stack.append((item, children, step))
            break
        else:
            obj = stack.pop()[0]
            inside.discard(id(obj))
            done.add(id(obj))
    return None


def _dataclass(enc: Encoder, out: bytearray, key: bytes, obj: Any) -> None:
    import dataclasses

    fields = {field.name: getattr(obj, field.name) for field in dataclasses.fields(obj)}
    enc.value(out, key, fields)  # sent as its fields: the receiver may not have the class


def _is_dataclass(obj: Any) -> bool:
    """``dataclasses.is_dataclass`` without importing dataclasses (and inspect) at worker start."""
    cls = obj if isinstance(obj, type) else type(obj)
    return hasattr(cls, "__dataclass_fields__")


def _fields(obj: Any) -> Dict[str, Any]:
    if _is_dataclass(obj):
        import dataclasses

        return {field.name: getattr(obj, field.name) for field in dataclasses.fields(obj)}
    return dict(obj._asdict())  # a NamedTuple


def _registered(enc: Encoder, out: bytearray, key: bytes, obj: Any) -> None:
    enc.ext(out, key, "obj", _fields(obj), c=REGISTERED[type(obj)])


# Classes both sides agreed to rebuild (dataclasses and NamedTuples): class -> "module:qualname".
REGISTERED: Dict[type, str] = {}


def register(cls: type) -> str:
    """Let instances of *cls* (a dataclass or NamedTuple) cross as themselves; return its wire name."""
    if not (_is_dataclass(cls) or (issubclass(cls, tuple) and hasattr(cls, "_fields"))):
        raise TypeError("only dataclasses and NamedTuples can be registered, not %r" % (cls,))
    name = "%s:%s" % (cls.__module__, cls.__qualname__)
    if REGISTERED.get(cls) != name:
        REGISTERED[cls] = name
        _BY_NAME[name] = cls
        _VERSION[0] += 1
    return name


_VERSION = [0]


def registry_version() -> int:
    """Bumped by every new registration, so connections know to tell their worker."""
    return _VERSION[0]


def _sendable(enc: Encoder, obj: Any) -> bool:
    try:
        type(enc)().value(bytearray(), b"x\x00", obj)
    except Exception:
        return False
    return True


_ENCODERS: Dict[type, Callable[[Encoder, bytearray, bytes, Any], None]] = {
    tuple: _tuple,
    set: _set,
    frozenset: _set,
    datetime.datetime: _datetime,
    datetime.date: _datetime,
    datetime.time: _time,
    datetime.timedelta: _timedelta,
    uuid.UUID: _uuid,
    complex: _complex,
    decimal.Decimal: _decimal,
    range: _range,
    bytearray: _bytearray,
    memoryview: _memoryview,
    exttypes.RawBuffer: _raw,
}


def _encoder_for_subclass(obj: Any) -> Callable[[Encoder, bytearray, bytes, Any], None]:
    """Pick an encoder for a type not in the table (subclasses, optional libraries)."""
    if isinstance(obj, enum.Enum):
        return _enum
    if isinstance(obj, pathlib.PurePath):
        return _path
    if isinstance(obj, BaseException):
        return _exception
    special = exttypes.encoder_for(obj)
    if special is not None:
        return special
    if type(obj) in REGISTERED:
        return _registered
    if _is_dataclass(obj) and not isinstance(obj, type):
        return _dataclass
    for base in (bool, int, float, str, bytes, dict, list):
        if isinstance(obj, base):
            return lambda enc, out, key, o: enc.value(out, key, base(o))
    if isinstance(obj, tuple):
        return _tuple  # NamedTuple: sent as its fields
    for kind, encode in _ENCODERS.items():
        if isinstance(obj, kind):
            return encode
    raise EncodeError("cannot send %s" % _type_name(obj))


def _type_name(obj: Any) -> str:
    cls = type(obj)
    module = cls.__module__
    if module in ("builtins", "__main__"):
        return cls.__qualname__
    return "%s (from %s)" % (cls.__qualname__, module)
