"""fast2 columns: decode to exactly what fast1 and BSON decode to, and read hostile carriers safely."""

from __future__ import annotations

import functools
import random
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from pypods._worker import codec, columns, fastcodec
from pypods._worker.decoding import DecodeError
from unit.test_codec import same, texts, values

RECORDS = [{"id": i, "name": f"item-{i}", "score": i * 0.5, "tags": ["a", "b"], "ok": i % 2 == 0} for i in range(200)]


def reply(value: Any, encoding: str, key: str = "value") -> dict[str, Any]:
    return codec.decode(bytes(fastcodec.encode_reply(None, 1, value, key, encoding)))


def via(value: Any, encoding: str, key: str = "value") -> Any:
    if encoding == "bson":
        return codec.decode(bytes(codec.Encoder().reply(1, value)))["value"]
    return fastcodec.reply_value(reply(value, encoding, key), key, encoding)


def identical(a: Any, b: Any) -> bool:
    """``same`` (type and value all the way down, NaN and -0.0 told apart) and the same key order."""
    if not same(a, b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(identical(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return all(identical(x, y) for x, y in zip(a, b))
    return True


@functools.cache  # one strategy per length: hypothesis replays draws by strategy
def column_of(n: int) -> st.SearchStrategy[list[Any]]:
    """One column of *n* values: each typed kind a carrier has, edge values included, or anything."""
    floats = st.one_of(st.floats(), st.sampled_from([float("nan"), -0.0, 0.0, float("inf"), float("-inf")]))
    ints = st.one_of(st.integers(-(2**63), 2**63 - 1), st.sampled_from([-(2**63), 2**63 - 1, 2**63, -(2**63) - 1]))
    texts_with_nul = st.one_of(texts, texts.map(lambda t: t + "\x00"))
    kinds = [
        st.lists(ints, min_size=n, max_size=n),
        st.lists(floats, min_size=n, max_size=n),
        st.lists(st.booleans(), min_size=n, max_size=n),
        st.lists(texts_with_nul, min_size=n, max_size=n),
        st.just([None] * n),
        st.lists(st.lists(texts_with_nul, max_size=3), min_size=n, max_size=n),
        st.lists(values, min_size=n, max_size=n),  # mixed and nested: JSON column, or the old way
        st.lists(st.dictionaries(texts, ints, max_size=2), min_size=n, max_size=n),
    ]
    return st.one_of(kinds)


@st.composite
def record_lists(draw: st.DrawFn) -> list[dict[str, Any]]:
    n = draw(st.integers(columns.RECORDS_MIN, 24))
    keys = draw(st.lists(st.one_of(texts, st.just("a\x00b")), min_size=1, max_size=6, unique=True))
    cols = [draw(column_of(n)) for _ in keys]
    records = [dict(zip(keys, row)) for row in zip(*cols)]
    if draw(st.booleans()) and len(keys) > 1:  # one record with its keys in another order
        i = draw(st.integers(0, n - 1))
        records[i] = dict(reversed(list(records[i].items())))
    return records


@st.composite
def vectors(draw: st.DrawFn) -> Any:
    n = draw(st.integers(columns.VECTOR_MIN, 40))
    column = draw(column_of(n))
    if draw(st.booleans()):
        return column
    keys = draw(st.lists(texts.map(lambda t: t.replace("\x00", "")), min_size=n, max_size=n, unique=True))
    if draw(st.booleans()):
        keys[0] = keys[0] + "\x00"  # NUL in a key: the old way
    return dict(zip(keys, column))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.one_of(record_lists(), vectors()))
def test_fast2_fast1_and_bson_decode_to_the_same_values(value: Any) -> None:
    bson = via(value, "bson")  # the reference
    for key in ("value", "yield"):
        assert identical(via(value, "fast2", key), bson)
        assert identical(via(value, "fast1", key), bson)


@pytest.mark.parametrize(
    "value",
    [
        RECORDS,
        [{"a": 1}] * 8 + [{"a": 2**63}],  # a big int: the old way (BSON), never a column
        [{"a": 1, "b": 2}] * 7 + [{"b": 2, "a": 1}],  # key order differs
        [{"x": float("nan"), "y": -0.0, "z": "\udc80\x01", "w": ["\ud83d", "\ude00"]}] * 9,
        [{"n": None, "t": (1,)}] * 9,  # a tuple: BSON
        [{"v": [1, "x", None, {"d": [2.5]}]}] * 9,  # nested and mixed: a JSON column
        [{"s": "a\x00b"}] * 9,  # NUL in a str: a JSON column
        {f"k{i}": i for i in range(20)},
        {f"k{i}": [f"t{i}"] * (i % 3) for i in range(20)},
        [f"s{i}" for i in range(20)],
        [i % 2 == 0 for i in range(20)],
        [2**70] * 20,
    ],
)
def test_edge_values_are_exact_in_every_encoding(value: Any) -> None:
    bson = via(value, "bson")
    assert identical(bson, value)
    assert identical(via(value, "fast2"), bson)
    assert identical(via(value, "fast1"), bson)


@pytest.mark.parametrize(
    ("value", "carried"),
    [
        (RECORDS, True),
        ({f"k{i}": i * 0.25 for i in range(10_000)}, True),
        (list(range(20)), True),
        ([{"a": 1}] * 7, False),  # too few records
        ([{"a": 1, "b": 2}] * 7 + [{"b": 2, "a": 1}], False),
        ([{"a": 1}] * 8 + [{"a": 2**63}], False),
        ([{"a\x00": 1}] * 9, False),  # NUL in a key
        ([{"ok": True}] * 20, False),  # fewer than RECORD_BYTES a record: JSON
        ([{1: 1}] * 9, False),
        ([[1]] * 20, False),  # a list column of ints would be JSON: fast1 does that
    ],
)
def test_which_values_go_as_columns(value: Any, carried: bool) -> None:
    assert ("c" in reply(value, "fast2")) is carried
    assert "c" not in reply(value, "fast1")


# -- hostile carriers: every forged size, tag and byte is a DecodeError, nothing allocated from a declared size --


def carrier(kind: str, n: int, *parts: bytes) -> bytes:
    return struct.pack("<BI", ord(kind), n) + b"".join(parts)


def col(tag: str, payload: bytes) -> bytes:
    return struct.pack("<BI", ord(tag), len(payload)) + payload


def decode(data: bytes) -> Any:
    return fastcodec.reply_value({"id": 1, "ok": True, "value": None, "c": data}, "value", "fast2")


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (carrier("V", 2**32 - 1, col("n", b"")), "declare"),  # 2^32 Nones from 14 bytes
        (carrier("R", 2**30, struct.pack("<I", 1), col("s", b"a\x00"), col("n", b"")), "declare"),
        (carrier("R", 8, struct.pack("<I", 10**6), col("s", b"a\x00")), "records of"),
        (carrier("R", 8, struct.pack("<I", 0)) + bytes(64), "records of"),
        (carrier("V", 2, struct.pack("<BI", ord("i"), 2**31)), "remain"),
        (carrier("V", 2, col("i", bytes(8))), "numbers"),
        (carrier("V", 2, col("b", b"\x00\x02")), "bool"),
        (carrier("V", 2, col("n", b"\x00\x01")), "None"),
        (carrier("V", 2, col("s", b"a\x00b")), "NUL-terminated"),
        (carrier("V", 2, col("s", b"\xff\x00a\x00")), "UTF-8"),
        (carrier("V", 2, col("l", struct.pack("<II", 2**31, 2**31) + b"a\x00")), "counts"),
        (carrier("V", 2, col("l", b"\x00")), "shorter"),
        (carrier("V", 2, col("j", b"[1]")), "array of 2"),
        (carrier("V", 2, col("j", b"[1, 2]")) + b"x", "stray"),
        (carrier("V", 2, col("q", b"ab")), "unknown tag"),
        (carrier("X", 0), "unknown kind"),
        (b"R\x01", "header"),
        (carrier("D", 2, col("s", b"a\x00a\x00"), col("i", bytes(16))), "repeats"),
        (carrier("D", 2, col("j", b'["a", "b"]'), col("i", bytes(16))), "text column"),
        (carrier("R", 8, struct.pack("<I", 2), col("s", b"a\x00a\x00")) + bytes(128), "distinct"),
    ],
)
def test_forged_carriers_are_refused(data: bytes, match: str) -> None:
    with pytest.raises(DecodeError, match=match):
        decode(data)


def test_a_carrier_beside_another_value_field_or_on_fast1_is_refused() -> None:
    good = reply(RECORDS, "fast2")
    with pytest.raises(DecodeError, match="chose fast1"):
        fastcodec.reply_value(good, "value", "fast1")
    for extra in ({"j": "[]"}, {"value": 1}, {"f": b""}, {"k": "[]"}):
        with pytest.raises(DecodeError, match="mixes"):
            fastcodec.reply_value({**good, **extra}, "value", "fast2")
    with pytest.raises(DecodeError, match="binary"):
        fastcodec.reply_value({**good, "c": "text"}, "value", "fast2")


def test_keys_that_look_like_code_are_only_data() -> None:
    keys = ["k0", "}; import os #", "__import__('os')", "k0 ", "\\", "'", '"']
    records = [dict.fromkeys(keys, i) for i in range(10)]
    assert identical(via(records, "fast2"), records)
    assert set(columns._BUILDERS) <= set(range(1, columns.MAX_KEYS + 1))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_carriers_decode_or_raise_decode_error(data: st.DataObject) -> None:
    good = bytearray(reply(RECORDS[:20], "fast2")["c"])
    rng = random.Random(data.draw(st.integers(0, 2**32)))
    for _ in range(data.draw(st.integers(1, 8))):
        good[rng.randrange(len(good))] = rng.randrange(256)
    if data.draw(st.booleans()):
        del good[rng.randrange(len(good)) :]
    try:
        decode(bytes(good))
    except DecodeError:
        pass


# -- msgspec on the client: the same values as json.loads, or json.loads' own outcome --

json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**63 - 1),
        st.floats(),
        texts,
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(texts, inner, max_size=4)),
    max_leaves=20,
)


def test_msgspec_is_used_on_the_client_when_installed() -> None:
    pytest.importorskip("msgspec")
    assert fastcodec._json_decode.__name__ == "decode_json"


@settings(max_examples=400, deadline=None)
@given(json_values)
def test_msgspec_and_json_read_our_json_to_the_same_values(value: Any) -> None:
    text = fastcodec._json_encode(value).encode("utf-8", "surrogatepass").decode("utf-8", "surrogatepass")
    assert identical(fastcodec._json_decode(text), fastcodec._json_decoder(False)(text))


@pytest.mark.parametrize(
    "text",
    ["[NaN, -Infinity, Infinity, -0.0]", '"\ud83d\ude00"', '"\\ud83d"', "7" * 4300, str(2**64), '{"a": 1, "a": 2}'],
)
def test_what_msgspec_refuses_json_reads(text: str) -> None:
    assert identical(fastcodec._json_decode(text), fastcodec._json_decoder(False)(text))


@pytest.mark.parametrize("text", ["7" * 4301, "[" * 100_000 + "]" * 100_000, "{"])
def test_what_both_refuse_is_json_s_error(text: str) -> None:
    with pytest.raises((ValueError, RecursionError)):
        fastcodec._json_decode(text)
