"""Checks on an Arrow IPC stream from the other side, before and after pyarrow reads it (stdlib only).

A pandas value crosses as an Arrow IPC stream (``exttypes``). Our encoder never compresses, so a
compressed record batch can only be forged: it is refused before pyarrow sees it, as a
decompression bomb would otherwise allocate whatever its header declares. After reading, the table
is validated in full (offsets inside their buffers), its column types must be flat (numbers,
strings, bytes, temporal, decimal, null, dictionaries of those), and its element count is bounded
by the bytes received, so a 0-byte ``null`` column cannot declare a billion rows that
``to_pandas`` would materialize.
"""

from __future__ import annotations

import struct
from typing import Any

MIN_PYARROW = (14, 0, 1)  # fixes CVE-2023-47248 (arbitrary code via PyExtensionType unpickling)
ELEMENTS_PER_BYTE = 8  # a bool column packs 8 values per byte; every other flat type uses more
_U16 = struct.Struct("<H").unpack_from
_I32 = struct.Struct("<i").unpack_from
_U32 = struct.Struct("<I").unpack_from
_I64 = struct.Struct("<q").unpack_from
_SCHEMA, _DICTIONARY_BATCH, _RECORD_BATCH = 1, 2, 3


class ArrowRefused(ValueError):
    """The stream is not one our encoder would produce (compressed, nested, or too many elements)."""


def _field(buf: bytes | bytearray, table: int, index: int) -> int:
    """Absolute position of field *index* of the flatbuffer table at *table*, or 0 if absent."""
    vtable = table - _I32(buf, table)[0]
    size = _U16(buf, vtable)[0]
    offset = 4 + 2 * index
    if offset + 2 > size:
        return 0
    relative: int = _U16(buf, vtable + offset)[0]
    return table + relative if relative else 0


def _child(buf: bytes | bytearray, position: int) -> int:
    child: int = position + _U32(buf, position)[0]
    return child


def _check_message(meta: bytes | bytearray) -> int:
    """Refuse compressed batches and unknown message kinds; return the message's body length."""
    root = _child(meta, 0)
    kind_at = _field(meta, root, 1)
    kind = meta[kind_at] if kind_at else 0
    header_at = _field(meta, root, 2)
    body_at = _field(meta, root, 3)
    body = _I64(meta, body_at)[0] if body_at else 0
    if kind == _SCHEMA:
        return body
    if kind not in (_RECORD_BATCH, _DICTIONARY_BATCH) or not header_at:
        raise ArrowRefused("unexpected Arrow message type %d" % kind)
    batch = _child(meta, header_at)
    if kind == _DICTIONARY_BATCH:
        data_at = _field(meta, batch, 1)
        if not data_at:
            raise ArrowRefused("dictionary batch without data")
        batch = _child(meta, data_at)
    if _field(meta, batch, 3):
        raise ArrowRefused("compressed Arrow buffers are refused (pypods never compresses)")
    return body


def check_stream(data: bytes | bytearray) -> None:
    """Walk the IPC stream's messages (continuation, length, flatbuffer, body) before pyarrow reads it."""
    pos = 0
    try:
        while pos + 4 <= len(data):
            length = _I32(data, pos)[0]
            pos += 4
            if length == -1:  # continuation marker, then the length
                length = _I32(data, pos)[0]
                pos += 4
            if length == 0:
                return  # end of stream
            if length < 0 or pos + length > len(data):
                raise ArrowRefused("Arrow message overruns the stream")
            body = _check_message(data[pos : pos + length])
            pos += length
            if body < 0 or pos + body > len(data):
                raise ArrowRefused("Arrow message body overruns the stream")
            pos += body
    except (struct.error, IndexError) as exc:
        raise ArrowRefused("malformed Arrow stream: %s" % exc) from exc


def pyarrow_ok(version: str) -> bool:
    """True when this pyarrow has the unpickling fix (versions like ``14.0.1``, ``15.0.0.dev12``)."""
    parts = []
    for part in version.split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts) >= MIN_PYARROW


def check_table(pa: Any, table: Any, received: int) -> None:
    """Validate a table read from *received* bytes: full validation, flat types, bounded elements."""
    table.validate(full=True)
    elements = table.num_rows * max(table.num_columns, 1)
    for column in table.columns:
        kind = column.type
        if pa.types.is_dictionary(kind):
            elements += sum(len(chunk.dictionary) for chunk in column.chunks)
            kind = kind.value_type
        if not _flat(pa, kind):
            raise ArrowRefused("Arrow column type %s is not one pypods sends" % kind)
    if elements > ELEMENTS_PER_BYTE * received + 4096:
        raise ArrowRefused("Arrow table declares %d elements in %d bytes" % (elements, received))


def _flat(pa: Any, kind: Any) -> bool:
    types = pa.types
    return bool(
        types.is_integer(kind)
        or types.is_floating(kind)
        or types.is_boolean(kind)
        or types.is_null(kind)
        or types.is_string(kind)
        or types.is_large_string(kind)
        or types.is_binary(kind)
        or types.is_large_binary(kind)
        or types.is_fixed_size_binary(kind)
        or types.is_temporal(kind)
        or types.is_decimal(kind)
    )
