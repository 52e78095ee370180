"""The wire codec alone: exact round trips (hypothesis), clear errors, and a decoder that only ever says DecodeError."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import math
import pathlib
import re
import struct
import sys
import uuid
from typing import Any, ClassVar, NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from pypods._worker import codec, decoding
from pypods._worker.codec import DecodeError, EncodeError

timezones = st.one_of(
    st.none(),
    st.builds(
        lambda minutes: datetime.timezone(datetime.timedelta(minutes=minutes)),
        st.integers(min_value=-23 * 60, max_value=23 * 60),
    ),
)
# Text of every code point: surrogates (which st.text() leaves out) and every C0/C1 control, and a high
# and a low surrogate side by side as two code points (a JSON decoder joins their escapes into one).
CONTROLS = "".join(chr(code) for code in [*range(0x20), *range(0x7F, 0xA0)])
surrogate_pairs = st.tuples(
    st.characters(min_codepoint=0xD800, max_codepoint=0xDBFF), st.characters(min_codepoint=0xDC00, max_codepoint=0xDFFF)
).map("".join)
texts = st.lists(
    st.one_of(st.characters(codec=None, exclude_categories=()), st.sampled_from(CONTROLS), surrogate_pairs), max_size=8
).map("".join)
hashables = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    texts,
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
        st.dictionaries(texts, inner, max_size=5),
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
@given(st.lists(values, max_size=3), st.dictionaries(texts, values, max_size=3), st.integers(0, 2**40))
def test_fast_request_and_reply_encode_like_the_generic_path(
    args: list[Any], kwargs: dict[str, Any], call_id: int
) -> None:
    generic = codec.encode({"id": call_id, "op": "call", "name": "f", "args": args, "kwargs": kwargs})
    assert codec.Encoder().request(call_id, "f", tuple(args), kwargs) == generic
    assert codec.Encoder().reply(call_id, args) == codec.encode({"id": call_id, "ok": True, "value": args})


# -- exactness whatever the size or combination (issue #13) -------------------------------------


@pytest.mark.parametrize(
    "value", [10**5000, -(10**5000), 2**64, -(2**63) - 1, 2**100000 - 1], ids=lambda v: f"{v.bit_length()}-bits"
)
def test_ints_of_any_size_round_trip_without_str(value: int) -> None:
    assert roundtrip(value) == value


def test_huge_int_is_linear_bytes_not_decimal_text() -> None:
    frame = bytes(codec.encode({"v": 10**20000}))
    assert b"1" + b"0" * 50 not in frame
    assert len(frame) < 20000  # two's complement: ~8.3 KiB, not 20,001 digits


class Perm(enum.IntFlag):
    R = 4
    W = 2
    X = 1


class Shade(enum.Flag):
    LIGHT = 1
    DARK = 2


@pytest.mark.parametrize(
    "value", [re.IGNORECASE | re.MULTILINE, re.I, Perm.R | Perm.W, Perm(0), Perm(8), Shade.LIGHT | Shade.DARK]
)
def test_combined_flags_round_trip(value: enum.Flag) -> None:
    back = roundtrip(value)
    assert type(back) is type(value)
    assert back == value


def test_time_keeps_its_fold() -> None:
    assert roundtrip(datetime.time(1, 30, fold=1)).fold == 1
    assert roundtrip(datetime.time(1, 30)).fold == 0
    assert roundtrip(datetime.datetime(2024, 11, 3, 1, 30, fold=1)).fold == 1


# -- the encoder raises only EncodeError (issue #11) ------------------------------------------


class BadStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str for you")


class BadFields:
    __dataclass_fields__ = None  # looks like a dataclass; dataclasses.fields() raises AttributeError


def nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("value", [nested(600), nested(5000), BadFields(), {1: nested(3000)}])
def test_any_encoding_failure_is_an_encode_error(value: Any) -> None:
    for encode in (
        lambda: codec.encode({"v": value}),
        lambda: codec.Encoder().reply(1, value),
        lambda: codec.Encoder().request(1, "f", (value,), {}),
    ):
        with pytest.raises(EncodeError):
            encode()


def test_exception_whose_str_raises_cannot_be_sent() -> None:
    with pytest.raises(EncodeError, match="BadStr: its __str__ raised RuntimeError"):
        codec.encode({"v": BadStr("x")})


# -- decoding never imports and never runs a class's own code (issue #11) ---------------------


def forge(tag: str, payload: Any, **extra: Any) -> bytes:
    out = bytearray(b"\x00\x00\x00\x00")
    codec.Encoder().ext(out, b"v\x00", tag, payload, **extra)
    out += b"\x00"
    struct.pack_into("<i", out, 0, len(out))
    return bytes(out)


@pytest.mark.parametrize(
    ("tag", "payload", "spec"),
    [
        ("exc", ["x"], "this:Exception"),
        ("exc", [], "unittest.__main__:SystemExit"),
        ("enum", "A", "venv.__main__:Enum"),
        ("enum", "A", "antigravity:X"),
        ("obj", {}, "this:X"),
    ],
)
def test_decoding_never_imports_a_module(tag: str, payload: Any, spec: str) -> None:
    module = spec.split(":")[0]
    assert module not in sys.modules
    try:
        value = codec.decode(forge(tag, payload, c=spec))["v"]
    except DecodeError:
        pass
    else:
        assert type(value) in (Exception, dict)
    assert module not in sys.modules


class Trap(Exception):
    ran: ClassVar[list[str]] = []

    def __init__(self, *args: Any) -> None:
        Trap.ran.append("init")
        super().__init__(*args)

    def __new__(cls, *args: Any) -> Trap:
        Trap.ran.append("new")
        return super().__new__(cls, *args)


def test_exception_class_code_does_not_run_on_decode() -> None:
    frame = forge("exc", ["boom"], c=f"{__name__}:Trap", m="boom")
    Trap.ran.clear()
    value = codec.decode(frame)["v"]
    assert Trap.ran == []
    # A class with a constructor of its own may need it (#20): the documented fallback, with the args.
    assert type(value) is Exception
    assert str(value) == "unit.test_codec.Trap: boom"
    assert value.remote_args == ("boom",)


def test_lookup_uses_dicts_not_module_getattr(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    called = []
    lazy = types.ModuleType("zz_lazy_module")
    lazy.__getattr__ = lambda name: called.append(name) or ValueError  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "zz_lazy_module", lazy)
    value = codec.decode(forge("exc", ["x"], c="zz_lazy_module:Anything", m="x"))["v"]
    assert called == []
    assert type(value) is Exception


@pytest.mark.parametrize(
    ("tag", "payload"),
    [
        ("bytearray", 2**31 - 1),
        ("bytearray", 10**12),
        ("tuple", 10**9),
        ("set", "abc"),
        ("dict", [[1]]),
        ("int", "9" * 5000),
    ],
)
def test_payloads_of_the_wrong_shape_are_refused_without_allocating(tag: str, payload: Any) -> None:
    with pytest.raises(DecodeError):
        codec.decode(forge(tag, payload))


def colliding_ints(n: int) -> list[int]:
    return [i * (2**61 - 1) for i in range(1, n + 1)]  # every one hashes to 0


@pytest.mark.parametrize("tag", ["set", "frozenset", "dict"])
def test_hash_flooding_is_refused_quickly(tag: str) -> None:
    import time

    keys = colliding_ints(20000)
    payload: Any = [[k, 0] for k in keys] if tag == "dict" else keys
    frame = forge(tag, payload)
    began = time.perf_counter()
    with pytest.raises(DecodeError, match="hash"):
        codec.decode(frame)
    assert time.perf_counter() - began < 2.0  # inserting them would take minutes


def test_a_few_equal_hashes_are_fine() -> None:
    value = set(colliding_ints(decoding.MAX_COLLISIONS))
    assert roundtrip(value) == value
    assert roundtrip({-1: "a", -2: "b"}) == {-1: "a", -2: "b"}  # hash(-1) == hash(-2)


hot_messages = st.one_of(
    st.builds(
        lambda call_id, name, data: {"id": call_id, "op": "call", "name": name, "a": data},
        st.integers(-(2**31), 2**31 - 1),
        texts,
        st.binary(),
    ),
    st.builds(
        lambda call_id, value: {"id": call_id, "ok": True, "value": value},
        st.integers(-(2**31), 2**31 - 1),
        st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1), st.floats()),
    ),
    st.builds(
        lambda call_id, text: {"id": call_id, "ok": True, "value": None, "j": text},
        st.integers(-(2**31), 2**31 - 1),
        texts,
    ),
)


def decoded_or_none(decode: Any, frame: bytes) -> Any:
    try:
        return decode(frame)
    except DecodeError:
        return None


def generic_document(frame: bytes) -> dict[str, Any]:
    """``Decoder.document`` without its hot path."""
    if len(frame) < 5 or struct.unpack_from("<i", frame)[0] != len(frame):
        raise DecodeError("length")
    try:
        return codec.Decoder()._doc(frame, 0, False)[0]  # type: ignore[no-any-return]
    except Exception as exc:
        raise DecodeError(str(exc)) from exc


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(hot_messages, st.data())
def test_the_hot_path_reads_exactly_what_the_generic_decoder_reads(
    message: dict[str, Any], data: st.DataObject
) -> None:
    frame = bytearray(codec.encode(message))
    assert decoding._hot_shape(bytes(frame)) is not None  # these shapes take the hot path
    for index, byte in data.draw(st.lists(st.tuples(st.integers(0, len(frame) - 1), st.integers(0, 255)), max_size=2)):
        frame[index] = byte
    if data.draw(st.booleans()):
        struct.pack_into("<i", frame, 0, len(frame))
    hot = decoded_or_none(codec.Decoder().document, bytes(frame))
    generic = decoded_or_none(generic_document, bytes(frame))
    assert (hot is None) == (generic is None)
    if hot is not None:
        assert same(hot, generic)
