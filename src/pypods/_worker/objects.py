"""Live objects in the worker: the table of instances the client holds handles to, and the call names that reach them.

Runs inside the pod (standard library only, 3.8 syntax). The client never sends an object: it sends
the id the worker gave it, inside the call's ``name`` (docs/architecture.md, "Objects"):

    name    := [ "~" oid ( "," oid )* ";" ] target [ "?" ref ( "," ref )* ]
    target  := "@" oid "." method    a method of live object *oid*
             | function              a pod function or class (as without objects)
             | ""                    nothing: the call only releases, and answers None
    ref     := position ":" oid | "=" keyword ":" oid    that argument is live object *oid*
             | position "!" k | "=" keyword "!" k      that argument is the call's callback *k*

Releases ride on the next call to the same worker, so a handle garbage-collected in any thread
costs no round trip of its own.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple

from .codec import REGISTERED

# Live objects one worker holds at most; past it, making one more is an error of kind "limit".
MAX_OBJECTS = int(os.environ.get("PYPODS_MAX_OBJECTS", "") or 10000)


class ObjectTable:
    """The instances this worker handed out, by id; ids are never reused (the client checks they grow)."""

    def __init__(self, pod_dir: str, limit: int = MAX_OBJECTS) -> None:
        self.pod_dir = os.path.join(os.path.realpath(pod_dir), "")
        self.limit = limit
        self.live: Dict[int, Any] = {}
        self.next_id = 1
        self._kinds: Dict[type, bool] = {}  # type -> whether its instances stay here as objects

    def stays(self, value: Any) -> bool:
        """Whether *value* is an instance of a class of the pod's own code that cannot cross as a value."""
        kind = type(value)
        known = self._kinds.get(kind)
        if known is None:
            known = self._kinds[kind] = self._own_class(kind)
        return known

    def _own_class(self, kind: type) -> bool:
        if kind.__module__ == "builtins" or (isinstance(kind, type) and issubclass(kind, BaseException)):
            return False
        if "%s:%s" % (kind.__module__, kind.__qualname__) in REGISTERED.values():
            return False  # registered with pypods.register: it crosses as a value
        module = sys.modules.get(kind.__module__)
        path = getattr(module, "__file__", None)
        if not path:
            return False
        real = os.path.realpath(path)
        prefix = os.path.join(os.path.realpath(sys.prefix), "")
        return real.startswith(self.pod_dir) and not real.startswith(prefix)

    def add(self, value: Any) -> int:
        """Keep *value*; return its new id, or raise ObjectLimit."""
        if len(self.live) >= self.limit:
            raise ObjectLimit(
                "this worker holds %d live objects, its limit (PYPODS_MAX_OBJECTS): close some handles" % len(self.live)
            )
        oid = self.next_id
        self.next_id += 1
        self.live[oid] = value
        return oid

    def get(self, oid: int) -> Any:
        try:
            return self.live[oid]
        except KeyError:
            raise LookupError("object %d does not live in this worker (released, or never made here)" % oid) from None

    def release(self, ids: List[int]) -> None:
        for oid in ids:  # idempotent: an id released twice, or never made, is ignored
            self.live.pop(oid, None)

    def resolve(
        self, name: str, functions: Dict[str, Callable[..., Any]]
    ) -> Tuple[Optional[Callable[..., Any]], List[Tuple[Any, int]], List[Tuple[Any, int]]]:
        """Apply *name*'s releases; return its target (None: release only), its object refs and callbacks."""
        if name.startswith("~"):
            head, _, name = name.partition(";")
            self.release([int(oid) for oid in head[1:].split(",") if oid])
        target, _, refs_text = name.partition("?")
        refs: List[Tuple[Any, int]] = []
        callbacks: List[Tuple[Any, int]] = []
        for ref in refs_text.split(",") if refs_text else ():
            into = callbacks if "!" in ref else refs
            where, _, number = ref.rpartition("!" if into is callbacks else ":")
            into.append((where[1:] if where.startswith("=") else int(where), int(number)))
        if not target:
            return None, refs, callbacks
        if target.startswith("@"):
            oid_text, _, method = target[1:].partition(".")
            obj = self.get(int(oid_text))
            if not method or (method.startswith("_") and method != "__call__"):
                raise AttributeError("%r is not a public method of %s" % (method, type(obj).__name__))
            return getattr(obj, method), refs, callbacks
        function = functions.get(target)
        if function is None:
            raise AttributeError("no function %r in this pod (it offers: %s)" % (target, ", ".join(functions)))
        return function, refs, callbacks

    def substitute(self, refs: List[Tuple[Any, int]], args: List[Any], kwargs: Dict[str, Any]) -> None:
        """Put the live objects where the client sent their handles."""
        for where, oid in refs:
            if isinstance(where, int):
                args[where] = self.get(oid)
            else:
                kwargs[where] = self.get(oid)


class ObjectLimit(Exception):
    """Making one more live object would pass the worker's limit (answered as an error of kind "limit")."""


def describe_class(cls: type, describe: Callable[[str, Any], Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Describe a class's public methods (their signatures without ``self``) for handles and stubs."""
    methods: List[Dict[str, Any]] = []
    seen = set()
    for klass in cls.__mro__:
        if klass is object:
            continue
        for name, raw in vars(klass).items():
            if name in seen or name.startswith("_") or isinstance(raw, (property, type)):
                continue
            seen.add(name)
            if not callable(raw) and not isinstance(raw, (staticmethod, classmethod)):
                continue
            try:
                info = describe(name, getattr(cls, name))
            except Exception:
                info = {"name": name, "params": None}
            params = info.get("params")
            if params and not isinstance(raw, (staticmethod, classmethod)):
                info["params"] = params[1:]  # self
            methods.append(info)
    return methods
