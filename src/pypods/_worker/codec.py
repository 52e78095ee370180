"""BSON with typed extensions: the value format both sides of a pod speak (stdlib only, Python 3.8+).

Plain BSON carries what it can say natively (None, bool, 32/64-bit int, float, str, bytes, str-keyed
documents, lists, UUIDs). Everything else travels as an *extension document* whose first key is
``"$t"`` (its tag) followed by ``"v"`` (its payload) and sometimes more fields; the tags are listed
in ``docs/architecture.md``. Decoding (``decoding.py``) never imports or runs user code. Encoding
raises only ``EncodeError`` whatever goes wrong (an unsupported type, nesting too deep for the
stack, a value whose ``__str__`` raises, memory), so callers need to catch one type.
"""

from __future__ import annotations

import datetime
import decimal
import enum
import pathlib
import struct
import uuid
from typing import Any, Callable, Dict, List, Optional

from . import exttypes
from .decoding import (  # the codec, both ways
    _BY_NAME,
    TAG,
    DecodeError as DecodeError,
    Decoder as Decoder,
    decode as decode,
)

_I32 = struct.Struct("<i")
_I64 = struct.Struct("<q")
_F64 = struct.Struct("<d")
_pack_i32 = _I32.pack
_pack_i64 = _I64.pack
_pack_f64 = _F64.pack
_unpack_i32 = _I32.unpack_from
_unpack_i64 = _I64.unpack_from
_unpack_f64 = _F64.unpack_from
_pack_i32_into = _I32.pack_into

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_CALL_HEADS: Dict[str, bytes] = {}
_INDEX_KEYS = [str(i).encode() + b"\x00" for i in range(1024)]


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


class _NulKey(Exception):
    """A str key holds NUL, which a BSON key cannot: the dict goes as key/value pairs instead."""


def _key(name: str) -> bytes:
    data = name.encode("utf-8", "surrogatepass")
    if b"\x00" in data:
        raise _NulKey
    return data + b"\x00"


class Encoder:
    """Encode one message; ``big`` collects buffers sent out of band (see ``exttypes.Shm``)."""

    __slots__ = ("big",)

    def __init__(self, big: Optional[exttypes.OutOfBand] = None) -> None:
        self.big = big

    def document(self, doc: Dict[str, Any]) -> bytearray:
        """Encode a str-keyed dict as a top-level BSON document."""
        out = bytearray()
        try:
            self._doc(out, doc, top=True)
        except Exception as exc:
            raise _as_encode_error(exc) from exc
        return out

    def request(self, call_id: int, name: str, args: Any, kwargs: Dict[str, Any]) -> bytearray:
        """``{"id", "op": "call", "name", "args", "kwargs"}``: the same bytes as ``document``, faster.

        The hot path of every call: the constant part (op and name) is encoded once per name.
        """
        try:
            return self._request(call_id, name, args, kwargs)
        except Exception as exc:
            raise _as_encode_error(exc) from exc

    def call_head(self, call_id: int, name: str) -> bytearray:
        """The start of a call request: length placeholder, ``id``, ``"op": "call"``, ``name``."""
        head = _CALL_HEADS.get(name)
        if head is None:
            data = name.encode("utf-8", "surrogatepass")
            head = _CALL_HEADS[name] = (
                b"\x02op\x00\x05\x00\x00\x00call\x00\x02name\x00" + _pack_i32(len(data) + 1) + data + b"\x00"
            )
        out = bytearray(b"\x00\x00\x00\x00")
        self.value(out, b"id\x00", call_id)
        out += head
        return out

    def _request(self, call_id: int, name: str, args: Any, kwargs: Dict[str, Any]) -> bytearray:
        out = self.call_head(call_id, name)
        for key, item in ((b"args\x00", args), (b"kwargs\x00", kwargs)):
            try:
                if key == b"args\x00":
                    out += b"\x04args\x00"
                    self._array(out, item)
                else:
                    self.value(out, key, item)
            except EncodeError as exc:
                exc.path.append(key[:-1].decode())
                raise
        out += b"\x00"
        _pack_i32_into(out, 0, len(out))
        return out

    def reply(self, call_id: int, value: Any) -> bytearray:
        """``{"id", "ok": true, "value"}``: the same bytes as ``document``, faster."""
        out = bytearray(b"\x00\x00\x00\x00")
        try:
            self.value(out, b"id\x00", call_id)
            out += b"\x08ok\x00\x01"
            self.value(out, b"value\x00", value)
        except Exception as exc:
            error = _as_encode_error(exc)
            error.path.append("value")
            raise error from exc
        out += b"\x00"
        _pack_i32_into(out, 0, len(out))
        return out

    def _doc(self, out: bytearray, doc: Dict[Any, Any], top: bool = False) -> None:
        start = len(out)
        out += b"\x00\x00\x00\x00"
        value = self.value
        for name, item in doc.items():
            try:
                value(out, _key(name), item)
            except EncodeError as exc:
                exc.path.append(name if top else "[%r]" % (name,))
                raise
        out += b"\x00"
        _pack_i32_into(out, start, len(out) - start)

    def _array(self, out: bytearray, items: Any) -> None:
        start = len(out)
        out += b"\x00\x00\x00\x00"
        value = self.value
        keys = _INDEX_KEYS
        for index, item in enumerate(items):
            try:
                value(out, keys[index] if index < 1024 else b"%d\x00" % index, item)
            except EncodeError as exc:
                exc.path.append("[%d]" % index)
                raise
        out += b"\x00"
        _pack_i32_into(out, start, len(out) - start)

    def ext(self, out: bytearray, key: bytes, tag: str, payload: Any, **extra: Any) -> None:
        """Write ``{"$t": tag, "v": payload, **extra}`` as an embedded document."""
        out += b"\x03" + key
        start = len(out)
        tag_data = tag.encode()
        out += b"\x00\x00\x00\x00\x02$t\x00" + _pack_i32(len(tag_data) + 1) + tag_data + b"\x00"
        self.value(out, b"v\x00", payload)
        for name, item in extra.items():
            self.value(out, name.encode() + b"\x00", item)
        out += b"\x00"
        _pack_i32_into(out, start, len(out) - start)

    def value(self, out: bytearray, key: bytes, obj: Any) -> None:
        """Append one element (type byte, key, payload) for *obj*."""
        kind = type(obj)
        if kind is str:
            data = obj.encode("utf-8", "surrogatepass")
            out += b"\x02" + key + _pack_i32(len(data) + 1) + data + b"\x00"
        elif kind is int:
            if _INT32_MIN <= obj <= _INT32_MAX:
                out += b"\x10" + key + _pack_i32(obj)
            elif _INT64_MIN <= obj <= _INT64_MAX:
                out += b"\x12" + key + _pack_i64(obj)
            else:  # two's complement bytes: exact at any size, linear (no str() digit limit)
                self.ext(out, key, "int", obj.to_bytes(obj.bit_length() // 8 + 1, "little", signed=True))
        elif kind is float:
            out += b"\x01" + key + _pack_f64(obj)
        elif obj is None:
            out += b"\x0a" + key
        elif kind is bool:
            out += b"\x08" + key + (b"\x01" if obj else b"\x00")
        elif kind is dict:
            start = len(out)
            if all(type(k) is str for k in obj) and TAG not in obj:
                try:
                    out += b"\x03" + key
                    self._doc(out, obj)
                    return
                except _NulKey:
                    del out[start:]
            self.ext(out, key, "dict", [list(pair) for pair in obj.items()])
        elif kind is list:
            out += b"\x04" + key
            self._array(out, obj)
        elif kind is bytes:
            self._binary(out, key, obj, "bytes")
        else:
            encode = _ENCODERS.get(kind)
            if encode is None:
                encode = _encoder_for_subclass(obj)
            encode(self, out, key, obj)

    def _binary(self, out: bytearray, key: bytes, data: Any, kind: str) -> None:
        size = len(data)
        if self.big is not None and size >= self.big.threshold:
            self.ext(out, key, "shm", self.big.put(data), k=kind)
            return
        if kind == "bytearray":
            out += b"\x03" + key
            start = len(out)
            out += b"\x00\x00\x00\x00\x02$t\x00\x0a\x00\x00\x00bytearray\x00\x05v\x00"
            out += _pack_i32(size) + b"\x00" + data + b"\x00"
            _pack_i32_into(out, start, len(out) - start)
            return
        out += b"\x05" + key + _pack_i32(size) + b"\x00" + data


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
    name = obj._name_
    payload: Any = name
    if name is None or cls._member_map_.get(name) is not obj:
        if not isinstance(obj, enum.Flag) or type(obj._value_) is not int:
            raise EncodeError("cannot send %s: not a member of its enum" % cls.__qualname__)
        payload = obj._value_  # a combination of flags (re.I | re.M) crosses as its int value
    enc.ext(out, key, "enum", payload, c="%s:%s" % (cls.__module__, cls.__qualname__))


def _exception(enc: Encoder, out: bytearray, key: bytes, obj: BaseException) -> None:
    cls = type(obj)
    args = [a if _sendable(a) else _safe_text(repr, a) for a in obj.args]
    enc.ext(out, key, "exc", args, c="%s:%s" % (cls.__module__, cls.__qualname__), m=_safe_text(str, obj))


def _safe_text(render: Callable[[Any], str], obj: Any) -> str:
    """``str``/``repr`` of a value whose own method may raise (the error is sent instead)."""
    try:
        return str(render(obj))
    except Exception as exc:
        return "<%s of %s failed: %s>" % (render.__name__, type(obj).__name__, type(exc).__name__)


def _as_encode_error(exc: BaseException) -> EncodeError:
    """Any failure while encoding, as the one error type callers catch."""
    if isinstance(exc, EncodeError):
        return exc
    if isinstance(exc, RecursionError):
        return EncodeError("value is nested too deeply to send")
    return EncodeError("cannot send this value: %s: %s" % (type(exc).__name__, _safe_text(str, exc)))


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


def _sendable(obj: Any) -> bool:
    try:
        Encoder().value(bytearray(), b"x\x00", obj)
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


def encode(doc: Dict[str, Any], big: Optional[exttypes.OutOfBand] = None) -> bytearray:
    """Encode a top-level document (convenience for tests and one-off messages)."""
    return Encoder(big).document(doc)
