"""Live objects without a subprocess: the client's checks of object replies, the worker's table and call names."""

from __future__ import annotations

from typing import Any

import pytest

import pypods
from pypods._client.core import CallProtocol, error_from_reply
from pypods._client.objects import ObjectLedger, ObjectRef, with_refs
from pypods._worker.objects import ObjectLimit, ObjectTable


def reply(oid: Any, cls: Any = "Model") -> dict[str, Any]:
    return {"id": 1, "ok": True, "value": None, "object": oid, "class": cls}


def test_an_object_reply_becomes_a_ref() -> None:
    proto = CallProtocol("p")
    ref = proto.outcome("Model", reply(1)).value
    assert type(ref) is ObjectRef
    assert (ref.oid, ref.cls) == (1, "Model")
    assert ref.oid in proto.objects.live


@pytest.mark.parametrize(
    "forged",
    [reply(1), reply(0), reply(-5), reply("2"), reply(2.0), reply(True), reply(None), reply(3, 7), reply(3, "a;b")],
)
def test_forged_object_ids_are_protocol_errors(forged: dict[str, Any]) -> None:
    proto = CallProtocol("p")
    proto.outcome("Model", reply(1))
    with pytest.raises(pypods.PodProtocolError, match="object"):
        proto.outcome("Model", forged)


def test_ids_may_arrive_out_of_order_but_only_once_and_near() -> None:
    ledger = ObjectLedger()  # callers decode their own replies: a later id may be seen first
    assert ledger.created(3) is None
    assert ledger.created(1) is None
    assert ledger.created(2) is None
    assert ledger.created(2) is not None
    assert ledger.created(10**9) is not None  # would make a billion gaps
    assert ledger.created(4) is None


def test_a_released_id_cannot_come_back() -> None:
    proto = CallProtocol("p")
    proto.outcome("Model", reply(4))
    assert proto.objects.release(4)
    assert not proto.objects.release(4)  # idempotent
    with pytest.raises(pypods.PodProtocolError):
        proto.outcome("Model", reply(4))


def test_releases_ride_on_the_next_call() -> None:
    ledger = ObjectLedger()
    for oid in (1, 2, 3):
        ledger.created(oid)
    ledger.release(1)
    ledger.release(3)
    assert ledger.prefix() == "~1,3;"
    assert ledger.prefix() == ""


def test_the_worker_limit_is_a_typed_error() -> None:
    error = error_from_reply("p", "Model", {"kind": "limit", "type": "ObjectLimit", "message": "too many"})
    assert isinstance(error, pypods.PodObjectLimitError)
    table = ObjectTable("/nonexistent", limit=2)
    table.add(object())
    table.add(object())
    with pytest.raises(ObjectLimit):
        table.add(object())
    table.release([1, 1, 99])  # idempotent, unknown ids ignored
    assert table.add(object()) == 3  # ids are never reused


def test_call_names_reach_methods_functions_and_refs() -> None:
    class Model:
        def predict(self, x: int) -> int:
            return x

    def use(model: Any, other: Any = None) -> Any:
        return model

    table = ObjectTable("/nonexistent")
    first, second = Model(), Model()
    table.add(first)
    table.add(second)
    target, refs, _ = table.resolve("@1.predict", {})
    assert target == first.predict
    name, args, kwargs = with_refs("use", (second,), {"other": first}, [(0, 2), ("other", 1)])
    assert (name, args, kwargs) == ("use?0:2,=other:1", (None,), {"other": None})
    target, refs, _ = table.resolve("~1;" + name, {"use": use})
    assert target is use
    arguments: list[Any] = list(args)
    with pytest.raises(LookupError, match="object 1"):  # released by the same name's prefix
        table.substitute(refs, arguments, kwargs)
    assert table.resolve("~2;", {}) == (None, [], [])
    with pytest.raises(LookupError):
        table.resolve("@2.predict", {})
    table.add(first)
    for private in ("@3._secret", "@3.__class__", "@3."):
        with pytest.raises(AttributeError):
            table.resolve(private, {})
