"""A pod's values arrive whole or not at all, and its output cannot drive the user's terminal (#20).

Real pods, each test under both value encodings where the encoding matters: exceptions that need
their own code, a forged exception class whose mixin has a ``__del__``, a remote
``UnicodeDecodeError``, a pod that lifts its int digit limit, surrogate code points, cycles both
ways, an enum of the client's ``__main__``, and escape sequences on the pod's stderr.
"""

from __future__ import annotations

import enum
import io
import pickle
import time
from typing import TYPE_CHECKING, Any

import pytest

import pypods
from adversarial.test_decoder import HOSTILE

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from conftest import PodFactory

POD = (
    HOSTILE
    + """
import json, subprocess

if hasattr(_sys, "set_int_max_str_digits"):
    _sys.set_int_max_str_digits(0)  # this pod lifts its own limit: the client keeps the default


def called_process_error():
    return subprocess.CalledProcessError(1, ["false"])


def timeout_expired():
    return subprocess.TimeoutExpired(["sleep", "9"], 3)


def json_error():
    return json.JSONDecodeError("Expecting value", "x", 0)


def not_found():
    return FileNotFoundError(2, "No such file or directory", "/nowhere")


def bad_bytes():
    return b"\\xff".decode()


def huge():
    return [10**4400, {"n": -(10**4400)}]


def surrogates():
    return ["\\ud83d\\ude00", {"\\ud83d": "\\ude00"}]


def echo(value):
    return value


def cyclic():
    loop = [1]
    loop.append(loop)
    return {"loop": loop}


def shout(text):
    _sys.stderr.write(text + "\\n")
    _sys.stderr.flush()
    return 1
"""
)


class Closer:
    ran: list[str] = []  # noqa: RUF012

    def __del__(self) -> None:
        Closer.ran.append("del")


class Leaky(ValueError, Closer):
    """The client has this class; its __del__ comes from the mixin after the builtin base."""


@pytest.fixture(params=["fast1", "bson"])
def pod(request: pytest.FixtureRequest, make_pod: PodFactory, root: Path) -> Iterator[pypods.Pod]:
    make_pod("trusty", POD)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYPODS_ENCODING", request.param)
        loaded = pypods.load("trusty", root=root, start="eager")
    with loaded:
        yield loaded


# -- item 3 ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("function", "name", "args"),
    [
        ("called_process_error", "subprocess.CalledProcessError", (1, ["false"])),
        ("timeout_expired", "subprocess.TimeoutExpired", (["sleep", "9"], 3)),
        ("json_error", "json.decoder.JSONDecodeError", ("Expecting value: line 1 column 1 (char 0)",)),
    ],
)
def test_exceptions_that_need_their_own_constructor_arrive_whole_as_the_fallback(
    pod: pypods.Pod, function: str, name: str, args: tuple[Any, ...]
) -> None:
    import json  # noqa: F401  (imported here, as a client that uses them would have)
    import subprocess  # noqa: F401

    value = getattr(pod, function)()
    assert type(value) is Exception
    text = str(value)  # raised AttributeError when half-built
    assert text.startswith(name + ": ")
    assert value.remote_args == args


def test_a_builtin_exception_keeps_its_attributes(pod: pypods.Pod) -> None:
    value = pod.not_found()
    assert type(value) is FileNotFoundError
    assert (value.errno, value.strerror, value.filename) == (2, "No such file or directory", "/nowhere")


def test_a_forged_class_whose_mixin_has_a_del_never_runs_it_in_the_client(pod: pypods.Pod) -> None:
    Closer.ran.clear()
    value = pod.forged_value("exc", ["leak"], {"c": f"{__name__}:Leaky", "m": "leak"})
    assert type(value) is Exception
    assert str(value) == f"{__name__}.Leaky: leak"
    del value
    import gc

    gc.collect()
    assert Closer.ran == []
    assert pod.add(1, 2) == 3


# -- item 8 ------------------------------------------------------------------------------------


def test_a_remote_unicode_decode_error_is_caught_as_one(pod: pypods.Pod) -> None:
    with pytest.raises(UnicodeDecodeError) as info:
        pod.bad_bytes()
    assert isinstance(info.value, pypods.PodRemoteError)
    assert "can't decode byte 0xff" in str(info.value)


# -- item 9 ------------------------------------------------------------------------------------


def test_ints_past_the_default_digit_limit_cross_from_a_pod_that_lifted_its_own(pod: pypods.Pod) -> None:
    assert pod.huge() == [10**4400, {"n": -(10**4400)}]
    assert pod.add(1, 2) == 3  # same worker: nothing was replaced


# -- item 10 -----------------------------------------------------------------------------------


def test_two_surrogate_code_points_arrive_as_two(pod: pypods.Pod) -> None:
    value = pod.surrogates()
    assert value == ["\ud83d\ude00", {"\ud83d": "\ude00"}]
    assert len(value[0]) == 2
    assert pod.echo(["\ud83d\ude00", "\x00\x1b\x7f\x9f"]) == ["\ud83d\ude00", "\x00\x1b\x7f\x9f"]


# -- item 7 ------------------------------------------------------------------------------------


def test_a_cycle_is_refused_both_ways_naming_where_it_closes(pod: pypods.Pod) -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    with pytest.raises(pypods.PodSerializationError, match=r"args\[0\]\[1\]: cannot send a value that contains"):
        pod.echo(loop)
    with pytest.raises(pypods.PodSerializationError, match=r"\['loop'\]\[1\]: cannot send a value that contains"):
        pod.cyclic()
    shared = [1, 2]
    value = pod.echo([shared, shared])
    assert value == [[1, 2], [1, 2]]
    assert pod.add(1, 2) == 3


# -- item 11 -----------------------------------------------------------------------------------


def test_an_enum_of_the_clients_main_is_refused_before_sending(pod: pypods.Pod) -> None:
    color = enum.Enum("Color", "RED GREEN", module="__main__")
    with pytest.raises(pypods.PodSerializationError, match=r"args\[0\]: cannot send Color: an enum defined in"):
        pod.echo(color.RED)
    assert pod.add(1, 2) == 3


# -- item 4 ------------------------------------------------------------------------------------


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


FORGERY = "\x1b]52;c;SGVsbG8=\x07\x1b[2K\rpypods: error: forged\x1b[1A\x9b31m"


@pytest.mark.parametrize("terminal", [True, False])
def test_a_pods_stderr_cannot_drive_the_terminal(
    pod: pypods.Pod, monkeypatch: pytest.MonkeyPatch, terminal: bool
) -> None:
    sink = FakeTerminal() if terminal else io.StringIO()
    monkeypatch.setattr("sys.stderr", sink)
    assert pod.shout(FORGERY + "\tend") == 1
    deadline = time.monotonic() + 10
    while "end" not in sink.getvalue() and time.monotonic() < deadline:
        time.sleep(0.02)
    line = sink.getvalue()
    if terminal:
        assert "[trusty] \\x1b]52;c;SGVsbG8=\\x07\\x1b[2K\\x0dpypods: error: forged\\x1b[1A\\x9b31m\tend\n" in line
        assert not any((ord(c) < 32 and c not in "\t\n") or 0x7F <= ord(c) < 0xA0 for c in line)
    else:  # a file or a pipe gets the pod's bytes as they were
        assert f"[trusty] {FORGERY}\tend\n" in line


RAISES = """
def missing(path):
    open(path)

def no_module():
    import no_such_module_here

def rename(a, b):
    import os
    os.rename(a, b)

def odd():
    raise PermissionError(13, "denied", "x" * 5000, object())
"""


def test_a_raised_builtin_error_keeps_the_attributes_code_tests(make_pod: PodFactory, root: Path) -> None:
    """`except FileNotFoundError as e: if e.errno == ENOENT` / `e.filename` is how code tells cases apart."""
    import errno

    make_pod("raises", RAISES)
    with pypods.load("raises", root=root, progress=False) as pod:
        with pytest.raises(FileNotFoundError) as caught:
            pod.missing("/no/such/file")
        assert caught.value.errno == errno.ENOENT
        assert caught.value.filename == "/no/such/file"
        with pytest.raises(ModuleNotFoundError) as imported:
            pod.no_module()
        assert imported.value.name == "no_such_module_here"
        again = pickle.loads(pickle.dumps(caught.value))  # multiprocessing, ProcessPoolExecutor
        assert (again.errno, again.strerror, again.filename) == (errno.ENOENT, caught.value.strerror, "/no/such/file")
        with pytest.raises(OSError) as renamed:
            pod.rename(b"/no/such/a", "/no/such/b")
        assert (renamed.value.filename, renamed.value.filename2) == (b"/no/such/a", "/no/such/b")
        with pytest.raises(PermissionError) as odd:  # a pod's own values too large or of other types are left out
            pod.odd()
        assert (odd.value.errno, odd.value.filename, odd.value.filename2) == (13, None, None)
