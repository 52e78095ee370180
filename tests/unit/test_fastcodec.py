"""fast1 alone: decodes to exactly what BSON decodes to, refuses what BSON refuses, reads hostile replies safely."""

from __future__ import annotations

import datetime
import decimal
import enum
import math
import os
import pickle
import struct
from collections import OrderedDict
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import pypods
from pypods._worker import codec, fastcodec, sharedmem
from pypods._worker.codec import EncodeError
from pypods._worker.decoding import DecodeError, Decoder
from unit.test_codec import same, texts, values

from .shmpeer import Side

RECORDS = [{"id": i, "name": f"item-{i}", "score": i * 0.5, "tags": ["a", "b"], "ok": i % 2 == 0} for i in range(200)]


def via_fast_request(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    decoder = Decoder()
    return fastcodec.decode_request(
        decoder.document(bytes(fastcodec.encode_request(None, 1, "f", args, kwargs))), decoder
    )


def via_bson_request(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    request = codec.decode(bytes(codec.Encoder().request(1, "f", args, kwargs)))
    return request["args"], request["kwargs"]


def via_fast_reply(value: Any, key: str = "value") -> Any:
    return fastcodec.reply_value(codec.decode(bytes(fastcodec.encode_reply(None, 1, value, key))), key)


def via_bson_reply(value: Any) -> Any:
    return codec.decode(bytes(codec.Encoder().reply(1, value)))["value"]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(values, max_size=3), st.dictionaries(texts, values, max_size=3))
def test_fast_and_bson_requests_decode_to_the_same_values(args: list[Any], kwargs: dict[str, Any]) -> None:
    fast_args, fast_kwargs = via_fast_request(tuple(args), kwargs)
    bson_args, bson_kwargs = via_bson_request(tuple(args), kwargs)
    assert same(list(fast_args), bson_args)
    assert same(fast_kwargs, bson_kwargs)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(values)
def test_fast_and_bson_replies_decode_to_the_same_values(value: Any) -> None:
    assert same(via_fast_reply(value), via_bson_reply(value))
    assert same(via_fast_reply(value, "yield"), via_bson_reply(value))


class Level(enum.IntEnum):
    LOW = 1


class Meters(float):
    pass


class Name(str):
    pass


@pytest.mark.parametrize(
    "value",
    [
        RECORDS,
        {"x": [1.5, float("nan"), -0.0, float("inf")], "y": None, "z": [True, False, "é\udc80"]},
        [0.1 * i for i in range(100)],
        {f"k{i}": i * 0.25 for i in range(1000)},
        [float("nan"), -0.0, float("-inf")] * 10,
        2**63,
        -(10**1000),
        {"n": 10**1000},
        (1, 2),
        [(1, 2)],
        {1: "int key"},
        {"a": {2.5: "float key"}},
        [Level.LOW],
        {"m": Meters(2.5)},
        [Meters(1.0)] * 20,
        OrderedDict(a=1),
        [b"bytes", bytearray(b"ba"), {1, 2}, frozenset()],
        {True: 1, None: 2},
        {**{f"k{i}": float(i) for i in range(20)}, 3: 1.5},  # float vectors: a non-str key among str keys
        {Name(f"k{i}"): float(i) for i in range(20)},  # str subclass keys arrive as str, as with BSON
    ],
)
def test_values_json_would_change_fall_back_and_stay_exact(value: Any) -> None:
    assert same(via_fast_reply(value), via_bson_reply(value))


@pytest.mark.parametrize(
    ("value", "exact"),
    [
        (RECORDS, True),
        ({"a": [1, "x", None, 2.5, True, {"b": []}]}, True),
        ([], True),
        ((1,), False),
        ({1: 2}, False),
        ([Level.LOW], False),
        ([Meters(1)], False),
        ([[[[(1,)]]]], False),
        ([{"a": {"b": {1: 1}}}], False),
    ],
)
def test_json_exact(value: Any, exact: bool) -> None:
    assert fastcodec.json_exact(value) is exact


def test_cycles_and_deep_nesting_are_not_json_and_do_not_hang() -> None:
    loop: list[Any] = []
    loop.append(loop)
    assert fastcodec.json_exact(loop) is False
    deep: Any = []
    for _ in range(fastcodec.MAX_LEVELS + 5):
        deep = [deep]
    assert fastcodec.json_exact(deep) is False
    with pytest.raises(EncodeError):
        fastcodec.encode_reply(None, 1, loop)


def test_small_replies_use_json_and_records_are_not_bson() -> None:
    assert b"\x02j\x00" in fastcodec.encode_reply(None, 1, RECORDS)
    assert b"\x05f\x00" in fastcodec.encode_reply(None, 1, {f"k{i}": float(i) for i in range(100)})
    assert b"$t" in fastcodec.encode_reply(None, 1, (1, 2))


class Custom:
    pass


@pytest.mark.parametrize(
    "args",
    [(1, "x"), (datetime.date(2024, 1, 2),), ([Level.LOW, {1: (2, 3)}],), (decimal.Decimal("1.5"), OrderedDict(a=1))],
)
def test_requests_with_any_sendable_value_take_the_pickle_path(args: tuple[Any, ...]) -> None:
    frame = fastcodec.encode_request(None, 1, "f", args, {})
    request = codec.decode(bytes(frame))
    assert "a" in request  # not the BSON fallback
    assert "args" not in request
    assert same(list(via_fast_request(args, {})[0]), via_bson_request(args, {})[0])


def test_fast_request_refuses_like_bson_and_names_the_place() -> None:
    with pytest.raises(EncodeError) as info:
        fastcodec.encode_request(None, 1, "f", (1, {"items": [0, Custom()]}), {})
    assert str(info.value).startswith("args[1]['items'][1]: cannot send Custom")


def test_fast_request_sends_big_top_level_buffers_out_of_band() -> None:
    pair = sharedmem.open_pair()
    if pair is None:
        pytest.skip("no memfd here")
    sender, theirs = pair
    big = Side(sender).out(1024)
    try:
        frame = fastcodec.encode_request(big, 1, "f", (b"x" * 4096,), {})
        assert len(frame) < 1024
        assert b"\x02$t\x00\x04\x00\x00\x00shm\x00" in frame
    finally:
        big.discard()
        sender.close()
        theirs.close()


def test_big_nested_buffers_and_float_vectors_go_out_of_band() -> None:
    pair = sharedmem.open_pair()
    if pair is None:
        pytest.skip("no memfd here")
    sender, theirs = pair
    receiver = sharedmem.FdChannel(theirs)
    left, right = Side(sender), Side(receiver)
    big = left.out(1024)
    try:
        nested = ({"blobs": [b"y" * 8192, bytearray(b"z" * 4096)]},)
        frame = fastcodec.encode_request(big, 1, "f", nested, {})
        left.send(big, right)
        assert len(frame) < 1024  # the pickle itself went out of band
        decoder = Decoder(right.oob())
        args, kwargs = fastcodec.decode_request(decoder.document(bytes(frame)), decoder)
        assert same(args, nested)
        assert kwargs == {}
        floats = [i / 3 for i in range(1000)]
        reply = fastcodec.encode_reply(big, 2, floats)
        left.send(big, right)
        right.receive()
        assert len(reply) < 1024
        assert fastcodec.reply_value(decoder.document(bytes(reply)), "value") == floats
    finally:
        big.discard()
        sender.close()
        receiver.close()


class Boom:
    def __reduce__(self) -> Any:
        return (os.system, ("touch /tmp/pypods-fast1-pwned",))


@pytest.mark.parametrize("payload", [pickle.dumps(((Boom(),), {})), pickle.dumps(((OrderedDict(),), {})), b"garbage"])
def test_worker_unpickler_resolves_nothing_but_bson_value(payload: bytes) -> None:
    frame = codec.encode({"id": 1, "op": "call", "name": "f", "a": payload})
    decoder = Decoder()
    with pytest.raises(DecodeError):
        fastcodec.decode_request(decoder.document(bytes(frame)), decoder)
    assert not os.path.exists("/tmp/pypods-fast1-pwned")


def reply_with(**fields: Any) -> dict[str, Any]:
    return codec.decode(bytes(codec.encode({"id": 1, "ok": True, "value": None, **fields})))


@pytest.mark.parametrize(
    "fields",
    [
        {"j": b"[1]"},
        {"j": "[1"},
        {"j": "[" * 100000 + "]" * 100000},
        {"j": "1" * 5000},
        {"j": '{"a": NaN, "a": }'},
        {"f": b"\x00" * 7},
        {"f": "not binary"},
        {"f": b"\x00" * 16, "k": '["a"]'},
        {"f": b"\x00" * 16, "k": "[1, 2]"},
        {"f": b"\x00" * 16, "k": 5},
    ],
)
def test_hostile_fast_reply_fields_only_raise_decode_error(fields: dict[str, Any]) -> None:
    with pytest.raises(DecodeError):
        fastcodec.reply_value(reply_with(**fields), "value")


def test_float_vectors_keep_every_bit() -> None:
    values_ = [float("nan"), -0.0, 0.0, float("inf"), 5e-324, 1.7976931348623157e308] * 5
    back = via_fast_reply(values_)
    assert [struct.pack("<d", x) for x in back] == [struct.pack("<d", x) for x in values_]
    keyed = {f"k{i}": x for i, x in enumerate(values_)}
    back_keyed = via_fast_reply(keyed)
    assert list(back_keyed) == list(keyed)
    assert all(math.isnan(x) if math.isnan(y) else x == y for x, y in zip(back_keyed.values(), keyed.values()))


@pytest.mark.parametrize(
    ("hello", "codec_name", "env", "chosen"),
    [
        ({"encodings": ["bson", "fast1"]}, "bson", None, "fast1"),
        ({"encodings": ["bson", "fast1", "fast2"]}, "bson", None, "fast2"),
        ({"encodings": ["bson", "fast1", "fast2"]}, "bson", "fast1", "fast1"),
        ({"encodings": ["bson", "fast2"]}, "bson", "fast1", "bson"),
        ({}, "bson", None, "bson"),  # a peer that does not negotiate gets BSON
        ({"encodings": ["bson"]}, "bson", None, "bson"),
        ({"encodings": "fast1"}, "bson", None, "bson"),  # malformed: ignored
        ({"encodings": ["bson", "fast1"]}, "pickle", None, "pickle"),
        ({"encodings": ["bson", "fast1"]}, "bson", "bson", "bson"),
    ],
)
def test_the_client_chooses_fast1_only_when_offered_and_allowed(
    monkeypatch: pytest.MonkeyPatch, hello: dict[str, Any], codec_name: str, env: str | None, chosen: str
) -> None:
    from pypods._client.core import CallProtocol

    if env is not None:
        monkeypatch.setenv("PYPODS_ENCODING", env)
    proto = CallProtocol("p", codec_name)
    frame = proto.choose_encoding(hello)
    if chosen in ("fast1", "fast2"):
        assert frame is not None
        assert codec.decode(bytes(frame)) == {"id": 0, "op": "encoding", "name": chosen}
        assert b"\x05a\x00" in proto.encode_call(1, "f", (1,), {})[0]
    else:
        assert frame is None
        assert b"\x05a\x00" not in proto.encode_call(1, "f", (1,), {})[0]
        with pytest.raises(pypods.PodProtocolError, match="fast1"):
            proto.value_of(reply_with(j="[1]"), "value")
