"""Decoding the pod wire format: BSON plus the extension documents that ``codec.py`` writes.

The decoder reads hostile input (a pod's replies, ``.pypods/description.bson``). It never imports a
module (only the worker, for its trusted client's calls, imports a standard-library one) and never
calls anything but the constructors of a fixed set of value types: extension tags map to fixed
constructors; ``enum``/``exc`` classes resolve only from ``sys.modules`` (modules this process
already imported), looked up through class and module ``__dict__``s (no ``__getattr__`` hooks);
registered dataclasses and NamedTuples only to classes registered on this side. Every
allocation is bounded by the bytes received, and sets and dicts with non-string keys refuse more
than ``MAX_COLLISIONS`` keys sharing one hash, so hash flooding cannot make decoding quadratic.
"""

from __future__ import annotations

import builtins
import collections
import datetime
import decimal
import enum
import importlib
import pathlib
import struct
import sys
import types
import uuid
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import exttypes

_unpack_i32 = struct.Struct("<i").unpack_from
_unpack_i64 = struct.Struct("<q").unpack_from
_unpack_f64 = struct.Struct("<d").unpack_from
TAG = "$t"
# Classes registered on this side, by wire name "module:QualName" (see codec.register).
_BY_NAME: Dict[str, type] = {}
MAX_COLLISIONS = 64  # keys of one set/dict that may share one hash value (hash flooding bound)
MAX_INT_DIGITS = 4300  # a decimal ``int`` payload (older peers); ours are two's-complement bytes
MAX_FLAG_BITS = 4096  # an enum.Flag value sent as an int


class DecodeError(ValueError):
    """Bytes are not a well-formed message (truncated, forged length, unknown type)."""


def _decode_registered(payload: Any, fields: Dict[str, Any]) -> Any:
    cls = _BY_NAME.get(fields.get("c", ""))
    if cls is None or not isinstance(payload, dict):
        return payload  # not registered here: the receiver gets the fields
    return cls(**payload)


class Decoder:
    """Decode one message; ``big`` maps out-of-band buffers back (see ``exttypes.Shm``)."""

    __slots__ = ("big", "stdlib_imports")

    def __init__(self, big: Optional[exttypes.OutOfBand] = None, stdlib_imports: bool = False) -> None:
        self.big = big
        # Only the worker sets this, for its trusted client's calls: an enum or exception of a
        # standard-library module the pod has not imported yet (http.HTTPStatus) still arrives.
        self.stdlib_imports = stdlib_imports

    def document(self, data: bytes) -> Dict[str, Any]:
        """Decode a whole top-level document, or raise DecodeError."""
        try:
            if len(data) < 5 or _unpack_i32(data, 0)[0] != len(data):
                raise DecodeError("document length does not match its frame")
            if data[4:8] == b"\x10id\x00" and data[-1] == 0:
                known = _hot_shape(data)
                if known is not None:
                    return known
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
            if self.stdlib_imports and (tag == "enum" or tag == "exc"):
                _import_stdlib(fields.get("c"))
            return decode(payload, fields)
        if tag == "shm":
            if self.big is None:
                raise DecodeError("out-of-band buffer sent where none is expected")
            return self.big.get(payload, fields.get("k"))
        special = exttypes.decoder_for(tag)
        if special is None:
            raise DecodeError("unknown extension type %r" % (tag,))
        return special(payload, fields, self)


_CALL = b"\x02op\x00\x05\x00\x00\x00call\x00\x02name\x00"
_OK = b"\x08ok\x00\x01"
_SCALAR_VALUES: Dict[bytes, Callable[[bytes, int], Tuple[Any, int]]] = {
    b"\x10value\x00": lambda data, pos: (_unpack_i32(data, pos)[0], pos + 4),
    b"\x01value\x00": lambda data, pos: (_unpack_f64(data, pos)[0], pos + 8),
    b"\x0avalue\x00": lambda data, pos: (None, pos),
}


def _hot_shape(data: bytes) -> Optional[Dict[str, Any]]:
    """The two messages of every call, read by their fixed layout (what ``_doc`` would return, faster).

    A call ``{"id": int32, "op": "call", "name": str, "a": binary}`` and a result
    ``{"id": int32, "ok": true, "value": int32 | double | null[, "j": str]}``; None for anything
    else (the generic decoder then reads it, and raises if it must).
    """
    end = len(data) - 1
    call_id = _unpack_i32(data, 8)[0]
    if data.startswith(_CALL, 12):
        pos = 12 + len(_CALL)
        length = _unpack_i32(data, pos)[0]
        stop = pos + 3 + length
        if length < 1 or stop + 8 > end or data[stop] != 0 or data[stop + 1 : stop + 4] != b"\x05a\x00":
            return None
        name = data[pos + 4 : stop].decode("utf-8", "surrogatepass")
        size = _unpack_i32(data, stop + 4)[0]
        start = stop + 9
        if data[stop + 8] != 0 or size < 0 or start + size != end:
            return None
        return {"id": call_id, "op": "call", "name": name, "a": data[start:end]}
    if data.startswith(_OK, 12):
        read = _SCALAR_VALUES.get(data[17:24])
        if read is None:
            return None
        value, pos = read(data, 24)
        if pos == end:
            return {"id": call_id, "ok": True, "value": value}
        if value is not None or data[pos : pos + 3] != b"\x02j\x00" or pos + 8 > end:
            return None
        length = _unpack_i32(data, pos + 3)[0]
        stop = pos + 6 + length
        if length < 1 or stop != end - 1 or data[stop] != 0:
            return None
        return {"id": call_id, "ok": True, "value": None, "j": data[pos + 7 : stop].decode("utf-8", "surrogatepass")}
    return None


# The descriptors behind ``module.__dict__`` and ``cls.__dict__``, read directly: ``vars(obj)`` would ask
# the object (a lazily loaded module's ``__getattribute__`` executes the module; a proxy's runs its code).
_MODULE_DICT: Any = vars(types.ModuleType)["__dict__"]
_TYPE_DICT: Any = vars(type)["__dict__"]


def _own_dict(obj: Any) -> Any:
    """The namespace of a module or class, read without running any of its code; None for anything else."""
    kind = type(obj)  # type() and issubclass() of two real types ask nothing of the object
    if issubclass(kind, types.ModuleType):
        return _MODULE_DICT.__get__(obj)
    if issubclass(kind, type):
        return _TYPE_DICT.__get__(obj)
    return None


def _import_stdlib(spec: Any) -> None:
    """Import the standard-library module of a ``module:QualName`` class (worker side only)."""
    module_name = spec.split(":", 1)[0] if isinstance(spec, str) else ""
    if module_name and module_name not in sys.modules and exttypes.is_stdlib(module_name):
        try:
            importlib.import_module(module_name)
        except Exception:
            pass  # then _lookup says it is not importable


def _lookup(spec: Any, base: type) -> Optional[type]:
    """Resolve ``module:QualName`` from ``sys.modules`` only, through ``__dict__``s: no import, no hook."""
    if not isinstance(spec, str) or ":" not in spec:
        return None
    module_name, qualname = spec.split(":", 1)
    obj: Any = sys.modules.get(module_name)
    for part in qualname.split("."):
        namespace = _own_dict(obj)
        if type(namespace) not in (dict, types.MappingProxyType):
            return None
        obj = namespace.get(part)
    return obj if issubclass(type(obj), type) and issubclass(obj, base) else None


def _decode_enum(payload: Any, fields: Dict[str, Any]) -> Any:
    cls = _lookup(fields.get("c"), enum.Enum)
    if cls is None:
        raise DecodeError("enum %s is not importable on this side (its module is not imported)" % fields.get("c"))
    if type(payload) is str:
        members = _TYPE_DICT.__get__(cls).get("_member_map_")
        member = members.get(payload) if type(members) is dict else None
        if member is None:
            raise DecodeError("enum %s has no member %r" % (fields.get("c"), payload))
        return member
    # A combination of flags (re.I | re.M) crosses as its int value, built by enum's own code only.
    if type(payload) is int and payload.bit_length() <= MAX_FLAG_BITS and _plain_flag(cls):
        return cls(payload)
    raise DecodeError("bad value for enum %s" % fields.get("c"))


def _plain_flag(cls: type) -> bool:
    """A Flag class whose call with an int runs enum's code only: enum's own metaclass (a custom one could
    run code on call), no ``_missing_``, ``__init__`` or member ``__new__`` of its own (``cls(value)``
    calls them for a value that is not a member), and no bases but enum's and builtins."""
    if not issubclass(cls, enum.Flag) or type(cls) is not type(enum.Flag):
        return False
    own = _TYPE_DICT.__get__(cls)
    if "_missing_" in own or "__init__" in own or isinstance(own.get("_new_member_"), types.FunctionType):
        return False
    return all(klass.__module__ in ("enum", "builtins") for klass in cls.__mro__[1:])


# The real builtin classes (by identity: a class can claim ``__module__ = "builtins"``).
_BUILTIN_TYPES = frozenset(obj for obj in vars(builtins).values() if isinstance(obj, type))
# Own attributes of a class that say nothing about behaviour (what ``class X(ValueError): pass`` has).
_INERT_DUNDERS = frozenset(
    (
        "__module__", "__doc__", "__dict__", "__weakref__", "__slots__", "__annotations__",
        "__qualname__", "__firstlineno__", "__static_attributes__", "__orig_bases__", "__parameters__",
    )
)  # fmt: skip
_HEAPTYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class made by a class statement (or type())
# What a class attribute may be: data, or a method (it runs only when called by name).
_INERT_VALUES = frozenset(
    (
        str, int, float, bool, bytes, tuple, list, dict, frozenset, type(None),
        types.FunctionType, staticmethod, types.MemberDescriptorType, types.GetSetDescriptorType,
    )
)  # fmt: skip


def _plain_exception(cls: type) -> bool:
    """True when building, printing and dropping an instance of *cls* runs builtin code only.

    Every class of the MRO is a real builtin or a plain Python class (metaclass ``type``) whose own
    namespace holds no dunder beyond the inert ones (no ``__init__``, ``__new__``, ``__str__``,
    ``__repr__``, ``__del__``, ``__getattr__``, ...: mixins after the builtin base count too) and no
    descriptor that computes an attribute (a property reads state the constructor never set, e.g.
    ``CalledProcessError.returncode``). Such a class's instance is exactly what its builtin base's
    constructor makes of the arguments, so decoding rebuilds every attribute it has.
    """
    if type(cls) is not type:
        return False
    for klass in cls.__mro__:
        if klass in _BUILTIN_TYPES:
            continue
        if type(klass) is not type or not klass.__flags__ & _HEAPTYPE:
            return False  # a metaclass (code on call) or an extension's static type (its C code)
        for name, value in _TYPE_DICT.__get__(klass).items():
            if type(value) not in _INERT_VALUES:  # exact types: isinstance() could ask a __class__ property
                return False
            if type(name) is not str or (name[:2] == "__" == name[-2:] and name not in _INERT_DUNDERS):
                return False
    return True


def _decode_exception(payload: Any, fields: Dict[str, Any]) -> BaseException:
    cls = _lookup(fields.get("c"), BaseException)
    attrs = fields.get("d", {})
    if cls is not None and type(payload) is list and type(attrs) is dict and not fields.get("x"):
        if _plain_exception(cls):
            try:
                exc: BaseException = cls(*payload)  # only builtin __new__/__init__ run (checked above)
                for name, value in attrs.items():  # attributes its constructor does not set from args
                    if name[:2] == "__" and name != "__notes__":
                        raise DecodeError("attribute %r" % (name,))
                    setattr(exc, name, value)  # no __setattr__ or property of its own: a plain store
                return exc
            except Exception:
                pass
    name = str(fields.get("c", "?")).replace(":", ".")
    fallback = Exception("%s: %s" % (name, fields.get("m", "")))
    fallback.remote_args = tuple(payload) if type(payload) is list else ()  # type: ignore[attr-defined]
    return fallback


def _check_keys(keys: List[Any]) -> None:
    """Refuse more than MAX_COLLISIONS keys with one hash: inserting them would be quadratic."""
    if len(keys) > MAX_COLLISIONS:
        counts = collections.Counter(map(hash, keys))
        if max(counts.values()) > MAX_COLLISIONS:
            raise DecodeError("more than %d keys share one hash value (hash flooding)" % MAX_COLLISIONS)


def _items(payload: Any) -> List[Any]:
    if type(payload) is not list:
        raise DecodeError("extension payload is not an array")
    return payload


def _decode_set(payload: Any, fields: Dict[str, Any]) -> Any:
    items = _items(payload)
    _check_keys(items)
    return set(items) if fields[TAG] == "set" else frozenset(items)


def _decode_int(payload: Any, fields: Dict[str, Any]) -> int:
    if isinstance(payload, bytes):  # two's complement, little-endian: linear in size, no digit limit
        return int.from_bytes(payload, "little", signed=True)
    if type(payload) is str and len(payload) <= MAX_INT_DIGITS:
        return int(payload)
    raise DecodeError("bad int payload")


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


def _decode_time(payload: Any, fields: Dict[str, Any]) -> datetime.time:
    value = datetime.time.fromisoformat(payload)
    return value.replace(fold=1) if fields.get("fold") else value


def _decode_dict(payload: Any, fields: Dict[str, Any]) -> Dict[Any, Any]:
    pairs = _items(payload)
    if not all(type(pair) is list and len(pair) == 2 for pair in pairs):
        raise DecodeError("dict payload is not an array of [key, value] pairs")
    _check_keys([pair[0] for pair in pairs])
    return dict(pairs)


def _decode_bytearray(payload: Any, fields: Dict[str, Any]) -> bytearray:
    if not isinstance(payload, (bytes, bytearray)):  # never bytearray(n) from a declared n
        raise DecodeError("bytearray payload is not binary")
    return payload if isinstance(payload, bytearray) else bytearray(payload)


_DECODERS: Dict[str, Callable[[Any, Dict[str, Any]], Any]] = {
    "tuple": lambda v, f: tuple(_items(v)),
    "set": _decode_set,
    "frozenset": _decode_set,
    "dict": _decode_dict,
    "int": _decode_int,
    "complex": lambda v, f: complex(v[0], v[1]),
    "decimal": lambda v, f: decimal.Decimal(v),
    "datetime": _decode_datetime,
    "date": lambda v, f: datetime.date.fromisoformat(v),
    "time": _decode_time,
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
