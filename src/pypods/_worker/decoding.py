"""Decoding the pod wire format: BSON plus the extension documents that ``codec.py`` writes.

Decoding never imports or runs user code: extension tags map to fixed constructors, and enums and
exceptions resolve only to classes of already-imported or standard-library modules (registered
dataclasses and NamedTuples only to classes registered on this side).
"""

from __future__ import annotations

import datetime
import decimal
import enum
import pathlib
import struct
import sys
import uuid
from typing import Any, Callable, Dict, Optional, Tuple

from . import exttypes

_unpack_i32 = struct.Struct("<i").unpack_from
_unpack_i64 = struct.Struct("<q").unpack_from
_unpack_f64 = struct.Struct("<d").unpack_from
TAG = "$t"
# Classes registered on this side, by wire name "module:QualName" (see codec.register).
_BY_NAME: Dict[str, type] = {}


class DecodeError(ValueError):
    """Bytes are not a well-formed message (truncated, forged length, unknown type)."""


def _decode_registered(payload: Any, fields: Dict[str, Any]) -> Any:
    cls = _BY_NAME.get(fields.get("c", ""))
    if cls is None or not isinstance(payload, dict):
        return payload  # not registered here: the receiver gets the fields
    return cls(**payload)


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


def decode(data: bytes, big: Optional[exttypes.OutOfBand] = None) -> Dict[str, Any]:
    """Decode a top-level document (convenience for tests and one-off messages)."""
    return Decoder(big).document(data)
