"""Callbacks into the client, in the worker: the plain callable a pod function receives, and the wait for its answer.

Runs inside the pod (standard library only, 3.8 syntax). Calling a ``Callback`` sends
``{"id": call, "callback": k, "args", "kwargs"}`` and reads frames until the client's
``{"id": call, "op": "return"}``; a call that arrives meanwhile (the callback calls the pod again)
runs at once, nested, so neither side waits for the other. A callback is valid only while the call
that passed it runs; after, calling it raises ``RuntimeError``.
"""

from __future__ import annotations

import builtins
from typing import Any, Dict, List

from . import messages
from .codec import Encoder
from .decoding import DecodeError
from .exttypes import MissingLibrary
from .framing import write_all
from .sharedmem import SHM_TAG


class Callback:
    """A callable of the client, passed to one call; calling it runs the original in the client."""

    __slots__ = ("call_id", "index", "live", "worker")

    def __init__(self, worker: Any, call_id: int, index: int) -> None:
        self.worker = worker
        self.call_id = call_id
        self.index = index
        self.live = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self.live:
            raise RuntimeError(
                "a pypods callback was called after the call that passed it ended: a callback is valid only "
                "during that call (keep no reference to it beyond)"
            )
        return invoke(self.worker, self.call_id, self.index, args, kwargs)

    def __repr__(self) -> str:
        return "<pypods callback %d of call %d%s>" % (self.index, self.call_id, "" if self.live else ", ended")


def invoke(worker: Any, call_id: int, index: int, args: Any, kwargs: Dict[str, Any]) -> Any:
    """Run callback *index* of call *call_id* in the client and return its result (or raise its error)."""
    try:
        data = Encoder().document({"id": call_id, "callback": index, "args": list(args), "kwargs": dict(kwargs)})
    except Exception as exc:
        raise TypeError("an argument of the callback cannot cross to the client: %s" % exc) from None
    busy, deadline = worker.busy, worker.deadline
    worker.busy = False  # a Ctrl-C while we wait for the client interrupts nothing of ours
    try:
        write_all(worker.out, data)
        reply = _wait(worker, call_id)
    finally:
        worker.busy, worker.deadline = busy, deadline
    if reply.get("ok") is True:
        return reply.get("value")
    raise _rebuilt(reply.get("error"))


def _wait(worker: Any, call_id: int) -> Dict[str, Any]:
    from .serve import _split_timeout  # serve imports this module

    while True:
        raw = worker._read_frame()
        if worker._control(raw) is not None:
            worker._take(raw)
            continue
        frame, timeout = _split_timeout(raw)
        if SHM_TAG in frame:
            worker._take_attachments()
        try:
            request: Dict[str, Any] = worker.decoder.document(frame)
        except (MissingLibrary, DecodeError) as exc:
            worker.big.discard()
            message = {"id": messages.peek_id(frame), "ok": False, "error": messages.error_info(exc, "decode")}
            worker.send(message)
            if messages.peek_id(frame) == call_id:
                return {"ok": False, "error": message["error"]}
            continue
        if request.get("op") == "return" and request.get("id") == call_id:
            return request
        if request.get("op") == "call":  # the callback called this pod again: serve it now, nested
            if timeout is not None:
                request["timeout"] = timeout
            worker.call(request)
        else:
            worker.queue.append(raw)  # anything else waits for the loop


def _rebuilt(error: Any) -> BaseException:
    """The client's exception as the nearest builtin type (as the client rebuilds a pod's errors)."""
    if not isinstance(error, dict):
        return RuntimeError("the callback failed in the client")
    text = "%s (raised by the callback in the client: %s)" % (error.get("message"), error.get("type"))
    for qualified in error.get("mro") or []:
        module, _, name = str(qualified).rpartition(".")
        cls = getattr(builtins, name, None) if module == "builtins" else None
        if isinstance(cls, type) and issubclass(cls, Exception):
            try:
                return cls(text)
            except Exception:
                continue
    return RuntimeError(text)


def bind(worker: Any, call_id: int, found: List[Any], args: List[Any], kwargs: Dict[str, Any]) -> List[Callback]:
    """Put a ``Callback`` where the client sent each of its callables; return them (ended with the call)."""
    made = []
    for where, index in found:
        callback = Callback(worker, call_id, index)
        if isinstance(where, int):
            args[where] = callback
        else:
            kwargs[where] = callback
        made.append(callback)
    return made
