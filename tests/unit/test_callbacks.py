"""Callbacks without a subprocess: which arguments cross as callbacks, and forged callback frames."""

from __future__ import annotations

import functools
from typing import Any

import pytest

import pypods
from pypods._client.callbacks import answer, take_callbacks
from pypods._client.core import CallProtocol, Outcome
from pypods._worker.decoding import Decoder


def progress(step: int) -> None:
    pass


def test_callables_are_named_in_the_call_and_sent_as_null() -> None:
    partial = functools.partial(progress, 1)
    name, args, kwargs, found = take_callbacks("train@x?0:3", (0, progress), {"done": partial, "n": 2})
    assert name == "train@x?0:3,1!0,=done!1"
    assert args == (0, None)
    assert kwargs == {"done": None, "n": 2}
    assert found == [progress, partial]
    assert take_callbacks("f", (1, "x"), {})[3] == []


def callback(call_id: int, index: Any, args: Any = (), kwargs: Any = None) -> dict[str, Any]:
    return {"id": call_id, "callback": index, "args": list(args), "kwargs": kwargs or {}}


def test_the_pod_may_invoke_only_the_callbacks_of_a_call_in_flight() -> None:
    proto = CallProtocol("p")
    proto.encode_call(1, "train", (progress,), {})
    outcome = proto.outcome("train", callback(1, 0, [5]))
    assert outcome.kind == Outcome.CALLBACK
    assert outcome.value == (progress, [5], {})
    for forged in (callback(1, 1), callback(1, -1), callback(1, "0"), callback(1, True), callback(2, 0)):
        with pytest.raises(pypods.PodProtocolError, match="callback"):
            proto.outcome("train", forged)
    for malformed in ({"id": 1, "callback": 0, "args": "x"}, {"id": 1, "callback": 0, "kwargs": {"a": 1, 2: 3}}):
        with pytest.raises(pypods.PodProtocolError):
            proto.outcome("train", malformed)
    proto.ended(1)
    with pytest.raises(pypods.PodProtocolError, match="did not pass"):  # after the call: never
        proto.outcome("train", callback(1, 0))


def test_answers_carry_the_value_or_the_error() -> None:
    ok = Decoder().document(bytes(answer(3, True, [1, 2])))
    assert ok == {"id": 3, "op": "return", "ok": True, "value": [1, 2]}
    failed = Decoder().document(bytes(answer(3, False, error=KeyError("k"))))
    assert failed["ok"] is False
    assert "builtins.KeyError" in failed["error"]["mro"]
    unsendable = Decoder().document(bytes(answer(3, True, object())))
    assert unsendable["error"]["type"] == "TypeError"


@pytest.mark.parametrize(
    "forged",
    [
        {"callback": 0, "args": [], "kwargs": {}},  # the call passed no callback
        {"ok": True, "value": None, "object": 0, "class": "Model"},  # not a fresh id
        {"ok": True, "value": None, "object": 1, "class": "Model; rm"},  # not a class name
    ],
)
def test_forged_object_and_callback_frames_break_the_connection(forged: dict[str, Any]) -> None:
    from pypods._worker.codec import Encoder

    from .fakeworker import pool

    workers = pool()
    try:
        assert workers.call("add", (1, 1), {}, 5) == 2
        conn = workers.spawned[-1]  # type: ignore[attr-defined]
        frame = bytes(Encoder().document({"id": 2, **forged}))  # the pod answers its own call (id 2) with it
        with pytest.raises(pypods.PodProtocolError):
            workers.call("forge", (frame,), {}, 5)
        assert conn.broken is not None
        assert workers.call("add", (3, 3), {}, 5) == 6  # a fresh worker
    finally:
        workers.close()
