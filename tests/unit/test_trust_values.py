"""Values that must arrive whole or not at all (#20): exceptions, cycles, big ints, surrogates, optional libraries.

Codec-level tests, both encodings (BSON and fast1) and both directions (request and reply), with
hypothesis where a property holds for every value.
"""

from __future__ import annotations

import builtins
import enum
import json
import pickle
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given, settings

from pypods._errors import PodRemoteError, remote_error_type
from pypods._worker import codec, fastcodec
from pypods._worker.codec import EncodeError
from pypods._worker.decoding import Decoder
from pypods._worker.exttypes import MissingLibrary, _require
from unit.test_codec import CONTROLS, texts


def bson_round_trip(value: Any) -> Any:
    return codec.decode(bytes(codec.encode({"v": value})))["v"]


def fast_reply(value: Any) -> Any:
    """What a client reads from a fast1 reply carrying *value*."""
    reply = Decoder().document(bytes(fastcodec.encode_reply(None, 1, value)))
    return fastcodec.reply_value(reply, "value")


def fast_request(args: tuple[Any, ...], kwargs: dict[str, Any] | None = None) -> Any:
    """What a worker reads from a fast1 request."""
    request = Decoder(stdlib_imports=True).document(bytes(fastcodec.encode_request(None, 1, "f", args, kwargs or {})))
    return fastcodec.decode_request(request, Decoder(stdlib_imports=True))


# -- item 3: an exception decodes as its class only when the class runs no code and nothing is lost --


class Closer:
    ran: list[str] = []  # noqa: RUF012

    def __del__(self) -> None:
        Closer.ran.append("del")


class Leaky(ValueError, Closer):
    """Its __del__ comes from a mixin after the builtin base."""


class Plain(KeyError):
    code = 3

    def helper(self) -> int:
        return 1


class Computed(ValueError):
    @property
    def detail(self) -> str:
        return self.args[1]  # state that only its own constructor would have set


class Disguised(ValueError):
    __module__ = "builtins"  # claims to be a builtin

    def __str__(self) -> str:
        return "ran"


@pytest.mark.parametrize(
    ("value", "name"),
    [
        (subprocess.CalledProcessError(1, ["false"]), "subprocess.CalledProcessError"),
        (subprocess.TimeoutExpired(["sleep"], 3), "subprocess.TimeoutExpired"),
        (json.JSONDecodeError("Expecting value", "x", 0), "json.decoder.JSONDecodeError"),
        (Leaky("leak"), f"{__name__}.Leaky"),
        (Computed("a", "b"), f"{__name__}.Computed"),
        (Disguised("d"), "builtins.Disguised"),
    ],
)
def test_exceptions_that_need_their_own_code_arrive_as_the_documented_fallback(value: Exception, name: str) -> None:
    Closer.ran.clear()
    arrived = bson_round_trip(value)
    assert type(arrived) is Exception
    assert str(arrived) == f"{name}: {value}"
    assert arrived.remote_args == tuple(value.args)
    del arrived
    assert Closer.ran == []


def test_a_class_of_builtin_behaviour_arrives_as_itself_with_every_attribute() -> None:
    plain = Plain("k")
    plain.extra = [1, 2]  # type: ignore[attr-defined]
    arrived = bson_round_trip(plain)
    assert type(arrived) is Plain
    assert arrived.args == ("k",)
    assert arrived.extra == [1, 2]
    missing = bson_round_trip(FileNotFoundError(2, "No such file", "/x"))
    assert type(missing) is FileNotFoundError
    assert (missing.errno, missing.filename) == (2, "/x")
    assert str(missing) == "[Errno 2] No such file: '/x'"
    bad = bson_round_trip(UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"))
    assert type(bad) is UnicodeDecodeError
    assert (bad.start, bad.reason) == (0, "invalid start byte")
    name = bson_round_trip(ImportError("no", name="mod"))
    assert type(name) is ImportError
    assert name.name == "mod"


class Slotted(ValueError):
    __slots__ = ("__private", "code")  # held beside the instance __dict__, not in it


@pytest.mark.parametrize("trip", [bson_round_trip, fast_reply])
def test_an_exceptions_slots_arrive_with_it(trip: Any) -> None:
    slotted = Slotted("s")
    slotted.code = 5
    arrived = trip(slotted)
    assert type(arrived) is Slotted
    assert arrived.code == 5  # was: rebuilt as Slotted without it (AttributeError on .code)
    unset = trip(Slotted("u"))
    assert type(unset) is Slotted
    assert not hasattr(unset, "code")  # never set there: not set here
    slotted.code = object()  # cannot cross: then not the class, the documented fallback
    assert type(trip(slotted)) is Exception


def test_an_exception_with_an_attribute_that_cannot_cross_is_the_fallback() -> None:
    plain = Plain("k")
    plain.handle = object()  # type: ignore[attr-defined]
    arrived = bson_round_trip(plain)
    assert type(arrived) is Exception
    assert str(arrived) == f"{__name__}.Plain: 'k'"


def test_forged_attributes_never_set_dunders() -> None:
    out = bytearray(b"\x00\x00\x00\x00")
    codec.Encoder().ext(out, b"v\x00", "exc", ["k"], c=f"{__name__}:Plain", m="k", d={"__class__": "x"})
    out += b"\x00"
    out[:4] = len(out).to_bytes(4, "little")
    assert type(codec.decode(bytes(out))["v"]) is Exception


# -- item 7: a cycle is refused by both encodings, both directions, naming where it closes ---------


def cyclic() -> list[Any]:
    value: list[Any] = [1]
    value.append(value)
    return value


def test_a_cycle_is_refused_the_same_way_by_both_encodings_both_directions() -> None:
    loop = cyclic()
    for send in (
        lambda: fastcodec.encode_request(None, 1, "f", (0, [loop]), {}),
        lambda: codec.Encoder().request(1, "f", (0, [loop]), {}),
    ):
        with pytest.raises(EncodeError, match=r"args\[1\]\[0\]\[1\]: cannot send a value that contains itself"):
            send()
    with pytest.raises(EncodeError, match=r"kwargs\['k'\]\[1\]: .*cycle"):
        fastcodec.encode_request(None, 1, "f", (), {"k": loop})
    for reply in (lambda: fastcodec.encode_reply(None, 1, {"a": loop}), lambda: codec.Encoder().reply(1, {"a": loop})):
        with pytest.raises(EncodeError, match=r"value\['a'\]\[1\]: .*cycle"):
            reply()


def test_deep_nesting_without_a_cycle_is_still_too_deep() -> None:
    deep: list[Any] = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(EncodeError, match="nested too deeply"):
        fastcodec.encode_request(None, 1, "f", (deep,), {})


def test_a_value_shared_twice_arrives_as_two_copies_in_both_encodings() -> None:
    shared = [1, 2]
    (args, _kwargs) = fast_request(([shared, shared],))
    assert args == ([[1, 2], [1, 2]],)
    assert args[0][0] is not args[0][1]
    assert bson_round_trip([shared, shared]) == [[1, 2], [1, 2]]


# -- item 8: every builtin exception type arrives as a PodRemoteError that is also that builtin -------

EXCEPTIONS = sorted(
    name for name, obj in vars(builtins).items() if isinstance(obj, type) and issubclass(obj, Exception)
)


@pytest.mark.parametrize("name", EXCEPTIONS)
def test_every_builtin_exception_type_is_also_the_builtin_on_the_client(name: str) -> None:
    builtin = vars(builtins)[name]
    mro = [f"{klass.__module__}.{klass.__qualname__}" for klass in builtin.__mro__ if issubclass(klass, BaseException)]
    cls = remote_error_type(mro)
    exc = cls("pod 'p': remote message", remote_type=name, remote_traceback="Traceback ...", mro=mro)
    expected = RuntimeError if name in ("StopIteration", "StopAsyncIteration") else builtin
    assert isinstance(exc, PodRemoteError)
    assert isinstance(exc, expected), cls
    assert str(exc).startswith("pod 'p': remote message")
    repr(exc)
    again = pickle.loads(pickle.dumps(exc))
    assert type(again) is cls
    assert again.remote_traceback == "Traceback ..."


def test_a_remote_unicode_decode_error_is_caught_as_one() -> None:
    mro = ["builtins.UnicodeDecodeError", "builtins.UnicodeError", "builtins.ValueError", "builtins.Exception"]
    with pytest.raises(UnicodeDecodeError):
        raise remote_error_type(mro)("pod 'p': 'utf-8' codec can't decode byte 0xff", mro=mro)


# -- item 9: whether an int goes as JSON depends on the value, not on either side's digit limit -------


@pytest.mark.skipif(not hasattr(sys, "set_int_max_str_digits"), reason="no int digit limit in this Python")
def test_a_big_int_is_never_json_even_where_the_digit_limit_is_lifted() -> None:
    value = [10**4400, -(2**63) - 1, 2**63]
    before = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)  # as a pod may
    try:
        frame = bytes(fastcodec.encode_reply(None, 1, value))
        assert not fastcodec.json_exact(value)
        assert not fastcodec.json_exact([2**63])
    finally:
        sys.set_int_max_str_digits(before)
    assert fastcodec.reply_value(Decoder().document(frame), "value") == value  # read at the default limit
    assert fastcodec.json_exact([2**63 - 1, -(2**63)])


# -- item 10: text of every code point, surrogates and controls included, arrives unchanged ------------


def test_the_text_strategy_covers_surrogates_and_every_control() -> None:
    assert set(CONTROLS) == {chr(c) for c in range(0xA0) if c < 0x20 or c >= 0x7F}
    assert texts.example is not None  # the strategy every codec test draws its text from (test_codec)


@settings(max_examples=300, deadline=None)
@given(texts)
def test_text_with_surrogates_and_controls_arrives_unchanged_in_both_encodings(text: str) -> None:
    for value in ([text], {text: [text]}, {f"k{i}": 1.5 for i in range(20)} | {text: 2.5}):
        assert fast_reply(value) == value
        assert bson_round_trip(value) == value
    (args, kwargs) = fast_request((text,), {"t": text})
    assert args == (text,)
    assert kwargs == {"t": text}


def test_two_surrogate_code_points_stay_two() -> None:
    pair = "\ud83d\ude00"
    assert len(pair) == 2
    assert fast_reply([pair]) == [pair]
    assert len(fast_reply([pair])[0]) == 2
    assert fast_reply(["\U0001f600"]) == ["\U0001f600"]


# -- item 11: an optional library that is installed but broken says so; a __main__ enum is refused ----


def test_a_library_that_fails_to_import_is_reported_with_its_own_error(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "zz_broken_lib"
    package.mkdir()
    (package / "__init__.py").write_text("raise ImportError('zz_broken_lib needs numpy>=2; found 1.26')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(MissingLibrary) as info:
        _require("zz_broken_lib", "thing")
    text = str(info.value)
    assert "installed on this side but failed to import" in text
    assert "needs numpy>=2" in text
    assert "not installed" not in text
    with pytest.raises(MissingLibrary, match="zz_not_there is not installed on this side"):
        _require("zz_not_there", "thing")


def test_an_enum_of_the_clients_main_is_refused_before_sending() -> None:
    color = enum.Enum("Color", "RED GREEN", module="__main__")
    for send in (
        lambda: fastcodec.encode_request(None, 1, "f", (color.RED,), {}),
        lambda: codec.Encoder().request(1, "f", ([color.RED],), {}),
    ):
        with pytest.raises(EncodeError, match=r"args\[0\].*Color: an enum defined in __main__"):
            send()


def test_a_pandas_value_with_a_broken_pyarrow_names_pyarrows_own_error(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"a": [1.0, 2.0]})
    package = tmp_path / "pyarrow"
    package.mkdir()
    (package / "__init__.py").write_text("raise ImportError('this pyarrow needs numpy>=2 (found numpy 1.26.4)')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "pyarrow", raising=False)
    with pytest.raises(EncodeError, match=r"pyarrow is installed on this side but failed to import: .*numpy>=2"):
        codec.encode({"v": frame})


@pytest.mark.parametrize(
    ("line", "installs"),
    [
        ("-e ../../mylib", True), ("-e../../mylib", True), ("-egit+https://example.org/x.git", True),
        ("--editable=../lib", True), ("--editable ../lib", True), ("-r base.txt", True), ("-rbase.txt", True),
        ("--requirement=base.txt", True), ("numpy>=2", True), ("./wheels/x.whl", True),
        ("--no-index", False), ("--find-links ./wheels", False), ("-f ./wheels", False), ("-c constraints.txt", False),
        ("--extra-index-url https://x", False), ("-i https://x", False),
    ],
)  # fmt: skip
def test_which_requirement_lines_install_something(line: str, installs: bool) -> None:
    """A line counted as an option, when it is the only one, means nothing is installed (pip's attached values too)."""
    from pypods._env.builders import is_requirement

    assert is_requirement(line) is installs
