"""Open what serves a pod: prepare its folder, settings and environment, and pick its backend's pool.

``prepare`` is steps 1-4 of opening a pod (shared by ``Pod`` and ``AsyncPod``); ``open_pool`` makes
the one ``WorkerPool`` over the backend's connections, after ``check_backend_options`` refused any
setting that backend would not honour.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import weakref
from typing import TYPE_CHECKING, Any, NamedTuple

from ._client.connection import DEFAULT_START_TIMEOUT, ProcessConnection
from ._client.debugrelay import at_terminal
from ._client.pool import AsyncWorkerPool, WorkerPool
from ._client.process import WorkerProcess
from ._client.templates import Template, TemplateSource
from ._env import cache, pythons, store
from ._env.layout import PodLayout, PodSettings, open_layout
from ._env.progress import BuildReport
from ._errors import PodConfigError

if TYPE_CHECKING:
    import os
    from collections.abc import Callable

    from ._client.brake import CrashBrake
    from ._env.pythons import Interpreter

# Options of load()/Pod()/aload() that pod.toml may also set (None means "not given").
SETTING_OPTIONS = (
    "python", "workers", "timeout", "env", "start", "idle_timeout", "codec", "log", "backend", "start_timeout",
    "memory", "template", "debug",
)  # fmt: skip
# Settings each backend honours; any other one set to a non-default value is refused at load.
BACKEND_OPTIONS = {"local": frozenset(f.name for f in dataclasses.fields(PodSettings)) - {"address"}}


class Prepared(NamedTuple):
    layout: PodLayout
    settings: PodSettings
    interpreter: Interpreter
    env_key: str


def prepare(
    name: str,
    root: str | os.PathLike[str] | None,
    create: bool,
    options: dict[str, Any],
    progress: bool | None,
) -> Prepared:
    """Steps 1-4 of opening a pod: name, folder, settings, a ready environment (shared by Pod and AsyncPod)."""
    unknown = sorted(set(options) - set(SETTING_OPTIONS))
    if unknown:
        raise TypeError(f"unexpected option(s) {', '.join(unknown)}; known: root, create, progress, reload, "
                        + ", ".join(SETTING_OPTIONS))  # fmt: skip
    layout = open_layout(name, root, create)
    settings = PodSettings.load(layout, options)
    check_backend_options(settings)
    if settings.backend == "ray":  # the cluster builds the environment (runtime_env), not us
        return Prepared(layout, settings, pythons.current(), "ray")
    interpreter = store.ensure_ready(layout, settings.python, BuildReport(name, progress))
    return Prepared(layout, settings, interpreter, store.env_key(layout, interpreter))


def check_backend_options(settings: PodSettings) -> None:
    """Refuse, naming the option and the backend, every setting the pod's backend would not honour."""
    supported = BACKEND_OPTIONS.get(settings.backend)
    if supported is None and settings.backend == "ray":
        from ._client import raypool

        supported = getattr(raypool, "OPTIONS", None)
    if supported is None:
        return
    defaults = PodSettings()
    for field in dataclasses.fields(PodSettings):
        value = getattr(settings, field.name)
        if field.name not in supported and field.name != "backend" and value != getattr(defaults, field.name):
            raise PodConfigError(
                f"pod setting {field.name!r} (= {value!r}) is not supported by the {settings.backend!r} backend"
            )


def open_pool(layout: PodLayout, settings: PodSettings, env_key: str, describe: bool, brake: CrashBrake) -> WorkerPool:
    """The pool for the pod's backend: one ``WorkerPool`` over that backend's connections, under the
    pod's crash *brake* (one per pod: a reload's pool keeps counting where the last one stopped)."""
    if settings.backend == "ray":
        from ._client import raypool

        ray_spawn = raypool.open_ray(layout, settings)
        return WorkerPool(layout.name, ray_spawn, settings.workers, settings.idle_timeout, brake)

    if not settings.template:

        def spawn() -> ProcessConnection:
            return spawn_process(layout, settings, env_key, describe)

        return WorkerPool(layout.name, spawn, settings.workers, settings.idle_timeout, brake)
    source = open_template(layout, settings)

    def fork() -> ProcessConnection:
        return spawn_process(layout, settings, env_key, describe, source)

    return TemplatedPool(source, layout.name, fork, settings.workers, settings.idle_timeout, brake)


class TemplatedPool(WorkerPool):
    """A pool whose workers are forks of its own template, which ends with the pool (a reload's pool has its own)."""

    def __init__(self, source: TemplateSource, *args: Any) -> None:
        super().__init__(*args)
        self.template = source
        weakref.finalize(self, source.close)  # also when the pool is dropped unclosed

    def close(self) -> None:
        super().close()
        self.template.close()

    def drain(self, then: Callable[[], None] | None = None) -> None:
        def ended() -> None:
            self.template.close()
            if then is not None:
                then()

        super().drain(ended)


class TemplatedAsyncPool(AsyncWorkerPool):
    """The asyncio twin of ``TemplatedPool``."""

    def __init__(self, source: TemplateSource, *args: Any) -> None:
        super().__init__(*args)
        self.template = source
        weakref.finalize(self, source.close)

    async def aclose(self, cancel: bool = True, retired: bool = False) -> None:
        await super().aclose(cancel, retired)
        await asyncio.to_thread(self.template.close)

    def abandon(self) -> None:
        super().abandon()
        self.template.close()


def open_template(layout: PodLayout, settings: PodSettings) -> TemplateSource:
    """The pool's template (made at the first worker's start) that forks its workers (``templates.py``)."""

    def make() -> Template:
        layout.recheck()  # as for every worker start (docs/security.md)
        return Template(
            str(layout.venv_python),
            layout.name,
            str(layout.pod_dir),
            str(layout.root),
            settings.env,
            settings.log,
            start_deadline(settings),
        )

    make.pod_name = layout.name  # type: ignore[attr-defined]
    return TemplateSource(make)


def start_deadline(settings: PodSettings) -> float:
    """Seconds a worker may take to start: ``start_timeout``, else the default (60 s)."""
    return settings.start_timeout if settings.start_timeout is not None else DEFAULT_START_TIMEOUT


def new_worker(
    layout: PodLayout, settings: PodSettings, describe: bool = True, source: TemplateSource | None = None
) -> WorkerProcess:
    """Start a worker process for the pod (its connection is made by the caller): a fork of the
    pod's template where *source* gives one, else a fresh interpreter.

    Raises:
        PodError: the pod's folder, under a root pypods found, is no longer the user's own.
    """
    layout.recheck()  # the folders may have been swapped since the load (docs/security.md)
    debug = at_terminal() if settings.debug is None else settings.debug
    if source is not None:
        forked = source.fork(settings.codec, describe, settings.log, settings.memory, debug)
        if forked is not None:
            return forked
    return WorkerProcess(
        str(layout.venv_python),
        layout.name,
        str(layout.pod_dir),
        str(layout.root),
        env=settings.env,
        log=settings.log,
        codec=settings.codec,
        describe=describe,
        memory=settings.memory,
        debug=debug,
    )


def remember(layout: PodLayout, env_key: str, hello: dict[str, Any], description: list[dict[str, Any]]) -> None:
    """Cache a fresh description for the next load (when the worker described the pod)."""
    if "functions" in hello:
        cache.store(layout, env_key, [f for f in hello.get("files") or [] if isinstance(f, str)], description)


def spawn_process(
    layout: PodLayout, settings: PodSettings, env_key: str, describe: bool, source: TemplateSource | None = None
) -> ProcessConnection:
    """Start one worker for the pod under the start deadline; a failed start leaves nothing running."""
    conn = ProcessConnection(new_worker(layout, settings, describe, source), start_deadline(settings))
    remember(layout, env_key, conn.hello, conn.description)
    logging.getLogger("pypods").info(
        "pod %r: worker %r started (%s)",
        layout.name,
        conn.hello.get("pid"),
        layout.venv_python,  # the pod's pid
    )
    return conn
