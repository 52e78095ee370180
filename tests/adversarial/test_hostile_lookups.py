"""Round-2 attacks on the decoder's class lookup: objects in ``sys.modules`` that run code when asked.

A value's ``c`` field names ``module:QualName``; the decoder resolves it from ``sys.modules`` only.
But asking an object for its ``__dict__`` (``vars``) or its ``__class__`` (``isinstance``) runs that
object's own code: a module loaded with ``importlib.util.LazyLoader`` executes itself on its first
attribute access (an import, caused by the pod), and a proxy object runs its ``__getattribute__``.
"""

from __future__ import annotations

import enum
import importlib.util
import os
import sys
import time
import types
from typing import TYPE_CHECKING, Any, ClassVar

import pytest

import pypods
from adversarial.test_decoder import HOSTILE
from pypods._worker import sharedmem

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from conftest import PodFactory


@pytest.fixture
def hostile(make_pod: PodFactory, root: Path) -> Path:
    make_pod("hostile", HOSTILE)
    return root


@pytest.fixture
def lazy_module(tmp_path: Path) -> Iterator[Path]:
    """A module in the client's ``sys.modules`` that is loaded lazily: it runs on first attribute access."""
    marker = tmp_path / "executed"
    source = tmp_path / "pypods_lazy_victim.py"
    body = "import enum\nclass E(enum.Enum):\n    A = 1\nclass Boom(Exception):\n    pass\n"
    source.write_text(f"open({str(marker)!r}, 'w').close()\n" + body)
    spec = importlib.util.spec_from_file_location("pypods_lazy_victim", source)
    assert spec is not None
    assert spec.loader is not None
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["pypods_lazy_victim"] = module
    loader.exec_module(module)
    try:
        yield marker
    finally:
        del sys.modules["pypods_lazy_victim"]


class _Spy:
    """A module-level object that records every attribute it is asked for (a proxy runs code there)."""

    asked: ClassVar[list[str]] = []

    def __getattribute__(self, name: str) -> Any:
        _Spy.asked.append(name)
        return object.__getattribute__(self, name)


@pytest.fixture
def spy_module() -> Iterator[list[str]]:
    module = types.ModuleType("pypods_spy_victim")
    module.spy = _Spy()  # type: ignore[attr-defined]
    sys.modules["pypods_spy_victim"] = module
    _Spy.asked = []
    try:
        yield _Spy.asked
    finally:
        del sys.modules["pypods_spy_victim"]


@pytest.mark.parametrize(
    ("tag", "payload", "spec"),
    [
        ("enum", "A", "pypods_lazy_victim:E"),
        ("exc", ["x"], "pypods_lazy_victim:Boom"),
    ],
)
def test_a_lazily_loaded_module_is_not_executed(
    hostile: Path, lazy_module: Path, tag: str, payload: Any, spec: str
) -> None:
    with pypods.load("hostile", root=hostile) as pod:
        try:
            value = pod.forged_value.with_options(timeout=20)(tag, payload, {"c": spec, "m": "forged"})
        except pypods.PodProtocolError:
            pass  # an enum that does not resolve (its module never ran): a bad value
        else:
            assert type(value) is Exception  # an exception of a class that does not resolve
        assert pod.add(1, 2) == 3
    assert not lazy_module.exists(), "decoding a pod's value executed a lazily loaded module"


@pytest.mark.parametrize("spec", ["pypods_spy_victim:spy", "pypods_spy_victim:spy.E"])
@pytest.mark.parametrize("tag", ["enum", "exc"])
def test_a_module_level_object_is_never_asked_anything(
    hostile: Path, spy_module: list[str], tag: str, spec: str
) -> None:
    with pypods.load("hostile", root=hostile) as pod:
        try:
            pod.forged_value.with_options(timeout=20)(tag, "A" if tag == "enum" else ["x"], {"c": spec, "m": "m"})
        except pypods.PodProtocolError:
            pass
        assert pod.add(1, 2) == 3
    assert spy_module == [], f"decoding ran the object's own code (asked for {spy_module})"


class SpiedFlag(enum.Flag):
    """A client library's Flag with its own ``_missing_``: ``cls(value)`` calls it for a combination."""

    A = 1
    B = 2

    @classmethod
    def _missing_(cls, value: object) -> Any:
        _Spy.asked.append(f"_missing_({value!r})")
        return super()._missing_(value)


def test_a_flag_value_runs_no_method_of_the_class(hostile: Path, spy_module: list[str]) -> None:
    spec = f"{SpiedFlag.__module__}:SpiedFlag"
    assert sys.modules[SpiedFlag.__module__].SpiedFlag is SpiedFlag
    with pypods.load("hostile", root=hostile) as pod:
        with pytest.raises(pypods.PodProtocolError, match="bad value for enum"):
            pod.forged_value.with_options(timeout=20)("enum", 3, {"c": spec})
        assert pod.add(1, 2) == 3
    assert spy_module == [], f"decoding a flag value ran the class's own code ({spy_module})"


def test_a_flag_combination_of_a_plain_flag_still_crosses(hostile: Path) -> None:
    import re

    with pypods.load("hostile", root=hostile) as pod:
        value = pod.forged_value.with_options(timeout=20)("enum", int(re.I | re.M), {"c": "re:RegexFlag"})
    assert value == re.I | re.M
    assert type(value) is re.RegexFlag


# -- fast1 replies whose fields disagree -------------------------------------------------------


def test_packed_float_keys_on_a_bson_connection_are_refused(hostile: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYPODS_ENCODING", "bson")
    with pypods.load("hostile", root=hostile) as pod:
        with pytest.raises(pypods.PodProtocolError, match="fast1"):
            pod.forged_fields.with_options(timeout=20)({"value": [1.5], "k": '["a"]'})
        assert pod.add(1, 2) == 3


@pytest.mark.parametrize(
    ("text", "expected"),
    [('"\\ud800"', "\ud800"), ('{"a": 1, "a": 2}', {"a": 2}), ("[1e999999]", [float("inf")])],
)
def test_odd_but_valid_json_decodes_as_plain_data(hostile: Path, text: str, expected: Any) -> None:
    with pypods.load("hostile", root=hostile) as pod:
        assert pod.forged_fields.with_options(timeout=20)({"j": text}) == expected


# -- frames split anywhere; values that must not alias a reused buffer -------------------------


def test_frames_split_at_every_byte_boundary_come_out_whole() -> None:
    import random

    from pypods._worker import codec
    from pypods._worker.framing import FrameReader

    frames = [bytes(codec.encode({"id": i, "ok": True, "value": "x" * (i * 37 % 300)})) for i in range(1, 40)]
    stream = b"".join(frames)
    rng = random.Random(1)
    for trial in range(200):
        reader = FrameReader(-1)
        got = []
        pos = 0
        while pos < len(stream):
            step = 1 if trial == 0 else rng.choice([1, 2, 3, 5, 7, 64, 500, 4096])
            reader.feed(stream[pos : pos + step])
            pos += step
            while (frame := reader.pop()) is not None:
                got.append(frame)
        assert got == frames, f"trial {trial}"


ECHOES = """
def echo(value):
    return value
"""


def test_values_stay_intact_after_many_later_calls_from_threads(make_pod: PodFactory, root: Path) -> None:
    """Every kind of reply (BSON, JSON text, packed floats, inline and memfd bytes) is the caller's own."""
    import random
    from concurrent.futures import ThreadPoolExecutor

    make_pod("echoes", ECHOES)

    def value(rng: random.Random) -> Any:
        n = rng.randint(0, 40)
        return rng.choice(
            [
                [rng.random() for _ in range(n + 16)],  # fast1 f
                {f"k{i}": rng.random() for i in range(n + 16)},  # fast1 f + k
                [{"id": i, "s": str(rng.random())} for i in range(n)],  # fast1 j
                rng.randbytes(n * 1000),  # inline bytes
                bytearray(rng.randbytes(n)),
                rng.randbytes((1 << 20) + n),  # a memfd
                (n, str(n), [n]),  # BSON
            ]
        )

    def run(pod: pypods.Pod, seed: int) -> list[tuple[Any, Any]]:
        rng = random.Random(seed)
        kept = []
        for _ in range(40):
            sent = value(rng)
            kept.append((sent, pod.echo(sent)))
        return kept

    with pypods.load("echoes", root=root, workers=2) as pod, ThreadPoolExecutor(6) as pool:
        results = [pair for kept in pool.map(lambda seed: run(pod, seed), range(6)) for pair in kept]
        later = [pod.echo(value(random.Random(99))) for _ in range(50)]
    assert later
    for sent, got in results:
        assert type(got) is type(sent)
        assert got == sent


# -- memfd tokens used twice, and descriptors whose frame never comes --------------------------

SHM_TRICKS = """
def twice(size):
    token = 777001
    send_fd(token, sealed(b"t" * size))
    enc = _sys.modules["_pypods_worker.codec"].Encoder()
    out = bytearray(4)
    enc.value(out, b"id\\0", call_id())
    enc.value(out, b"ok\\0", True)
    inner = bytearray(4)
    for index in (b"0\\0", b"1\\0"):
        enc.ext(inner, index, "shm", [token, size], k="bytes")
    inner += b"\\0"
    inner[:4] = _struct.pack("<i", len(inner))
    out += b"\\x04value\\0" + inner + b"\\0"
    out[:4] = _struct.pack("<i", len(out))
    send(bytes(out))
    time.sleep(60)

def orphans(n, size):
    for token in range(n):
        send_fd(880000 + token, sealed(b"o" * size))
    return "sent"
"""


@pytest.fixture
def shm_pod(make_pod: PodFactory, root: Path) -> Path:
    from adversarial.test_transport import HOSTILE as SHM_HOSTILE

    if not sharedmem.supported():
        pytest.skip("no memfd / SCM_RIGHTS here")
    make_pod("shmtricks", SHM_HOSTILE + SHM_TRICKS)
    return root


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_a_memfd_token_used_twice_in_one_reply_is_refused(shm_pod: Path) -> None:
    before = _fds()
    with pypods.load("shmtricks", root=shm_pod) as pod:
        started = time.monotonic()
        with pytest.raises(pypods.PodProtocolError, match="no shared-memory buffer"):
            pod.twice.with_options(timeout=20)(1 << 20)
        assert time.monotonic() - started < 10
        assert pod.echo("next") == "next"
    assert _fds() <= before


def test_descriptors_whose_frame_never_comes_are_bounded_and_closed(shm_pod: Path) -> None:
    before = _fds()
    with pypods.load("shmtricks", root=shm_pod) as pod:
        # Fewer than the table holds: they wait (the pod paid for their pages), calls go on.
        assert pod.orphans(sharedmem.MAX_PENDING // 2, 1 << 12) == "sent"
        assert pod.echo(b"x" * (2 << 20)) == b"x" * (2 << 20)  # a real buffer still finds its own fd
        # The client drains the socket as buffers come: the flood is refused while it is sent.
        with pytest.raises(pypods.PodProtocolError, match="wait unclaimed"):
            pod.orphans(sharedmem.MAX_PENDING, 1 << 12)
        assert pod.echo("next") == "next"
    assert _fds() <= before, "the client kept descriptors of a closed pod"


# -- a pod that never takes the buffers sent to it ---------------------------------------------

DEAF = """
import sys as _sys

# This worker never reads its shared-memory socket: each call's buffer stays queued there, and the
# call fails in the worker (its token never arrives). Once the socket is full, sending would block.
_sys.modules["_pypods_worker.sharedmem"].FdChannel.receive = lambda self, inbox, most=256: True


def size(data):
    return len(data)
"""


@pytest.mark.timeout(300)
def test_a_pod_that_never_takes_its_buffers_cannot_stretch_a_deadline(make_pod: PodFactory, root: Path) -> None:
    if not sharedmem.supported():
        pytest.skip("no memfd / SCM_RIGHTS here")
    make_pod("deaf", DEAF)
    data = b"d" * (1 << 20)
    with pypods.load("deaf", root=root) as pod:
        slowest = 0.0
        for _ in range(320):  # more messages than a Unix socket queues (about 280)
            started = time.monotonic()
            try:
                pod.size.with_options(timeout=1.5)(data)
            except pypods.PodError:
                pass  # the worker could not receive the argument, or the call timed out
            slowest = max(slowest, time.monotonic() - started)
    assert slowest < 1.5 + 3, f"a call took {slowest:.1f}s against its 1.5 s timeout"


def test_json_ints_are_bounded_where_python_sets_no_digit_limit() -> None:
    from pypods._worker import fastcodec

    decode = fastcodec._json_decoder(bounded=True)  # what a client on Python 3.9.0-3.9.13 uses
    assert decode("[1, -22, 3.5]") == [1, -22, 3.5]
    assert decode("-" + "9" * fastcodec.MAX_JSON_DIGITS) == -int("9" * fastcodec.MAX_JSON_DIGITS)
    started = time.monotonic()
    with pytest.raises(ValueError, match="digits"):
        decode("[" + "9" * 2_000_000 + "]")
    assert time.monotonic() - started < 1.0


class Finalized(Exception):
    """A client library's exception whose ``__del__`` runs when an instance is collected."""

    def __del__(self) -> None:
        _Spy.asked.append("__del__")


def test_an_exception_value_never_gets_a_finalizer_to_run(hostile: Path, spy_module: list[str]) -> None:
    import gc

    spec = f"{Finalized.__module__}:Finalized"
    with pypods.load("hostile", root=hostile) as pod:
        value = pod.forged_value.with_options(timeout=20)("exc", ["x"], {"c": spec, "m": "forged"})
        assert type(value) is Exception
        assert "Finalized: forged" in str(value)
        del value
        gc.collect()
    assert spy_module == [], "a value built from a pod's reply ran the class's __del__"
