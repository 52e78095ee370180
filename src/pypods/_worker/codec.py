"""BSON with typed extensions: the value format both sides of a pod speak (stdlib only, Python 3.8+).

Plain BSON carries what it can say natively (None, bool, 32/64-bit int, float, str, bytes, str-keyed
documents, lists, UUIDs). Everything else travels as an *extension document* whose first key is
``"$t"`` (its tag) followed by ``"v"`` (its payload) and sometimes more fields; the tags are listed
in ``docs/architecture.md``. Decoding never imports or runs user code: extension tags map to fixed
constructors, and enums and exceptions resolve only to classes of already-imported or standard-library
modules.
"""

from __future__ import annotations

import datetime
import decimal
import enum
import pathlib
import struct
import sys
import uuid
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import exttypes

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

MAX_DOCUMENT = 2**31 - 1  # BSON sizes are signed 32-bit
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_CALL_HEADS: Dict[str, bytes] = {}
_INDEX_KEYS = [str(i).encode() + b"\x00" for i in range(1024)]
TAG = "$t"


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


class DecodeError(ValueError):
    """Bytes are not a well-formed message (truncated, forged length, unknown type)."""


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
        self._doc(out, doc, top=True)
        return out

    def request(self, call_id: int, name: str, args: Any, kwargs: Dict[str, Any]) -> bytearray:
        """``{"id", "op": "call", "name", "args", "kwargs"}``: the same bytes as ``document``, faster.

        The hot path of every call: the constant part (op and name) is encoded once per name.
        """
        head = _CALL_HEADS.get(name)
        if head is None:
            data = name.encode("utf-8", "surrogatepass")
            head = _CALL_HEADS[name] = (
                b"\x02op\x00\x05\x00\x00\x00call\x00\x02name\x00" + _pack_i32(len(data) + 1) + data + b"\x00"
            )
        out = bytearray(b"\x00\x00\x00\x00")
        self.value(out, b"id\x00", call_id)
        out += head
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
        self.value(out, b"id\x00", call_id)
        out += b"\x08ok\x00\x01"
        try:
            self.value(out, b"value\x00", value)
        except EncodeError as exc:
            exc.path.append("value")
            raise
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
            else:
                self.ext(out, key, "int", str(obj))
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
    enc.ext(out, key, "enum", obj.name, c="%s:%s" % (cls.__module__, cls.__qualname__))


def _exception(enc: Encoder, out: bytearray, key: bytes, obj: BaseException) -> None:
    cls = type(obj)
    args = [a if _sendable(a) else repr(a) for a in obj.args]
    enc.ext(out, key, "exc", args, c="%s:%s" % (cls.__module__, cls.__qualname__), m=str(obj))


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
_BY_NAME: Dict[str, type] = {}


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


def _decode_registered(payload: Any, fields: Dict[str, Any]) -> Any:
    cls = _BY_NAME.get(fields.get("c", ""))
    if cls is None or not isinstance(payload, dict):
        return payload  # not registered here: the receiver gets the fields
    return cls(**payload)


def _sendable(obj: Any) -> bool:
    try:
        Encoder().value(bytearray(), b"x\x00", obj)
    except (EncodeError, RecursionError):
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


# --- decoding -------------------------------------------------------------------------------


def _cstring(data: bytes, pos: int) -> Tuple[str, int]:
    end = data.index(b"\x00", pos)
    return data[pos:end].decode("utf-8", "surrogatepass"), end + 1


class Decoder:
    """Decode one message; ``big`` maps out-of-band buffers back (see ``exttypes.Shm``)."""

    __slots__ = ("big",)

    def __init__(self, big: Optional[exttypes.OutOfBand] = None) -> None:
        self.big = big

    def document(self, data: bytes) -> Dict[str, Any]:
        """Decode a whole top-level document, or raise DecodeError."""
        try:
            if len(data) < 5 or _unpack_i32(data, 0)[0] != len(data):
                raise DecodeError("document length does not match its frame")
            doc, _ = self._doc(data, 0, False)
        except DecodeError:
            raise
        except exttypes.MissingLibrary:
            raise
        except Exception as exc:
            raise DecodeError("malformed message: %s: %s" % (type(exc).__name__, exc)) from exc
        if type(doc) is not dict:
            raise DecodeError("top-level document is an extension value")
        return doc

    def _doc(self, data: bytes, pos: int, array: bool) -> Tuple[Any, int]:
        size = _unpack_i32(data, pos)[0]
        end = pos + size - 1
        if size < 5 or end >= len(data) or data[end] != 0:
            raise DecodeError("bad document length %d at offset %d" % (size, pos))
        pos += 4
        items: Any = [] if array else {}
        while pos < end:
            kind = data[pos]
            key_end = data.index(b"\x00", pos + 1)
            if array:
                pos = key_end + 1
            else:
                key = data[pos + 1 : key_end].decode("utf-8", "surrogatepass")
                pos = key_end + 1
            if kind == 0x02:
                length = _unpack_i32(data, pos)[0]
                stop = pos + 4 + length - 1
                if length < 1 or stop > end or data[stop] != 0:
                    raise DecodeError("bad string length at offset %d" % pos)
                item: Any = data[pos + 4 : stop].decode("utf-8", "surrogatepass")
                pos = stop + 1
            elif kind == 0x10:
                item = _unpack_i32(data, pos)[0]
                pos += 4
            elif kind == 0x03 or kind == 0x04:
                item, pos = self._doc(data, pos, kind == 0x04)
            elif kind == 0x01:
                item = _unpack_f64(data, pos)[0]
                pos += 8
            elif kind == 0x12:
                item = _unpack_i64(data, pos)[0]
                pos += 8
            elif kind == 0x0A:
                item = None
            elif kind == 0x08:
                flag = data[pos]
                if flag > 1:
                    raise DecodeError("bad boolean at offset %d" % pos)
                item = flag == 1
                pos += 1
            elif kind == 0x05:
                length = _unpack_i32(data, pos)[0]
                subtype = data[pos + 4]
                stop = pos + 5 + length
                if length < 0 or stop > end:
                    raise DecodeError("bad binary length at offset %d" % pos)
                item = data[pos + 5 : stop]
                if subtype == 4 and length == 16:
                    item = uuid.UUID(bytes=item)
                pos = stop
            elif kind == 0x09:  # UTC datetime from other BSON producers: milliseconds since epoch
                millis = _unpack_i64(data, pos)[0]
                item = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc) + datetime.timedelta(
                    milliseconds=millis
                )
                pos += 8
            else:
                raise DecodeError("unsupported BSON type 0x%02x at offset %d" % (kind, pos))
            if array:
                items.append(item)
            else:
                items[key] = item
        if pos != end:
            raise DecodeError("document overruns its length at offset %d" % pos)
        if not array and TAG in items:
            return self.extension(items), end + 1
        return items, end + 1

    def extension(self, fields: Dict[str, Any]) -> Any:
        """Turn an extension document into its value."""
        tag = fields[TAG]
        payload = fields.get("v")
        decode = _DECODERS.get(tag)
        if decode is not None:
            return decode(payload, fields)
        if tag == "shm":
            if self.big is None:
                raise DecodeError("out-of-band buffer sent where none is expected")
            return self.big.get(payload, fields.get("k"))
        special = exttypes.decoder_for(tag)
        if special is None:
            raise DecodeError("unknown extension type %r" % (tag,))
        return special(payload, fields, self)


def _importable_class(spec: Any, base: type) -> Optional[type]:
    """Resolve ``module:qualname`` without running code: only modules already imported or stdlib."""
    if not isinstance(spec, str) or ":" not in spec:
        return None
    module_name, qualname = spec.split(":", 1)
    module = sys.modules.get(module_name)
    if module is None and exttypes.is_stdlib(module_name):
        import importlib

        try:
            module = importlib.import_module(module_name)
        except ImportError:
            return None
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part, None) if obj is not None else None
    return obj if isinstance(obj, type) and issubclass(obj, base) else None


def _decode_enum(payload: Any, fields: Dict[str, Any]) -> Any:
    cls = _importable_class(fields.get("c"), enum.Enum)
    if cls is None:
        raise DecodeError("enum %s is not importable on this side" % fields.get("c"))
    return cls[payload]  # type: ignore[index]


def _decode_exception(payload: Any, fields: Dict[str, Any]) -> BaseException:
    cls = _importable_class(fields.get("c"), BaseException)
    if cls is not None:
        try:
            return cls(*payload)  # type: ignore[no-any-return]
        except Exception:
            pass
    return Exception("%s: %s" % (fields.get("c", "?").replace(":", "."), fields.get("m", "")))


_PATHS = {
    cls.__name__: cls
    for cls in (
        pathlib.PurePath,
        pathlib.PurePosixPath,
        pathlib.PureWindowsPath,
        pathlib.Path,
        pathlib.PosixPath,
        pathlib.WindowsPath,
    )
}


def _decode_path(payload: Any, fields: Dict[str, Any]) -> pathlib.PurePath:
    cls = _PATHS.get(fields.get("k", "PurePath"), pathlib.PurePath)
    try:
        return cls(payload)
    except NotImplementedError:  # a concrete path of the other OS family
        return pathlib.PurePath(payload)


def _decode_datetime(payload: Any, fields: Dict[str, Any]) -> datetime.datetime:
    value = datetime.datetime.fromisoformat(payload)
    return value.replace(fold=1) if fields.get("fold") else value


def _decode_dict(payload: Any, fields: Dict[str, Any]) -> Dict[Any, Any]:
    return dict(payload)


def _decode_bytearray(payload: Any, fields: Dict[str, Any]) -> bytearray:
    return payload if isinstance(payload, bytearray) else bytearray(payload)


_DECODERS: Dict[str, Callable[[Any, Dict[str, Any]], Any]] = {
    "tuple": lambda v, f: tuple(v),
    "set": lambda v, f: set(v),
    "frozenset": lambda v, f: frozenset(v),
    "dict": _decode_dict,
    "int": lambda v, f: int(v),
    "complex": lambda v, f: complex(v[0], v[1]),
    "decimal": lambda v, f: decimal.Decimal(v),
    "datetime": _decode_datetime,
    "date": lambda v, f: datetime.date.fromisoformat(v),
    "time": lambda v, f: datetime.time.fromisoformat(v),
    "timedelta": lambda v, f: datetime.timedelta(v[0], v[1], v[2]),
    "range": lambda v, f: range(v[0], v[1], v[2]),
    "path": _decode_path,
    "enum": _decode_enum,
    "exc": _decode_exception,
    "bytearray": _decode_bytearray,
    "obj": _decode_registered,
}


def encode(doc: Dict[str, Any], big: Optional[exttypes.OutOfBand] = None) -> bytearray:
    """Encode a top-level document (convenience for tests and one-off messages)."""
    return Encoder(big).document(doc)


def decode(data: bytes, big: Optional[exttypes.OutOfBand] = None) -> Dict[str, Any]:
    """Decode a top-level document (convenience for tests and one-off messages)."""
    return Decoder(big).document(data)
