"""Callbacks into the caller, without I/O: which arguments cross as callbacks, and the frames that answer them.

A function, bound method, lambda or ``functools.partial`` passed as a top-level argument is sent as
null and named in the call's name (``?1!0``: argument 1 is callback 0; the grammar is in
``_worker/objects.py``). While the call is in flight the worker may send ``{"id": call, "callback":
k, "args": [...], "kwargs": {...}}``; the shell runs callback *k* where the call was made and sends
``{"id": call, "op": "return", "ok": true, "value": v}`` (or ``"ok": false, "error": {...}``) back.
Only the callbacks of that call, by index, can be invoked: anything else is a ``PodProtocolError``.
"""

from __future__ import annotations

import functools
import types
from typing import Any

from .._worker import messages
from .._worker.codec import Encoder

CALLABLES = (
    types.FunctionType,
    types.MethodType,
    types.BuiltinFunctionType,
    types.MethodWrapperType,
    functools.partial,
)


def take_callbacks(
    name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[str, tuple[Any, ...], dict[str, Any], list[Any]]:
    """Replace top-level callables by None and name them in *name*; return them too (empty: none)."""
    found: list[Any] = []
    parts: list[str] = []
    positional: list[Any] | None = None
    keywords: dict[str, Any] | None = None
    for index, value in enumerate(args):
        if isinstance(value, CALLABLES):
            if positional is None:
                positional = list(args)
            positional[index] = None
            parts.append(f"{index}!{len(found)}")
            found.append(value)
    for key, value in kwargs.items():
        if isinstance(value, CALLABLES):
            if keywords is None:
                keywords = dict(kwargs)
            keywords[key] = None
            parts.append(f"={key}!{len(found)}")
            found.append(value)
    if not found:
        return name, args, kwargs, found
    joined = ("," if "?" in name else "?") + ",".join(parts)
    return (
        name + joined,
        tuple(positional) if positional is not None else args,
        keywords if keywords is not None else kwargs,
        found,
    )


def answer(call_id: int, ok: bool, value: Any = None, error: BaseException | None = None) -> bytearray:
    """The ``return`` frame for a callback's result (or its exception, as the pod will raise it)."""
    if ok:
        try:
            return Encoder().document({"id": call_id, "op": "return", "ok": True, "value": value})
        except Exception as exc:  # the result cannot cross: the pod gets a TypeError
            error = TypeError(f"the callback's result cannot cross to the pod: {exc}")
    assert error is not None
    info = messages.error_info(error, "remote")
    return Encoder().document({"id": call_id, "op": "return", "ok": False, "error": info})


def run(call_id: int, invoked: tuple[Any, list[Any], dict[str, Any]]) -> bytearray:
    """Run a callback here (the thread that made the call) and return the frame that answers it."""
    function, args, kwargs = invoked
    try:
        return answer(call_id, True, function(*args, **kwargs))
    except Exception as exc:  # goes back to the pod, raised there as its builtin type
        return answer(call_id, False, error=exc)


async def arun(call_id: int, invoked: tuple[Any, list[Any], dict[str, Any]]) -> bytearray:
    """``run`` on the event loop that made the call; a coroutine function's result is awaited."""
    function, args, kwargs = invoked
    try:
        value = function(*args, **kwargs)
        if hasattr(value, "__await__"):
            value = await value
        return answer(call_id, True, value)
    except Exception as exc:
        return answer(call_id, False, error=exc)
