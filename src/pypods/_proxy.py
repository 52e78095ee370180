"""Build client-side stand-ins for pod functions that look like the originals to ``help()`` and ``inspect``.

Each proxy is a real Python function (so ``help()`` renders it as one) whose ``__name__``,
``__doc__`` and ``__signature__`` come from the pod's own description of the function.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable


class _Shown(str):
    """An annotation or default shown as its source text (``x: int = 3``, not ``x: 'int' = '3'``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return str(self)


class Caller(Protocol):
    """What a proxy calls: ``Pod._call`` or ``AsyncPod._call`` (every argument goes to the function)."""

    _name: str

    def _call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: Any) -> Any: ...


POD_TIMEOUT: Any = object()  # "no deadline given for this call": the pod's ``timeout`` setting applies
_UNKNOWN: Any = object()  # "signature not computed yet"


class FunctionTable(Mapping[str, "Callable[..., Any]"]):
    """A pod's functions by name: each proxy is made when asked for, and held here only weakly.

    A proxy refers to its pod (it calls ``pod._call``); if the pod held its proxies too, the two
    would form a cycle, and a pod dropped without ``close()`` would stop its workers only at the
    next cyclic garbage collection. Here the pod refers to this table, which refers to the pod and
    to the proxies only weakly: the pod lives while it or any of its proxies is referenced, and its
    finalizer runs as soon as the last of them goes. A proxy is the same object for as long as
    someone holds it; making a new one (``pod.f(...)`` when nobody holds ``pod.f``) costs about 1 µs,
    as the signature is parsed once.
    """

    def __init__(self, pod: Caller, description: list[dict[str, Any]], make: Callable[..., Any]) -> None:
        self._pod = weakref.ref(pod)
        self._make = make
        self._infos = {info["name"]: info for info in description}
        self._signatures: dict[str, inspect.Signature | None] = {}
        self._made: dict[str, weakref.ref[Callable[..., Any]]] = {}

    def get(self, name: str, default: Any = None) -> Any:  # the hot path of every ``pod.f(...)``
        ref = self._made.get(name)
        proxy = None if ref is None else ref()
        if proxy is not None:
            return proxy
        info = self._infos.get(name)
        pod = self._pod()
        if info is None or pod is None:
            return default
        signature = self._signatures.get(name, _UNKNOWN)
        if signature is _UNKNOWN:
            signature = self._signatures[name] = signature_of(info)
        proxy = self._make(pod, info, signature)
        self._made[name] = weakref.ref(proxy)
        return proxy

    def __getitem__(self, name: str) -> Callable[..., Any]:
        proxy = self.get(name)
        if proxy is None:
            raise KeyError(name)
        return proxy  # type: ignore[no-any-return]

    def __contains__(self, name: object) -> bool:
        return name in self._infos

    def info(self, name: str) -> dict[str, Any] | None:
        """The description of *name* (a function or a class), None if the pod offers none by that name."""
        return self._infos.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._infos)

    def __len__(self) -> int:
        return len(self._infos)


def signature_of(info: dict[str, Any]) -> inspect.Signature | None:
    """Rebuild ``inspect.Signature`` from a description; None if the pod could not say (or said nonsense)."""
    params = info.get("params")
    if not isinstance(params, list):
        return None
    try:
        built = []
        for entry in params:
            default: Any = inspect.Parameter.empty
            if "value" in entry:
                default = entry["value"]
            elif "default" in entry:
                default = _Shown(entry["default"])
            annotation: Any = _Shown(entry["annotation"]) if entry.get("annotation") else inspect.Parameter.empty
            kind = inspect._ParameterKind(entry["kind"])
            built.append(inspect.Parameter(entry["name"], kind, default=default, annotation=annotation))
        returns = _Shown(info["returns"]) if info.get("returns") else inspect.Signature.empty
        return inspect.Signature(built, return_annotation=returns)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def make_proxy(pod: Caller, info: dict[str, Any], signature: Any = _UNKNOWN) -> Callable[..., Any]:
    """A function that runs ``info['name']`` in the pod, dressed as the pod's function.

    Every argument, ``timeout`` included, goes to the pod function; the call's deadline is the
    pod's ``timeout`` setting, or what ``proxy.with_options(timeout=...)`` says.
    """
    name = info["name"]
    call = pod._call

    def proxy(*args: Any, **kwargs: Any) -> Any:
        return call(name, args, kwargs, POD_TIMEOUT)

    def with_options(*, timeout: float | None = None) -> Callable[..., Any]:
        """This function with per-call options: ``timeout`` in seconds (no argument: no deadline)."""

        def limited(*args: Any, **kwargs: Any) -> Any:
            return call(name, args, kwargs, timeout)

        _dress(limited, pod, info, signature)
        return limited

    _dress(proxy, pod, info, signature)
    proxy.with_options = with_options  # type: ignore[attr-defined]
    return proxy


def _dress(function: Any, pod: Caller, info: dict[str, Any], signature: Any = _UNKNOWN) -> None:
    name = info["name"]
    function.__name__ = name
    qualname, doc = info.get("qualname"), info.get("doc")
    function.__qualname__ = qualname if isinstance(qualname, str) and qualname else name
    function.__doc__ = doc if isinstance(doc, str) else None
    function.__module__ = f"pods.{pod._name}.pod"
    if signature is _UNKNOWN:
        signature = signature_of(info)
    if signature is not None:
        function.__signature__ = signature
    function.__pod__ = pod._name
    function.__wrapped_info__ = info


def make_async_proxy(pod: Caller, info: dict[str, Any], signature: Any = _UNKNOWN) -> Callable[..., Any]:
    """The async twin of ``make_proxy``: a coroutine function, or for a generator an async iterable."""
    name = info["name"]

    def build(timeout: Any) -> Callable[..., Any]:
        if info.get("generator"):

            def stream(*args: Any, **kwargs: Any) -> Any:
                return _LazyStream(pod, name, args, kwargs, timeout)

            _dress(stream, pod, info, signature)
            return stream

        async def proxy(*args: Any, **kwargs: Any) -> Any:
            return await pod._call(name, args, kwargs, timeout)

        _dress(proxy, pod, info, signature)
        return proxy

    def with_options(*, timeout: float | None = None) -> Callable[..., Any]:
        """This function with per-call options: ``timeout`` in seconds (no argument: no deadline)."""
        return build(timeout)

    function = build(POD_TIMEOUT)
    function.with_options = with_options  # type: ignore[attr-defined]
    return function


class _LazyStream:
    """``async for x in pod.gen(3)``: the call is sent on the first ``__anext__`` (or by ``await``).

    Leaving the loop early (``break``) drops this object, and with it the stream, which cancels the
    generator in the pod.
    """

    def __init__(self, pod: Caller, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: Any) -> None:
        self._pod, self._name, self._args, self._kwargs, self._timeout = pod, name, args, kwargs, timeout
        self._stream: Any = None

    async def _open(self) -> Any:
        if self._stream is None:
            self._stream = await self._pod._call(self._name, self._args, self._kwargs, self._timeout)
        return self._stream

    def __await__(self) -> Any:
        return self._open().__await__()

    def __aiter__(self) -> _LazyStream:
        return self

    async def __anext__(self) -> Any:
        stream = await self._open()
        return await stream.__anext__()

    async def aclose(self) -> None:
        if self._stream is not None:
            await self._stream.aclose()
