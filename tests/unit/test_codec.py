"""The wire codec alone: exact round trips (hypothesis), clear errors, and a decoder that only ever says DecodeError."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import math
import pathlib
import struct
import uuid
from typing import Any, NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from pypods._worker import codec
from pypods._worker.codec import DecodeError, EncodeError

timezones = st.one_of(
    st.none(),
    st.builds(
        lambda minutes: datetime.timezone(datetime.timedelta(minutes=minutes)),
        st.integers(min_value=-23 * 60, max_value=23 * 60),
    ),
)
hashables = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(),
    st.binary(max_size=64),
    st.decimals(allow_nan=False),
    st.datetimes(timezones=timezones),
    st.dates(),
    st.times(timezones=timezones),
    st.timedeltas(),
    st.uuids(),
    st.complex_numbers(allow_nan=False),
    st.builds(pathlib.PurePosixPath, st.text(alphabet="abc/", max_size=10)),
    st.builds(range, st.integers(-5, 5), st.integers(-5, 5), st.integers(1, 3)),
)
leaves = st.one_of(hashables, st.floats(), st.binary().map(bytearray))
values = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.lists(inner, max_size=5).map(tuple),
        st.frozensets(hashables, max_size=5),
        st.sets(hashables, max_size=5),
        st.dictionaries(st.text(), inner, max_size=5),
        st.dictionaries(hashables, inner, max_size=5),
    ),
    max_leaves=25,
)


def same(a: Any, b: Any) -> bool:
    """Equal in value *and* type, all the way down; NaN equals NaN, -0.0 differs from 0.0."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (datetime.datetime, datetime.time)):
        return (a == b and a.utcoffset() == b.utcoffset() and a.tzinfo is None is b.tzinfo is None) or (
            a == b and a.utcoffset() == b.utcoffset()
        )
    return bool(a == b)


def roundtrip(value: Any) -> Any:
    return codec.decode(bytes(codec.encode({"v": value})))["v"]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(values)
def test_every_supported_value_round_trips_with_its_type(value: Any) -> None:
    assert same(roundtrip(value), value)


@pytest.mark.parametrize(
    "value",
    [
        2**200,
        -(2**100),
        2**63,
        -(2**63),
        float("inf"),
        -0.0,
        1 + 2j,
        decimal.Decimal("1.10"),
        datetime.datetime(2024, 1, 2, 3, 4, 5, 123456),
        datetime.datetime(2024, 1, 2, 3, 4, 5, 7, tzinfo=datetime.timezone(datetime.timedelta(hours=-5))),
        datetime.time(1, 2, 3, 4),
        datetime.timedelta(days=-3, microseconds=5),
        uuid.uuid4(),
        pathlib.PureWindowsPath("C:/x/y"),
        pathlib.Path("/tmp/x"),
        range(1, 10, 3),
        {(1, 2): "tuple key", 3: "int key", None: "none"},
        {"$t": "not an extension"},
        frozenset({1, 2}),
        bytearray(b"abc"),
        ValueError("bad", 3),
    ],
)
def test_specific_values(value: Any) -> None:
    back = roundtrip(value)
    if isinstance(value, BaseException):
        assert type(back) is type(value)
        assert back.args == value.args
    else:
        assert same(back, value)


def test_memoryview_arrives_as_bytes() -> None:
    assert roundtrip(memoryview(b"hello")) == b"hello"


def test_naive_and_aware_datetimes_keep_microseconds_and_offset() -> None:
    aware = datetime.datetime(
        2020, 5, 6, 7, 8, 9, 999999, tzinfo=datetime.timezone(datetime.timedelta(hours=5, minutes=30))
    )
    back = roundtrip(aware)
    assert back == aware
    assert back.utcoffset() == aware.utcoffset()
    assert back.microsecond == 999999
    assert roundtrip(datetime.datetime(2020, 1, 1, 0, 0, 0, 1)).tzinfo is None


class Color(enum.Enum):
    RED = 1


def test_stdlib_and_imported_enums_round_trip() -> None:
    import http
    import signal

    assert roundtrip(http.HTTPStatus.NOT_FOUND) is http.HTTPStatus.NOT_FOUND
    assert roundtrip(signal.SIGTERM) is signal.SIGTERM
    assert roundtrip(Color.RED) is Color.RED  # this module is imported on the receiving side


@dataclasses.dataclass
class Point:
    x: int
    y: list[int]


class Pair(NamedTuple):
    a: int
    b: str


def test_dataclasses_and_namedtuples_travel_as_their_fields() -> None:
    assert roundtrip(Point(1, [2])) == {"x": 1, "y": [2]}
    assert roundtrip(Pair(1, "b")) == (1, "b")


class Custom:
    pass


def test_unsupported_value_names_type_and_where_it_sat() -> None:
    with pytest.raises(EncodeError) as info:
        codec.encode({"args": [1, {"items": [0, 1, 2, Custom()]}]})
    assert str(info.value).startswith("args[1]['items'][3]: cannot send Custom")
    assert isinstance(info.value, TypeError)


@pytest.mark.parametrize("value", [lambda: 1, (i for i in range(3)), open, object()])
def test_functions_generators_and_objects_are_refused(value: Any) -> None:
    with pytest.raises(EncodeError):
        codec.encode({"v": value})


def test_open_file_is_refused(tmp_path: pathlib.Path) -> None:
    with open(tmp_path / "f", "w") as handle, pytest.raises(EncodeError, match="TextIOWrapper"):
        codec.encode({"v": handle})


def test_is_plain_bson_for_plain_values() -> None:
    # {"a": 1} in BSON, byte for byte, so other languages' BSON libraries read our messages.
    assert bytes(codec.encode({"a": 1})) == b"\x0c\x00\x00\x00\x10a\x00\x01\x00\x00\x00\x00"


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_random_bytes_only_ever_raise_decode_error(data: bytes) -> None:
    try:
        codec.decode(data)
    except DecodeError:
        pass


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(values, st.data())
def test_truncated_and_corrupted_frames_only_raise_decode_error(value: Any, data: st.DataObject) -> None:
    frame = bytearray(codec.encode({"id": 1, "v": value}))
    cut = data.draw(st.integers(min_value=0, max_value=len(frame)))
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(frame) - 1), st.integers(0, 255)), max_size=4))
    for index, byte in flips:
        frame[index] = byte
    for candidate in (bytes(frame[:cut]), bytes(frame)):
        try:
            codec.decode(candidate)
        except DecodeError:
            pass


def test_forged_huge_lengths_do_not_allocate() -> None:
    forged = struct.pack("<i", 2**31 - 1) + b"\x05v\x00" + struct.pack("<i", 2**31 - 100) + b"\x00"
    with pytest.raises(DecodeError):
        codec.decode(forged)
    inner = b"\x02v\x00" + struct.pack("<i", 2**30) + b"abc\x00"
    doc = struct.pack("<i", len(inner) + 5) + inner + b"\x00"
    with pytest.raises(DecodeError):
        codec.decode(doc)


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    value: Any = []
    for _ in range(5000):
        value = [value]
    with pytest.raises((EncodeError, RecursionError)):
        codec.encode({"v": value})


def test_enum_of_a_module_not_imported_is_refused_without_importing() -> None:
    out = bytearray(b"\x00\x00\x00\x00")
    codec.Encoder().ext(out, b"v\x00", "enum", "RED", c="zz_not_imported_module:Color")
    out += b"\x00"
    forged = struct.pack("<i", len(out)) + bytes(out[4:])
    with pytest.raises(DecodeError, match="not importable"):
        codec.decode(forged)


@settings(max_examples=100)
@given(st.lists(values, max_size=3), st.dictionaries(st.text(), values, max_size=3), st.integers(0, 2**40))
def test_fast_request_and_reply_encode_like_the_generic_path(
    args: list[Any], kwargs: dict[str, Any], call_id: int
) -> None:
    generic = codec.encode({"id": call_id, "op": "call", "name": "f", "args": args, "kwargs": kwargs})
    assert codec.Encoder().request(call_id, "f", tuple(args), kwargs) == generic
    assert codec.Encoder().reply(call_id, args) == codec.encode({"id": call_id, "ok": True, "value": args})
