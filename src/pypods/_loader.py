"""Open a pod (folder, environment, workers) and expose its functions: ``Pod``, ``load`` and injection.

Opening a pod: check the name, create the folder from the template if missing, read ``pod.toml``,
make the environment ready (``_env.store``), then describe the pod (from the cache, or from a
worker's hello) and build one proxy per function. ``PodBase`` holds all of it; ``Pod`` and
``AsyncPod`` (``_aloader.py``) add only their pool and whether calls are awaited.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import keyword
import logging
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

from ._backends import Prepared, open_pool, prepare
from ._client import forking
from ._client.brake import CrashBrake
from ._client.objects import ObjectRef, with_refs
from ._client.pool import PoolRetired, WorkerPool
from ._env import cache
from ._errors import PodClosedError, PodError, PodSerializationError
from ._objects import PodObject, find_handles, handle_class
from ._proxy import POD_TIMEOUT, FunctionTable, make_proxy
from ._reload import SourceWatch, interactive

if TYPE_CHECKING:
    import os
    from collections.abc import Callable, Iterable, Mapping, MutableMapping

    from ._env.layout import PodLayout, PodSettings
    from ._env.pythons import Interpreter

_UNSET = POD_TIMEOUT
log = logging.getLogger("pypods")


def offered(name: Any) -> bool:
    """Whether a described function name may become a proxy: an identifier, not a dunder name."""
    return isinstance(name, str) and name.isidentifier() and not (name.startswith("__") and name.endswith("__"))


class PodBase:
    """What ``Pod`` and ``AsyncPod`` share: settings, functions as attributes, reload, closing state.

    A pod function's name wins over the pod's own attributes: with a function ``close`` in the pod,
    ``pod.close`` is that function, and the pod's own operation stays reachable as ``Pod.close(pod)``
    (or ``with pod:``). The same holds for ``name``, ``settings``, ``call``, ``functions``, ``pids``,
    ``layout`` and ``interpreter``.
    """

    _name: str
    _functions: Mapping[str, Callable[..., Any]]
    _asynchronous = False  # AsyncPod: handles are AsyncPodObject

    def _handle(self, ref: ObjectRef) -> PodObject:
        """A handle for the object *ref* names; its class is built once per pod class."""
        classes = self.__dict__.setdefault("_handle_classes", {})
        cls = classes.get(ref.cls)
        if cls is None:
            info_of = getattr(self._functions, "info", None)
            info = info_of(ref.cls) or info_of(ref.cls.rpartition(".")[2]) if info_of is not None else None
            cls = classes[ref.cls] = handle_class(self._name, info, ref.cls, self._asynchronous)
        handle: PodObject = cls(self, ref)
        return handle

    def _wrapped(self, result: Any) -> Any:
        return result if type(result) is not ObjectRef else self._handle(result)

    def _object_call(
        self, ref: ObjectRef, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
        """The wire name and arguments of a method call on *ref* (docs/architecture.md, "Objects")."""
        if self._closed:
            raise PodClosedError(f"pod {self._name!r} was closed")
        if ref.oid not in ref.ledger.live:
            raise PodClosedError(f"pod {self._name!r}: {ref.label()} was closed")
        name = f"@{ref.oid}.{method}"
        if args or kwargs:
            other, refs = find_handles(self, args, kwargs)
            if other is not None and other.conn is not ref.conn:
                raise PodSerializationError(
                    f"pod {self._name!r}: {other.label()} lives in another worker than {ref.label()}"
                )
            name, args, kwargs = with_refs(name, args, kwargs, refs)
        return name, args, kwargs

    def _setup(self, ready: Prepared, reload: bool | None) -> None:
        self._layout, self._settings, self._interpreter, self._env_key = ready
        self._name = self._layout.name
        self._closed = False
        self._functions = {}
        self._listeners: list[Callable[[], None]] = []
        self._brake = CrashBrake(self._name)  # one per pod: every pool a reload opens shares it
        self._reload_due = False  # the source changed; the reload waits for the brake's backoff
        self._describe_due = False  # a reload's worker was still starting when its call's deadline passed
        self._watch = SourceWatch(self._layout.pod_dir) if (interactive() if reload is None else reload) else None

    def __getattribute__(self, attr: str) -> Any:
        if attr[:1] != "_":
            function = object.__getattribute__(self, "_functions").get(attr)
            if function is not None:
                return function
        return object.__getattribute__(self, attr)

    def __getattr__(self, attr: str) -> Any:
        functions = self.__dict__.get("_functions")
        if functions is not None and attr in functions:
            return functions[attr]
        names = ", ".join(sorted(functions or ())) or "none"
        raise AttributeError(f"pod {self.__dict__.get('_name', '?')!r} has no function {attr!r} (it offers: {names})")

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self._functions))

    @property
    def name(self) -> str:
        """The pod's name (``Pod.name.fget(pod)`` if the pod has a function called ``name``)."""
        return self._name

    @property
    def settings(self) -> PodSettings:
        """The settings in effect: defaults, then ``pod.toml``, then the load's arguments."""
        return self._settings

    @property
    def layout(self) -> PodLayout:
        """Where the pod lives on disk."""
        return self._layout

    @property
    def interpreter(self) -> Interpreter:
        """The pod's Python interpreter."""
        return self._interpreter

    @property
    def functions(self) -> dict[str, Callable[..., Any]]:
        """The pod's functions by name (proxies that run in the pod)."""
        return dict(self._functions)

    def _set_functions(self, description: list[dict[str, Any]], make: Callable[..., Any]) -> None:
        # Proxies held weakly (``FunctionTable``): no pod <-> proxy cycle keeps a dropped pod's workers.
        self._functions = FunctionTable(self, [info for info in description if offered(info.get("name"))], make)
        for listener in self._listeners:
            listener()

    def _on_reload(self, listener: Callable[[], None]) -> None:
        """Call *listener* after every reload (``PodLoader`` re-injects the new functions)."""
        self._listeners.append(listener)

    def _check_call(self, name: str) -> None:
        if self._closed:
            raise PodClosedError(f"pod {self._name!r} was closed")
        if name not in self._functions:
            self.__getattr__(name)

    def _timeout(self, timeout: float | None) -> float | None:
        return self._settings.timeout if timeout is _UNSET else timeout

    @staticmethod
    def _deadline(timeout: float | None) -> float | None:
        """The call's one absolute deadline (``time.monotonic()``), computed once where the user called."""
        return None if timeout is None else time.monotonic() + timeout

    def _reload_wanted(self) -> bool:
        if self._watch is None or self._closed:
            return False
        if self._watch.changed():
            self._reload_due = True
        return self._reload_due

    def _count_reload(self) -> None:
        """A reload is a strike of the crash brake (a pod that edits its own source before crashing
        trips it too); while the brake backs off, the reload waits and the call gets PodCrashLoopError."""
        self._brake.reloaded()
        self._reload_due = False
        self._describe_due = True

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._functions)} functions"
        return f"<{type(self).__name__} {self._name!r} at {self._layout.pod_dir} ({state})>"


class Pod(PodBase):
    """A loaded pod: its functions are attributes (``pod.foo(1, 2)``); close it, or use ``with``.

    Args:
        name: the pod's name, a Python identifier; its folder is ``<root>/pods/<name>/``.
        root: the project folder holding ``pods/`` (default: ``$PYPODS_ROOT``, else the current
            directory).
        create: create the pod from the template when its folder does not exist (default True).
        python, workers, timeout, env, start, idle_timeout, codec, log, backend, start_timeout:
            override ``pod.toml``. ``timeout`` is every call's deadline in seconds (a pod function's
            own ``timeout`` parameter is passed to it untouched; set a call's deadline with
            ``pod.call(name, ..., timeout=)`` or ``pod.f.with_options(timeout=)``); ``start_timeout``
            bounds a worker's start (default 60 s).
        memory: the most memory one worker (with every process it started) may use, in bytes or as
            a size such as ``"2GB"``; a worker past it is killed and the call raises
            ``PodCrashedError`` saying so (docs/heavy-pods.md). Linux only; elsewhere ``PodConfigError``.
        template: import ``pod.py`` once in a template process and fork every worker from it
            (default False; docs/heavy-pods.md says when it is safe and why it is off by default).
        debug: ``breakpoint()`` or ``pdb.set_trace()`` in a pod function gives a pdb prompt at your
            terminal (default: on when stdin and stdout are terminals); False: only a notice.
        reload: serve the next call from the new code after ``pod.py`` or a module of the pod's
            folder changed (default: on in interactive sessions, off otherwise).

    Raises:
        ValueError: the name is not a valid pod name, a setting is invalid, or the backend does not
            support a setting (the message names both).
        FileNotFoundError: the pod does not exist and ``create`` is False.
        PodBuildError: its environment could not be built.
        PodRemoteError: importing its ``pod.py`` raised (as the same builtin type where possible).
        PodTimeoutError: its worker did not start within ``start_timeout``.
    """

    def __init__(
        self,
        name: str,
        *,
        root: str | os.PathLike[str] | None = None,
        create: bool = True,
        python: str | None = None,
        workers: int | None = None,
        timeout: float | None = None,
        env: dict[str, str] | None = None,
        start: str | None = None,
        idle_timeout: float | None = None,
        codec: str | None = None,
        log: str | None = None,
        backend: str | None = None,
        start_timeout: float | None = None,
        memory: int | str | None = None,
        template: bool | None = None,
        debug: bool | None = None,
        progress: bool | None = None,
        reload: bool | None = None,
    ) -> None:
        options = {
            "python": python,
            "workers": workers,
            "timeout": timeout,
            "env": env,
            "start": start,
            "idle_timeout": idle_timeout,
            "codec": codec,
            "log": log,
            "backend": backend,
            "start_timeout": start_timeout,
            "memory": memory,
            "template": template,
            "debug": debug,
        }
        self._functions = {}
        self._setup(prepare(name, root, create, options, progress), reload)
        self._lock = threading.Lock()  # one reload at a time
        self._close_lock = threading.Lock()
        forking.track(self)
        self._holder: list[WorkerPool] = []  # the current pool first, then draining ones
        # Dropping every reference to the pod stops its workers (the pool does not refer back).
        weakref.finalize(self, _close_held, self._holder)
        try:
            description = self._open(describe=False)
        except BaseException:
            _close_held(self._holder)  # a failed start leaves no worker running
            raise
        self._set_functions(description, make_proxy)

    def _forget_after_fork(self) -> None:
        """In a forked child (``_client/forking.py``): a parent's thread may have held a lock."""
        self._lock = threading.Lock()
        self._close_lock = threading.Lock()

    def _open(self, describe: bool, deadline: float | None = None) -> list[dict[str, Any]]:
        """Open a pool (the old one, if any, drains); return the description to build proxies from."""
        settings = self._settings
        description = None
        if settings.backend == "local" and not describe:
            # A valid cached description means workers need not describe the pod (nor import inspect),
            # and with start="auto" no worker is needed until the first call.
            description = cache.load(self._layout, self._env_key)
        pool = open_pool(self._layout, settings, self._env_key, description is None, self._brake)
        old = self._holder[:]
        self._holder[:] = [pool, *old]  # the current pool first; old ones stay held until closed
        if self._closed:  # closed while this pool was being made: close() may have missed it
            _close_held(self._holder)
            raise PodClosedError(f"pod {self._name!r} was closed")
        for stale in old[:1]:
            # Calls it still runs were the user's, made before the edit: they finish on the old code
            # rather than fail with PodClosedError (which means "you closed the pod"); new calls
            # it is picked for go to this pool (PoolRetired). Pod.close closes it at once.
            stale.drain(then=functools.partial(_forget, self._holder, stale))
        if description is None or settings.start == "eager":
            pool.start(1 if settings.start == "lazy" else None, deadline)
        return description if description is not None else (pool.description or [])

    @property
    def _pool(self) -> WorkerPool:
        return self._holder[0]

    def call(self, name: str, /, *args: Any, timeout: float | None = _UNSET, **kwargs: Any) -> Any:
        """Run pod function *name* with *args* and *kwargs*; ``timeout`` (seconds) is this call's deadline.

        The deadline is absolute, computed once here: it bounds every wait of the call (a reload, a
        worker's start, encoding and sending, a resend to a fresh worker, the reply).

        Raises:
            AttributeError: the pod has no such function.
            PodRemoteError: the function raised (also an instance of the builtin type, if any).
            PodSerializationError: an argument or the result cannot cross (a ``TypeError``).
            PodTimeoutError: no answer within the timeout; the worker was replaced (or, if it was still
                starting, its start goes on for the next calls).
            PodCrashedError: the worker died during the call.
            PodCrashLoopError: the workers kept crashing (or reloading); the pod backs off before it
                tries a fresh worker again.
            PodClosedError: the pod was closed (only ever after your own close).
        """
        return self._call(name, args, kwargs, timeout)

    def _call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None) -> Any:
        """The one entry of every call (proxies, ``call``): deadline apart, arguments go to the function."""
        timeout = self._timeout(timeout)
        deadline = self._deadline(timeout)
        if self._reload_wanted():
            self._reload(deadline)
        if self._describe_due:
            self._describe(deadline)
        self._check_call(name)
        if args or kwargs:  # handles among the arguments: the call goes to their worker
            ref, refs = find_handles(self, args, kwargs)
            if ref is not None:
                wire, args, kwargs = with_refs(name, args, kwargs, refs)
                return self._wrapped(ref.pool.call_on(ref, wire, args, kwargs, timeout, deadline))
        while True:
            try:
                result = self._pool.call(name, args, kwargs, timeout, deadline)
            except PoolRetired:
                continue  # picked just as a reload replaced it: the current pool takes the call
            return result if type(result) is not ObjectRef else self._handle(result)

    def _call_object(
        self, ref: ObjectRef, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None
    ) -> Any:
        """Run *method* of live object *ref* in its worker (``PodObject`` methods come here)."""
        timeout = self._timeout(timeout)
        deadline = self._deadline(timeout)
        name, args, kwargs = self._object_call(ref, method, args, kwargs)
        return self._wrapped(ref.pool.call_on(ref, name, args, kwargs, timeout, deadline))

    def _flush_releases(self, ref: ObjectRef) -> None:
        """Tell *ref*'s worker now about the releases waiting for it (a handle's ``close()``)."""
        if self._closed or ref.conn is None or ref.conn.broken is not None:
            return  # its worker is gone, and the object with it
        try:
            ref.pool.call_on(ref, "", (), {}, self._timeout(_UNSET))
        except PodError:
            pass  # the worker ended meanwhile: nothing left to release

    def _reload(self, deadline: float | None) -> None:
        """The pod's code changed: restart its workers, describe it again, refresh the proxies."""
        wait = -1 if deadline is None else max(deadline - time.monotonic(), 0.0)
        if not self._lock.acquire(timeout=wait):
            return  # another thread reloads: this call goes to the current pool, under its deadline
        try:
            if self._closed or not self._reload_due:
                return  # a closed pod starts no worker; another thread just reloaded
            self._count_reload()
            log.info("pod %r changed: reloading it", self._name)
            self._set_functions(self._open(describe=True, deadline=deadline), make_proxy)
            self._describe_due = False
        finally:
            self._lock.release()

    def _describe(self, deadline: float | None) -> None:
        """Finish a reload whose call's deadline passed while its worker started: wait for it, describe."""
        pool = self._pool
        pool.start(1, deadline)
        self._set_functions(pool.description or [], make_proxy)
        self._describe_due = False

    def pids(self) -> list[int]:
        """Process ids of the running workers (for tests and diagnostics)."""
        return list(self._pool.pids())

    def close(self) -> None:
        """Stop the pod's workers. Idempotent; calls afterwards raise PodClosedError.

        Never waits for a reload under way (that holds ``_lock`` while a worker starts): the pool it
        opens is already held, so it is closed here too, and its start fails with PodClosedError.
        """
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        _close_held(self._holder)

    def __enter__(self) -> Pod:
        return self

    def __exit__(self, *exc: object) -> None:
        Pod.close(self)


def _close_held(holder: list[WorkerPool]) -> None:
    for pool in list(holder):
        pool.close()


def _forget(holder: list[WorkerPool], pool: WorkerPool) -> None:
    """A drained pool closed itself: hold it no longer."""
    with contextlib.suppress(ValueError):
        holder.remove(pool)


def load(name: str, **options: Any) -> Pod:
    """Open pod *name* and return it; see ``Pod`` for the options and errors."""
    return Pod(name, **options)


class Injection:
    """Names put into a namespace, and what they shadowed, so removal restores exactly that.

    Only identifiers that are not keywords nor dunder names are injected. A name of a builtin
    (``len``, ``open``, ``print`` ...) is skipped with a warning unless it is in *shadow_builtins*:
    injected into a module's globals it would capture every later use of that builtin there,
    arguments included. Shadowing another existing name is allowed (the original design's
    behaviour) but logged as a warning.
    """

    def __init__(self, namespace: MutableMapping[str, Any], shadow_builtins: Iterable[str] = ()) -> None:
        self.namespace = namespace
        self.shadow_builtins = frozenset(shadow_builtins)
        self._saved: dict[str, Any] = {}
        self._ours: dict[str, Any] = {}

    def put(self, name: str, value: Any) -> None:
        if not offered(name) or keyword.iskeyword(name):
            log.warning("pypods: not injecting %r: not a plain Python identifier", name)
            return
        if hasattr(builtins, name) and name not in self.shadow_builtins:
            log.warning(
                "pypods: not injecting %r: it would shadow the builtin %r in this namespace; reach it as "
                "pod.%s, or allow it with PodLoader(..., shadow_builtins={%r})",
                name,
                name,
                name,
                name,
            )
            return
        if name not in self._ours and name in self.namespace:
            log.warning("pypods: injected %r shadows an existing name (restored on unload)", name)
            self._saved[name] = self.namespace[name]
        self.namespace[name] = value
        self._ours[name] = value

    def remove(self) -> None:
        for name, value in self._ours.items():
            if self.namespace.get(name) is not value:
                continue  # the user rebound it since: leave theirs alone
            if name in self._saved:
                self.namespace[name] = self._saved[name]
            else:
                del self.namespace[name]
        self._ours.clear()
        self._saved.clear()

    @property
    def names(self) -> list[str]:
        return list(self._ours)
