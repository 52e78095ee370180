"""The decoder is hostile-input code: forged values from a pod, and a fuzzer over random and mutated frames (#11).

Hostile pods paste ``forge.FORGE`` and send replies of the documented wire format whose values are
crafted: classes naming modules that run code on import, allocation bombs, colliding hash keys,
compressed Arrow streams, malformed fast1 fields. Every test asserts the safe outcome: a typed
``PodError`` (or a harmless value) within a deadline, nothing imported, memory bounded, and the
next call right. The fuzzer asserts that decoding raises only the documented errors.
"""

from __future__ import annotations

import os
import random
import resource
import struct
import sys
import time
from typing import TYPE_CHECKING, Any

import pytest

import pypods
from adversarial.forge import FORGE
from pypods._worker import codec, fastcodec
from pypods._worker.decoding import DecodeError, Decoder
from pypods._worker.exttypes import MissingLibrary

if TYPE_CHECKING:
    from pathlib import Path

    from conftest import PodFactory

HOSTILE = (
    FORGE
    + """
import struct, time

_enc = _sys.modules["_pypods_worker.codec"].Encoder


def add(a, b):
    return a + b


def _reply(call_id, tag, payload, extra):
    out = bytearray(b"\\x00\\x00\\x00\\x00")
    _enc().value(out, b"id\\x00", call_id)
    out += b"\\x08ok\\x00\\x01"
    _enc().ext(out, b"value\\x00", tag, payload, **extra)
    out += b"\\x00"
    struct.pack_into("<i", out, 0, len(out))
    return bytes(out)


# Each test makes these the first call of a fresh worker, so its id is 1 (the real reply that
# follows is a stray for an answered call, which the client drops).
def forged_value(tag, payload, extra=None):
    send(_reply(1, tag, payload, extra or {}))
    return "real"


def forged_fields(fields):
    send(bson(dict({"id": 1, "ok": True, "value": None}, **fields)))
    return "real"
"""
)


@pytest.fixture
def hostile(make_pod: PodFactory, root: Path) -> Path:
    make_pod("hostile", HOSTILE)
    return root


def maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


@pytest.mark.parametrize(
    ("tag", "payload", "spec"),
    [
        ("exc", ["x"], "this:Exception"),
        ("exc", [], "unittest.__main__:SystemExit"),
        ("enum", "A", "venv.__main__:Enum"),
        ("enum", "A", "this:X"),
        ("obj", {}, "antigravity:X"),
    ],
)
def test_a_class_naming_a_module_never_imports_it(hostile: Path, tag: str, payload: Any, spec: str) -> None:
    module = spec.split(":")[0]
    assert module not in sys.modules
    before = set(os.listdir(os.getcwd()))
    with pypods.load("hostile", root=hostile) as pod:
        try:
            value = pod.forged_value(tag, payload, {"c": spec, "m": "forged"})
        except pypods.PodProtocolError:
            pass  # an enum that does not resolve: a bad value
        else:
            assert type(value) in (Exception, dict)  # an exception of unknown class; an unregistered obj
        assert pod.add(1, 2) == 3
    assert module not in sys.modules
    assert set(os.listdir(os.getcwd())) == before  # venv.__main__ would have made a folder


@pytest.mark.parametrize(
    ("tag", "payload"),
    [("bytearray", 2**31 - 1), ("bytearray", 2**62), ("tuple", 2**40), ("int", "9" * 100000)],
)
def test_allocation_bombs_are_refused_without_allocating(hostile: Path, tag: str, payload: Any) -> None:
    before = maxrss()
    with pypods.load("hostile", root=hostile) as pod:
        with pytest.raises(pypods.PodProtocolError):
            pod.forged_value.with_options(timeout=10)(tag, payload)
        assert pod.add(1, 2) == 3
    grown = maxrss() - before
    assert grown < 200 * 1024, f"the client grew by {grown // 1024} MiB for a {tag} bomb"


@pytest.mark.parametrize("tag", ["set", "frozenset", "dict"])
def test_colliding_hash_keys_are_refused_quickly(hostile: Path, tag: str) -> None:
    keys = [i * (2**61 - 1) for i in range(1, 30001)]  # all hash to 0: inserting them is quadratic
    payload: Any = [[key, 0] for key in keys] if tag == "dict" else keys
    with pypods.load("hostile", root=hostile) as pod:
        started = time.monotonic()
        with pytest.raises(pypods.PodProtocolError, match="hash"):
            pod.forged_value.with_options(timeout=20)(tag, payload)
        assert time.monotonic() - started < 10
        assert pod.add(1, 2) == 3


def compressed_arrow(rows: int) -> bytes:
    pa = pytest.importorskip("pyarrow")
    table = pa.table({"a": pa.array([0.0] * rows)})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def null_column(rows: int) -> bytes:
    pa = pytest.importorskip("pyarrow")
    table = pa.table({"n": pa.nulls(rows)})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


@pytest.mark.parametrize("make", [compressed_arrow, null_column])
def test_arrow_bombs_are_refused(hostile: Path, make: Any) -> None:
    pytest.importorskip("pandas")
    stream = make(20_000_000)  # a few hundred bytes that would inflate to 160 MB (or 20M Python Nones)
    assert len(stream) < 100_000
    before = maxrss()
    with pypods.load("hostile", root=hostile) as pod:
        with pytest.raises(pypods.PodProtocolError, match="Arrow"):
            pod.forged_value.with_options(timeout=20)("pandas", stream, {"series": False})
        assert pod.add(1, 2) == 3
    grown = maxrss() - before
    assert grown < 100 * 1024, f"the client grew by {grown // 1024} MiB for an Arrow bomb"


@pytest.mark.parametrize(
    "fields",
    [
        {"j": "[" * 200000 + "]" * 200000},
        {"j": "1" * 100000},
        {"j": "{"},
        {"f": b"\x00" * 9},
        {"f": b"\x00" * 16, "k": '["only one key"]'},
        # Fields that disagree (review4): which one would be the result?
        {"value": 5, "j": "[1]"},
        {"j": "[1]", "f": b"\x00" * 8},
        {"j": "[1]", "k": '["a"]'},
        {"value": [1, 2], "k": '["a", "b"]'},  # keys without floats
        {"f": b"\x00" * 16, "k": '["a", "a"]'},  # two floats, one key twice: the dict would lose one
        {"c": b"V\xff\xff\xff\xffn\x00\x00\x00\x00"},  # fast2: 2^32 Nones declared in 10 bytes
        {"c": b"R\x08\x00\x00\x00\x02\x00\x00\x00s\x04\x00\x00\x00a\x00a\x00" + bytes(200)},  # a key twice
        {"c": "not binary"},
        {"c": b"V\x01\x00\x00\x00n\x01\x00\x00\x00\x00", "j": "[1]"},  # two carriers
    ],
)
def test_malformed_fast1_fields_are_protocol_errors(hostile: Path, fields: dict[str, Any]) -> None:
    with pypods.load("hostile", root=hostile) as pod:
        with pytest.raises(pypods.PodProtocolError):
            pod.forged_fields.with_options(timeout=10)(fields)
        assert pod.add(1, 2) == 3


def test_fast1_fields_on_a_bson_connection_are_refused(hostile: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYPODS_ENCODING", "bson")
    with pypods.load("hostile", root=hostile) as pod:
        with pytest.raises(pypods.PodProtocolError, match="fast1"):
            pod.forged_fields.with_options(timeout=10)({"j": "[1]"})
        assert pod.add(1, 2) == 3


def test_a_planted_description_imports_nothing(hostile: Path) -> None:
    from pypods._env import cache

    state = hostile / "pods" / "hostile" / ".pypods"
    with pypods.load("hostile", root=hostile) as pod:
        assert pod.add(1, 2) == 3
    planted = state / cache.FILE
    assert planted.exists()
    out = bytearray(b"\x00\x00\x00\x00")
    codec.Encoder().ext(out, b"functions\x00", "exc", ["x"], c="this:Exception", m="")
    out += b"\x00"
    struct.pack_into("<i", out, 0, len(out))
    planted.write_bytes(bytes(out))
    with pypods.load("hostile", root=hostile) as pod:
        assert pod.add(1, 2) == 3
    assert "this" not in sys.modules


# -- the fuzzer -------------------------------------------------------------------------------

SEEDS: list[Any] = [
    {"id": 1, "ok": True, "value": [1, "two", 3.0, None, True, b"bytes"]},
    {"id": 2, "ok": True, "value": {"nested": {"deep": [(1, 2), {3, 4}, frozenset({5})]}}},
    {"id": 3, "ok": True, "value": [2**100, -(2**70), 1 + 2j, bytearray(b"ba"), range(3)]},
    {"id": 4, "yield": {1: "int key", (2, 3): "tuple key", None: "none"}},
    {"id": 5, "ok": False, "error": {"kind": "remote", "type": "ValueError", "message": "m", "mro": []}},
    {"id": 6, "ok": True, "value": [ValueError("x"), KeyError("k")]},
]


def seed_frames() -> list[bytes]:
    import datetime
    import decimal
    import uuid

    frames = [bytes(codec.encode(doc)) for doc in SEEDS]
    extra = [
        datetime.datetime(2024, 1, 2, 3, 4, 5, 6),
        datetime.time(1, fold=1),
        decimal.Decimal("1.5"),
        uuid.UUID(int=7),
    ]
    frames.append(bytes(codec.encode({"id": 7, "ok": True, "value": extra})))
    records = [{"id": i, "name": f"n{i}", "score": i * 0.5, "tags": ["a"], "ok": True} for i in range(5)]
    frames.append(bytes(fastcodec.encode_reply(None, 8, records)))
    frames.append(bytes(fastcodec.encode_reply(None, 9, [0.5] * 20)))
    frames.append(bytes(fastcodec.encode_reply(None, 10, {f"k{i}": 0.5 for i in range(20)})))
    many = [{"id": i, "name": f"n{i}", "score": i * 0.5, "tags": ["a"] * (i % 3), "ok": True} for i in range(9)]
    frames.append(bytes(fastcodec.encode_reply(None, 11, many, encoding="fast2")))  # fast2 columns
    frames.append(bytes(fastcodec.encode_reply(None, 12, {f"k{i}": i for i in range(20)}, encoding="fast2")))
    return frames


def mutate(rng: random.Random, frame: bytes) -> bytes:
    data = bytearray(frame)
    for _ in range(rng.randint(1, 6)):
        choice = rng.random()
        if choice < 0.4 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif choice < 0.6 and len(data) > 4:
            start = rng.randrange(4, len(data))
            struct.pack_into(
                "<i",
                data,
                max(0, start - 4),
                rng.choice([0, 1, 4, 5, 2**31 - 1, -1, len(data), rng.randrange(-(2**31), 2**31)]),
            )
        elif choice < 0.75:
            del data[rng.randrange(len(data) + 1) :]
        elif choice < 0.9:
            at = rng.randrange(len(data) + 1)
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        else:
            at = rng.randrange(len(data) + 1)
            data[at:at] = data[rng.randrange(len(data) + 1) :][:32]
    if rng.random() < 0.5 and len(data) >= 4:
        struct.pack_into("<i", data, 0, len(data))  # keep the outer length right, to reach the inner parts
    return bytes(data)


def decode_like_the_client(frame: bytes) -> None:
    """What the client does with a frame: decode it, then read the value the way fast1/fast2 replies say."""
    message = Decoder().document(frame)
    for key in ("value", "yield"):
        if key in message:
            fastcodec.reply_value(message, key, "fast2")


def fuzz(seconds: float, seed: int) -> int:
    rng = random.Random(seed)
    frames = seed_frames()
    for frame in frames:
        decode_like_the_client(frame)  # the seeds themselves are valid
    done = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if rng.random() < 0.15:
            candidate = bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))
        else:
            candidate = mutate(rng, rng.choice(frames))
        started = time.monotonic()
        try:
            decode_like_the_client(candidate)
        except (DecodeError, MissingLibrary):
            pass
        assert time.monotonic() - started < 2.0, f"decoding took too long: {candidate[:200]!r}"
        done += 1
    return done


def test_fuzz_decoder_briefly() -> None:
    before = maxrss()
    assert fuzz(3.0, seed=1) > 100
    assert maxrss() - before < 200 * 1024


@pytest.mark.fuzz
@pytest.mark.timeout(900)
def test_fuzz_decoder_long(request: pytest.FixtureRequest) -> None:
    if "fuzz" not in (request.config.option.markexpr or "") and "FUZZ_SECONDS" not in os.environ:
        pytest.skip("the long fuzzer runs with `pytest -m fuzz` (or FUZZ_SECONDS set)")
    seconds = float(os.environ.get("FUZZ_SECONDS", "300"))
    assert fuzz(seconds, seed=int(os.environ.get("FUZZ_SEED", "2"))) > 1000
