"""Handles to objects that live in a pod: ``PodObject`` (sync) and ``AsyncPodObject``, one class per pod class.

``pod.Model(...)`` builds the instance in one worker and returns a handle; its methods run there.
Each pod class gets a handle class of its own, built once from the pod's description, so ``help()``
and ``inspect.signature`` show the pod's methods, docs and signatures. Releasing (``close()``,
``with``, dropping the last reference) is idempotent and travels with the next call to that worker.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, ClassVar

from ._errors import PodClosedError, PodSerializationError
from ._proxy import POD_TIMEOUT, _LazyStream, signature_of

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._client.objects import ObjectRef

__all__ = ["AsyncPodObject", "PodObject", "find_handles", "handle_class"]


class PodObject:
    """A handle to an object that lives in one worker of a pod; its methods run there, on that instance.

    Made by calling a pod class (``pod.Model("weights.bin")``) or a pod function that returns an
    instance of one. Pass it to any call on the same pod and the call gets the object itself.
    ``close()`` (or ``with``, or dropping the last reference) releases it in the pod.

    Raises (on any method call):
        PodObjectLostError: the object's worker died or was killed (a crash, a call's timeout).
        PodClosedError: the pod was closed.
    """

    __slots__ = ("__weakref__", "_pod", "_ref")
    _methods: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, pod: Any, ref: ObjectRef) -> None:
        self._pod = pod
        self._ref = ref

    def __getattr__(self, attr: str) -> Any:  # a method the description did not list (an undescribed class)
        if attr.startswith("_"):
            raise AttributeError(attr)
        ref, pod = self._ref, self._pod

        def method(*args: Any, **kwargs: Any) -> Any:
            return pod._call_object(ref, attr, args, kwargs, POD_TIMEOUT)

        method.__name__ = attr
        return method

    def close(self) -> None:
        """Release the object in the pod now (idempotent; later calls on this handle raise ``PodClosedError``)."""
        ref = self._ref
        if ref.ledger.release(ref.oid):
            self._pod._flush_releases(ref)

    def __enter__(self) -> PodObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self._ref.ledger.release(self._ref.oid)  # sent ahead of the next call to that worker
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._ref.label()} in pod {self._pod._name!r}>"

    def __reduce__(self) -> Any:
        raise TypeError(
            f"{self._ref.label()} is a handle to an object in pod {self._pod._name!r}: pass it as a top-level "
            "argument of a call on that pod (not inside a list, dict or other value)"
        )

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self._methods))


class AsyncPodObject(PodObject):
    """The asyncio twin of ``PodObject``: ``await model.predict(x)``, ``async with``, ``await model.aclose()``."""

    __slots__ = ()

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("_"):
            raise AttributeError(attr)
        ref, pod = self._ref, self._pod

        async def method(*args: Any, **kwargs: Any) -> Any:
            return await pod._call_object(ref, attr, args, kwargs, POD_TIMEOUT)

        method.__name__ = attr
        return method

    def close(self) -> None:
        """Release the object; the release travels with the next call to its worker (``aclose`` sends it now)."""
        self._ref.ledger.release(self._ref.oid)

    async def aclose(self) -> None:
        """Release the object in the pod now (idempotent)."""
        ref = self._ref
        if ref.ledger.release(ref.oid):
            await self._pod._flush_releases(ref)

    async def __aenter__(self) -> AsyncPodObject:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class _Bound:
    """What ``_LazyStream`` calls for a generator method: the pod's object call, under a ``_call`` name."""

    def __init__(self, pod: Any, ref: ObjectRef) -> None:
        self._pod, self._ref = pod, ref

    async def _call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: Any) -> Any:
        return await self._pod._call_object(self._ref, name, args, kwargs, timeout)


def _method(info: dict[str, Any], asynchronous: bool) -> Callable[..., Any]:
    name = info["name"]
    function: Any
    if not asynchronous:

        def function(self: PodObject, *args: Any, **kwargs: Any) -> Any:
            return self._pod._call_object(self._ref, name, args, kwargs, POD_TIMEOUT)

    elif info.get("generator"):

        def function(self: PodObject, *args: Any, **kwargs: Any) -> Any:
            return _LazyStream(_Bound(self._pod, self._ref), name, args, kwargs, POD_TIMEOUT)  # type: ignore[arg-type]

    else:

        async def function(self: PodObject, *args: Any, **kwargs: Any) -> Any:
            return await self._pod._call_object(self._ref, name, args, kwargs, POD_TIMEOUT)

    function.__name__ = name
    function.__doc__ = info.get("doc") if isinstance(info.get("doc"), str) else None
    signature = signature_of(info)
    if signature is not None:
        own = inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)
        function.__signature__ = signature.replace(parameters=[own, *signature.parameters.values()])
    return function  # type: ignore[no-any-return]


def handle_class(pod_name: str, info: dict[str, Any] | None, cls: str, asynchronous: bool) -> type[PodObject]:
    """The handle class for pod class *cls* (described by *info*, or None when the pod did not describe it)."""
    base = AsyncPodObject if asynchronous else PodObject
    methods = info.get("methods") if info else None
    if not isinstance(methods, list):
        return base
    namespace: dict[str, Any] = {"__slots__": (), "__module__": f"pods.{pod_name}.pod", "_methods": {}}
    namespace["__doc__"] = info.get("doc") if info and isinstance(info.get("doc"), str) else base.__doc__
    reserved = set(dir(base))
    for entry in methods:
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name.isidentifier() or name.startswith("_") or name in reserved:
            continue  # the handle's own close/aclose win; reach a pod method of that name with __getattr__ never
        namespace[name] = _method(entry, asynchronous)
        namespace["_methods"][name] = entry
    return type(cls.rpartition(".")[2], (base,), namespace)


def find_handles(
    pod: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[ObjectRef | None, list[tuple[Any, int]]]:
    """Handles among a call's top-level arguments: the worker they share and where they sit.

    Raises:
        PodSerializationError: a handle of another pod, or handles of two different workers.
        PodClosedError: a handle that was closed.
    """
    found: ObjectRef | None = None
    refs: list[tuple[Any, int]] = []
    for where, value in [*enumerate(args), *kwargs.items()]:
        if not isinstance(value, PodObject):
            continue
        ref = value._ref
        if value._pod is not pod:
            raise PodSerializationError(
                f"pod {pod._name!r}: argument {where!r} is a handle to {ref.label()} of pod {value._pod._name!r}; "
                "a live object can only be passed to calls on the pod it lives in"
            )
        if ref.oid not in ref.ledger.live:
            raise PodClosedError(f"pod {pod._name!r}: argument {where!r}: {ref.label()} was closed")
        if found is not None and found.conn is not ref.conn:
            raise PodSerializationError(
                f"pod {pod._name!r}: {found.label()} and {ref.label()} live in different workers; "
                "one call can take objects of one worker only"
            )
        found = ref
        refs.append((where, ref.oid))
    return found, refs
