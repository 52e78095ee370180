"""BSON with typed extensions: the value format both sides of a pod speak (stdlib only, Python 3.8+).

Plain BSON carries what it can say natively (None, bool, 32/64-bit int, float, str, bytes, str-keyed
documents, lists, UUIDs). Everything else travels as an *extension document* whose first key is
``"$t"`` (its tag) followed by ``"v"`` (its payload) and sometimes more fields; the tags are listed
in ``docs/architecture.md``. Decoding (``decoding.py``) never imports or runs user code. Encoding
raises only ``EncodeError`` whatever goes wrong (an unsupported type, nesting too deep for the
stack, a value whose ``__str__`` raises, memory), so callers need to catch one type.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any, Dict, Optional

from .decoding import (  # the codec, both ways
    TAG,
    DecodeError as DecodeError,
    Decoder as Decoder,
    decode as decode,
)
from .extencode import (  # the extension values, and the class registry
    _ENCODERS,
    REGISTERED as REGISTERED,
    EncodeError as EncodeError,
    _as_encode_error,
    _encoder_for_subclass,
    register as register,
    registry_version as registry_version,
)

if TYPE_CHECKING:
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

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_CALL_HEADS: Dict[str, bytes] = {}
_INDEX_KEYS = [str(i).encode() + b"\x00" for i in range(1024)]


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
            raise _as_encode_error(exc, doc.items()) from exc
        return out

    def request(self, call_id: int, name: str, args: Any, kwargs: Dict[str, Any]) -> bytearray:
        """``{"id", "op": "call", "name", "args", "kwargs"}``: the same bytes as ``document``, faster.

        The hot path of every call: the constant part (op and name) is encoded once per name.
        """
        try:
            return self._request(call_id, name, args, kwargs)
        except Exception as exc:
            raise _as_encode_error(exc, (("args", args), ("kwargs", kwargs))) from exc

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
            error = _as_encode_error(exc, (("", value),))
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


def encode(doc: Dict[str, Any], big: Optional[exttypes.OutOfBand] = None) -> bytearray:
    """Encode a top-level document (convenience for tests and one-off messages)."""
    return Encoder(big).document(doc)
