"""Open a pod (folder, environment, workers) and expose its functions: ``Pod``, ``load`` and injection.

Opening a pod: check the name, create the folder from the template if missing, read ``pod.toml``,
make the environment ready (``_env.store``), then describe the pod (from the cache, or from a
worker's hello) and build one proxy per function.
"""

from __future__ import annotations

import functools
import threading
import weakref
from typing import TYPE_CHECKING, Any, NamedTuple

from ._client.connection import ProcessConnection
from ._client.pool import WorkerPool
from ._client.process import WorkerProcess
from ._env import cache, pythons, store
from ._env.layout import PodLayout, PodSettings, open_layout
from ._env.progress import BuildReport
from ._errors import PodClosedError
from ._proxy import make_proxy

if TYPE_CHECKING:
    import os
    from collections.abc import Callable, MutableMapping

    from ._env.pythons import Interpreter

_UNSET: Any = object()


class FunctionsByName:
    """A pod's functions as attributes, with an AttributeError that says what the pod offers."""

    name: str
    _functions: dict[str, Callable[..., Any]]

    @property
    def functions(self) -> dict[str, Callable[..., Any]]:
        """The pod's functions by name (proxies that run in the pod)."""
        return dict(self._functions)

    def __getattr__(self, attr: str) -> Callable[..., Any]:
        functions = self.__dict__.get("_functions")
        if functions is not None and attr in functions:
            return functions[attr]  # type: ignore[no-any-return]
        offered = ", ".join(sorted(functions or ())) or "none"
        raise AttributeError(f"pod {self.__dict__.get('name', '?')!r} has no function {attr!r} (it offers: {offered})")

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self._functions))


class Pod(FunctionsByName):
    """A loaded pod: its functions are attributes (``pod.foo(1, 2)``); close it, or use ``with``.

    Args:
        name: the pod's name, a Python identifier; its folder is ``<root>/pods/<name>/``.
        root: the project folder holding ``pods/`` (default: ``$PYPODS_ROOT``, else the current
            directory).
        create: create the pod from the template when its folder does not exist (default True).
        python, workers, timeout, env, start, idle_timeout, codec, log: override ``pod.toml``.

    Raises:
        ValueError: the name is not a valid pod name, or a setting is invalid.
        FileNotFoundError: the pod does not exist and ``create`` is False.
        PodBuildError: its environment could not be built.
        PodRemoteError: importing its ``pod.py`` raised (as the same builtin type where possible).
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
        progress: bool | None = None,
    ) -> None:
        overrides = {
            "python": python,
            "workers": workers,
            "timeout": timeout,
            "env": env,
            "start": start,
            "idle_timeout": idle_timeout,
            "codec": codec,
            "log": log,
            "backend": backend,
        }
        ready = prepare(name, root, create, overrides, progress)
        self.layout, self.settings, self.interpreter, self._env_key = ready
        self.name = name
        self._closed = False
        self._lock = threading.Lock()
        self._pool: Any
        # A valid cached description means workers need not describe the pod (nor import inspect),
        # and with start="auto" no worker is needed until the first call.
        description = cache.load(self.layout, self._env_key) if self.settings.backend == "local" else None
        if self.settings.backend == "ray":
            from ._client.raypool import RayPool

            self._pool = RayPool(self.layout, self.settings)
        else:
            spawn = functools.partial(_spawn, self.layout, self.settings, self._env_key, description is None)
            self._pool = WorkerPool(name, spawn, self.settings.workers, self.settings.idle_timeout)
        # Dropping every reference to the pod stops its workers (the pool does not refer back).
        weakref.finalize(self, self._pool.close)
        start = self.settings.start
        if description is None or start == "eager":
            self._pool.start(1 if start == "lazy" else None)
        if description is None:
            description = self._pool.description or []
        self._functions: dict[str, Callable[..., Any]] = {}
        for info in description:
            self._functions[info["name"]] = make_proxy(self, info)

    def call(self, name: str, /, *args: Any, timeout: float | None = _UNSET, **kwargs: Any) -> Any:
        """Run pod function *name* with *args* and *kwargs*; ``timeout`` (seconds) overrides the pod's.

        Raises:
            AttributeError: the pod has no such function.
            PodRemoteError: the function raised (also an instance of the builtin type, if any).
            PodSerializationError: an argument or the result cannot cross (a ``TypeError``).
            PodTimeoutError: no answer within the timeout; the worker was replaced.
            PodCrashedError: the worker died during the call.
            PodClosedError: the pod was closed.
        """
        if self._closed:
            raise PodClosedError(f"pod {self.name!r} was closed")
        if name not in self._functions:
            self.__getattr__(name)
        return self._pool.call(name, args, kwargs, self.settings.timeout if timeout is _UNSET else timeout)

    def pids(self) -> list[int]:
        """Process ids of the running workers (for tests and diagnostics)."""
        return list(self._pool.pids())

    def close(self) -> None:
        """Stop the pod's workers. Idempotent; calls afterwards raise PodClosedError."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._pool.close()

    def __enter__(self) -> Pod:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._functions)} functions"
        return f"<Pod {self.name!r} at {self.layout.pod_dir} ({state})>"


class Prepared(NamedTuple):
    layout: PodLayout
    settings: PodSettings
    interpreter: Interpreter
    env_key: str


def prepare(
    name: str,
    root: str | os.PathLike[str] | None,
    create: bool,
    overrides: dict[str, Any],
    progress: bool | None,
) -> Prepared:
    """Steps 1-4 of opening a pod: name, folder, settings, a ready environment (shared by Pod and AsyncPod)."""
    layout = open_layout(name, root, create)
    settings = PodSettings.load(layout, overrides)
    if settings.backend == "ray":  # the cluster builds the environment (runtime_env), not us
        return Prepared(layout, settings, pythons.current(), "ray")
    interpreter = store.ensure_ready(layout, settings.python, BuildReport(name, progress))
    return Prepared(layout, settings, interpreter, store.env_key(layout, interpreter))


def new_worker(layout: PodLayout, settings: PodSettings, describe: bool = True) -> WorkerProcess:
    """Start a worker process for the pod (its connection is made by the caller)."""
    return WorkerProcess(
        str(layout.venv_python),
        layout.name,
        str(layout.pod_dir),
        str(layout.root),
        env=settings.env,
        log=settings.log,
        codec=settings.codec,
        describe=describe,
    )


def _spawn(layout: PodLayout, settings: PodSettings, env_key: str, describe: bool) -> ProcessConnection:
    """Start one worker for the pod and remember its description for the next load."""
    conn = ProcessConnection(new_worker(layout, settings, describe))
    if "functions" in conn.hello:
        cache.store(layout, env_key, list(conn.hello.get("files") or []), conn.description)
    return conn


def load(name: str, **options: Any) -> Pod:
    """Open pod *name* and return it; see ``Pod`` for the options and errors."""
    return Pod(name, **options)


class Injection:
    """Names put into a namespace, and what they shadowed, so removal restores exactly that."""

    def __init__(self, namespace: MutableMapping[str, Any]) -> None:
        self.namespace = namespace
        self._saved: dict[str, Any] = {}
        self._ours: dict[str, Any] = {}

    def put(self, name: str, value: Any) -> None:
        if name not in self._ours and name in self.namespace:
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
