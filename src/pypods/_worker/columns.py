"""``fast2`` columns: a list of same-keyed records, a str-keyed dict or a list sent as typed columns (stdlib only).

The worker turns a reply value into one binary carrier (field ``c`` of the reply) when every column
is exact in its type; the client rebuilds the value from it, checking every size it reads against
the bytes it received before allocating anything. ``docs/encoding.md`` ("fast2") gives the layout
and the safety argument; this module is its code, both sides, Python 3.8+.
"""

from __future__ import annotations

import array
import struct
import sys
from itertools import accumulate, chain, islice
from typing import Any, Callable, Dict, List, Optional, Tuple

from .decoding import DecodeError

RECORDS_MIN = 8  # records in a list before they go as columns (fewer: JSON is as quick)
VECTOR_MIN = 16  # items of a list or entries of a dict before they go as one column
MAX_KEYS = 64  # keys a record may have (one rebuilder per key count is compiled and kept)
RECORD_BYTES = 8  # a record list's carrier holds at least this many bytes per record
_BIG_ENDIAN = sys.byteorder == "big"
_NUL = "\x00"
_STR = {str}
# Carrier layout (little-endian), docs/encoding.md "fast2":
#   kind:u8 n:u32 [m:u32 keys:column] column*     kind R: records (m keys, then m value columns)
#                                                 kind D: dict (n keys as one 's' column, one value column)
#                                                 kind V: list (one column)
#   column := tag:u8 size:u32 payload[size]
_HEAD = struct.Struct("<BI")
_COUNT = struct.Struct("<I")
_COLUMN = struct.Struct("<BI")
_R, _D, _V = 0x52, 0x44, 0x56  # "R", "D", "V"
_INT, _FLOAT, _BOOL, _TEXT, _NONE, _TEXTS, _JSON = b"idbsnlj"


def _text(items: Any, count: int) -> Optional[bytes]:
    """Each str followed by NUL, as UTF-8 with surrogates passed; None when a str holds NUL itself."""
    joined = _NUL.join(items) + _NUL if count else ""
    if joined.count(_NUL) != count:
        return None
    return joined.encode("utf-8", "surrogatepass")


def _column(values: Any, json_column: Optional[Callable[[Any], Optional[bytes]]]) -> Optional[Tuple[int, Any]]:
    """``(tag, payload)`` for one column, exact in its type; JSON (when *json_column* is given) or None."""
    kinds = set(map(type, values))
    if len(kinds) == 1:
        kind = kinds.pop()
        if kind is float:
            return _FLOAT, _packed("d", values)
        if kind is int:
            try:
                return _INT, _packed("q", values)  # OverflowError past int64: JSON, or the old way
            except OverflowError:
                pass
        elif kind is str:
            text = _text(values, len(values))
            if text is not None:
                return _TEXT, text
        elif kind is bool:
            return _BOOL, bytes(values)
        elif kind is type(None):
            return _NONE, bytes(len(values))
        elif kind is list:
            flat = list(chain.from_iterable(values))
            if set(map(type, flat)) <= _STR:
                text = _text(flat, len(flat))
                if text is not None:
                    return _TEXTS, array.array("I", map(len, values)).tobytes() + text
    if json_column is None:
        return None
    payload = json_column(values)
    return None if payload is None else (_JSON, payload)


def _packed(code: str, values: Any) -> bytes:
    packed = array.array(code, values)
    if _BIG_ENDIAN:
        packed.byteswap()
    return packed.tobytes()


def _put(parts: List[bytes], column: Tuple[int, Any]) -> None:
    tag, payload = column
    parts.append(_COLUMN.pack(tag, len(payload)))
    parts.append(payload)


def encode(value: Any, json_column: Callable[[Any], Optional[bytes]]) -> Optional[bytes]:
    """The carrier for *value*, or None when it is not a value columns carry exactly.

    *json_column* gives the JSON text of a list of values that has no typed column (fast1's
    exactness rules), or None when JSON cannot carry it exactly either.
    """
    kind = type(value)
    count = len(value) if kind is list or kind is dict else 0
    if kind is list and count >= RECORDS_MIN and set(map(type, value)) == {dict}:
        return _records(value, count, json_column)
    if count < VECTOR_MIN:
        return None
    if kind is list:
        column = _column(value, None)
        if column is None:
            return None
        parts = [_HEAD.pack(_V, count)]
    else:
        keys = list(value)
        if set(map(type, keys)) != _STR:
            return None
        text = _text(keys, count)
        column = _column(list(value.values()), None)
        if text is None or column is None:
            return None
        parts = [_HEAD.pack(_D, count)]
        _put(parts, (_TEXT, text))
    _put(parts, column)
    return b"".join(parts)


def _records(value: List[Dict[Any, Any]], count: int, json_column: Callable[[Any], Optional[bytes]]) -> Optional[bytes]:
    shapes = set(map(tuple, value))  # every record has the same keys in the same order
    if len(shapes) != 1:
        return None
    keys = shapes.pop()
    width = len(keys)
    if not 0 < width <= MAX_KEYS or set(map(type, keys)) != _STR:
        return None
    text = _text(keys, width)
    if text is None:
        return None
    parts = [_HEAD.pack(_R, count), _COUNT.pack(width)]
    _put(parts, (_TEXT, text))
    for values in zip(*map(dict.values, value)):
        column = _column(values, json_column)
        if column is None:
            return None
        _put(parts, column)
    data = b"".join(parts)
    return data if len(data) >= RECORD_BYTES * count else None


# -- decoding (the client): every size is checked against the bytes received before it is used --


class _Reader:
    def __init__(self, data: Any) -> None:
        self.view = memoryview(data).cast("B")
        self.pos = 0

    def take(self, layout: struct.Struct) -> Tuple[int, ...]:
        if layout.size > len(self.view) - self.pos:
            raise DecodeError("fast2 columns end inside a header")
        fields = layout.unpack_from(self.view, self.pos)
        self.pos += layout.size
        return fields

    def keys(self, count: int) -> List[str]:
        """A column of *count* keys: always a text column ('s'), so every key is an exact ``str``."""
        if self.pos >= len(self.view) or self.view[self.pos] != _TEXT:
            raise DecodeError("fast2 keys are not a text column")
        return self.column(count, _no_json)

    def column(self, count: int, json_decode: Callable[[Any], Any]) -> List[Any]:
        """One column of *count* values."""
        tag, size = self.take(_COLUMN)
        if size > len(self.view) - self.pos:
            raise DecodeError("fast2 column of %d bytes where %d remain" % (size, len(self.view) - self.pos))
        payload = self.view[self.pos : self.pos + size]
        self.pos += size
        if tag == _FLOAT or tag == _INT:
            if size != 8 * count:
                raise DecodeError("fast2 column of %d numbers holds %d bytes" % (count, size))
            numbers = array.array("d" if tag == _FLOAT else "q")
            numbers.frombytes(payload)
            if _BIG_ENDIAN:
                numbers.byteswap()
            return numbers.tolist()
        if tag == _TEXT:
            return _strings(payload, count)
        if tag == _BOOL or tag == _NONE:
            if size != count:
                raise DecodeError("fast2 column of %d values holds %d bytes" % (count, size))
            if tag == _NONE:
                if payload.tobytes().count(0) != count:
                    raise DecodeError("fast2 None column holds other bytes than 0")
                return [None] * count
            flags = payload.tobytes()
            if flags.translate(None, b"\x00\x01"):
                raise DecodeError("fast2 bool column holds a byte other than 0 and 1")
            return list(map(bool, flags))
        if tag == _TEXTS:
            if size < 4 * count:
                raise DecodeError("fast2 list column shorter than its counts")
            counts = array.array("I")
            counts.frombytes(payload[: 4 * count])
            if _BIG_ENDIAN:
                counts.byteswap()
            total = sum(counts)
            if total > size:  # every string holds at least its NUL: no more strings than bytes
                raise DecodeError("fast2 list column counts more strings than it holds")
            strings = _strings(payload[4 * count :], total)
            width = counts[0] if count else 0
            if width and counts.count(width) == count:  # lists of one length (tags): zip is 3x quicker
                return list(map(list, zip(*[iter(strings)] * width)))
            bounds = list(accumulate(counts, initial=0))
            return list(map(strings.__getitem__, map(slice, bounds, islice(bounds, 1, None))))
        if tag == _JSON:
            values = json_decode(payload)
            if type(values) is not list or len(values) != count:
                raise DecodeError("fast2 JSON column is not an array of %d values" % count)
            return values
        raise DecodeError("fast2 column has unknown tag %r" % chr(tag))


def _no_json(payload: Any) -> Any:  # pragma: no cover - keys() admits text columns only
    raise DecodeError("fast2 keys as JSON")


def _strings(payload: memoryview, count: int) -> List[str]:
    """*count* NUL-terminated UTF-8 strings (surrogates passed), exactly filling *payload*."""
    if count == 0:
        if len(payload):
            raise DecodeError("fast2 text column holds bytes but no strings")
        return []
    try:
        text = str(payload, "utf-8", "surrogatepass")
    except UnicodeDecodeError as exc:
        raise DecodeError("fast2 text column is not UTF-8: %s" % exc) from exc
    strings = text.split(_NUL)
    if len(strings) != count + 1 or strings.pop():
        raise DecodeError("fast2 text column does not hold %d NUL-terminated strings" % count)
    return strings


_BUILDERS: Dict[int, Callable[[List[str], List[List[Any]]], List[Dict[str, Any]]]] = {}


def _builder(width: int) -> Callable[[List[str], List[List[Any]]], List[Dict[str, Any]]]:
    """The records of *width* keys rebuilt from columns by one dict display per record.

    Its source depends on *width* alone (an int from 1 to MAX_KEYS), never on the data: keys and
    values are the function's arguments. A dict display is about 3x quicker than ``dict(zip(...))``.
    """
    build = _BUILDERS.get(width)
    if build is None:
        if not 0 < width <= MAX_KEYS:  # pragma: no cover - the decoder checks first
            raise DecodeError("fast2 records with %d keys" % width)
        keys = "".join("k%d, " % i for i in range(width))
        values = "".join("v%d, " % i for i in range(width))
        display = ", ".join("k%d: v%d" % (i, i) for i in range(width))
        source = "def build(keys, columns):\n    %s= keys\n    return [{%s} for %s in zip(*columns)]\n" % (
            keys,
            display,
            values,
        )
        scope: Dict[str, Any] = {}
        exec(compile(source, "<pypods fast2 records>", "exec"), {"__builtins__": {"zip": zip}}, scope)
        build = _BUILDERS[width] = scope["build"]
    return build


def decode(data: Any, json_decode: Callable[[Any], Any]) -> Any:
    """The value of a carrier (bytes); raises DecodeError for anything our encoder does not write.

    *json_decode* reads a JSON column's UTF-8 bytes (a memoryview) and raises DecodeError.
    """
    reader = _Reader(data)
    kind, count = reader.take(_HEAD)
    if count > len(reader.view):  # every value costs at least one byte of the carrier
        raise DecodeError("fast2 columns declare %d values in %d bytes" % (count, len(reader.view)))
    values: Any
    if kind == _V:
        values = reader.column(count, json_decode)
    elif kind == _D:
        keys = reader.keys(count)
        result = dict(zip(keys, reader.column(count, json_decode)))
        if len(result) != count:
            raise DecodeError("fast2 dict repeats a key")
        values = result
    elif kind == _R:
        (width,) = reader.take(_COUNT)
        if not 0 < width <= MAX_KEYS or width * count > len(reader.view) or RECORD_BYTES * count > len(reader.view):
            raise DecodeError("fast2 records of %d keys, %d records in %d bytes" % (width, count, len(reader.view)))
        keys = reader.keys(width)
        if len(set(keys)) != width:
            raise DecodeError("fast2 record keys are not distinct")
        columns = [reader.column(count, json_decode) for _ in range(width)]
        values = _builder(width)(keys, columns)
    else:
        raise DecodeError("fast2 columns of unknown kind %r" % chr(kind))
    if reader.pos != len(reader.view):
        raise DecodeError("fast2 columns followed by %d stray bytes" % (len(reader.view) - reader.pos))
    return values
