"""The Ray backend: a pod's workers are Ray actors whose ``runtime_env`` is built from the pod.

The pod's code (its folder without ``venv/`` and ``.pypods/``) travels with the actor's constructor
and is written to a temporary project on the worker node, so ``pods.<name>.pod`` and the pod's own
modules import as they do locally (Ray uploads local ``working_dir`` folders only for a whole job,
not per actor); its locked (or listed)
requirements become the ``pip`` field, index options its ``pip_install_options``, and ``pod.toml``'s
``env`` its ``env_vars``. Ray is imported only here, and only when a pod asks for this backend.
Ray layers the pip packages over the cluster's base environment, so isolation from the client's
packages is weaker than with a local pod.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from typing import TYPE_CHECKING, Any

from .._env.builders import requirement_lines
from .._errors import PodBuildError, PodClosedError, PodCrashedError, PodTimeoutError
from .base import Stream, error_from_reply

if TYPE_CHECKING:
    from collections.abc import Iterator

    from .._env.layout import PodLayout, PodSettings


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ImportError("the Ray backend needs Ray: pip install 'pypods[ray]'") from exc
    return ray


class PodActor:
    """Runs inside a Ray worker: imports the pod from the staged working_dir and serves calls."""

    def __init__(self, pod_name: str, files: dict[str, bytes]) -> None:
        import importlib

        from .._worker.serve import exported

        project = tempfile.mkdtemp(prefix=f"pypods-ray-{pod_name}-")
        self.pod_dir = os.path.join(project, "pods", pod_name)
        for relative, data in files.items():
            target = os.path.join(self.pod_dir, relative)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as handle:
                handle.write(data)
        sys.path.insert(0, project)
        self.error: dict[str, Any] | None = None
        self.functions: dict[str, Any] = {}
        try:
            self.functions = exported(importlib.import_module(f"pods.{pod_name}.pod"), self.pod_dir)
        except Exception as exc:  # reported by describe(), like a local worker's hello
            from .._worker.messages import error_info

            self.error = error_info(exc, "import")

    def describe(self) -> dict[str, Any]:
        from .._worker.messages import describe

        if self.error is not None:
            return {"error": self.error}
        return {"functions": [describe(name, fn) for name, fn in self.functions.items()], "pid": os.getpid()}

    def call(self, name: str, args: Any, kwargs: Any) -> tuple[str, Any]:
        from .._worker.messages import error_info

        function = self.functions.get(name)
        try:
            if function is None:
                raise AttributeError(f"pod has no function {name!r}")
            return ("ok", function(*args, **kwargs))
        except Exception as exc:
            return ("error", error_info(exc, "remote"))

    def stream(self, name: str, args: Any, kwargs: Any) -> Iterator[tuple[str, Any]]:
        from .._worker.messages import error_info

        try:
            for item in self.functions[name](*args, **kwargs):
                yield ("item", item)
        except Exception as exc:
            yield ("error", error_info(exc, "remote"))

    def pid(self) -> int:
        return os.getpid()


def runtime_env(layout: PodLayout, settings: PodSettings) -> dict[str, Any]:
    """The Ray ``runtime_env`` of a pod: staged code, its requirements and its environment variables."""
    source = layout.lock if layout.lock.exists() else layout.requirements
    lines = requirement_lines(source.read_text(encoding="utf-8")) if source.exists() else []
    packages, options = [], []
    for line in lines:
        if not line.startswith("-"):
            packages.append(line)
            continue
        flag, _, value = line.replace("=", " ", 1).partition(" ")
        value = value.strip()
        if flag in ("--find-links", "-f") and value and "://" not in value and not os.path.isabs(value):
            value = str((layout.pod_dir / value).resolve())
        options += [flag, value] if value else [flag]
    env: dict[str, Any] = {"env_vars": dict(settings.env)}
    if packages:
        env["pip"] = {"packages": packages, "pip_check": False}
        if options:
            env["pip"]["pip_install_options"] = options
    return env


def pod_files(layout: PodLayout) -> dict[str, bytes]:
    """The pod's own files (not its venv, state or caches), by path relative to its folder."""
    files = {}
    for path in sorted(layout.pod_dir.rglob("*")):
        relative = path.relative_to(layout.pod_dir)
        if path.is_file() and not {"venv", ".pypods", "__pycache__"} & set(relative.parts):
            files[str(relative)] = path.read_bytes()
    return files


class RayPool:
    """``workers`` Ray actors for one pod: least-busy dispatch, dead actors replaced, timeouts enforced."""

    def __init__(self, layout: PodLayout, settings: PodSettings) -> None:
        self.pod = layout.name
        self.ray = _ray()
        if not self.ray.is_initialized():
            address = settings.address or os.environ.get("RAY_ADDRESS")
            self.ray.init(address=address, include_dashboard=False, ignore_reinit_error=True)
        if settings.python is not None:
            cluster = ".".join(map(str, sys.version_info[:2]))
            if settings.python.strip() not in (cluster, sys.executable) and not settings.python.startswith(
                cluster + "."
            ):
                raise PodBuildError(
                    f"pod {self.pod!r}: backend 'ray' runs pods on the cluster's Python ({cluster}); "
                    f"python = {settings.python!r} cannot be honoured. Remove it or use the local backend."
                )
        self._env = runtime_env(layout, settings)
        self._files = self.ray.put(pod_files(layout))
        self._actor_class = self.ray.remote(PodActor)
        self._lock = threading.Lock()
        self._closed: str | None = None
        self._actors: list[Any] = [None] * settings.workers
        self._busy = [0] * settings.workers
        self.description: list[dict[str, Any]] | None = None

    @property
    def size(self) -> int:
        return len(self._actors)

    def _spawn(self) -> Any:
        actor = self._actor_class.options(runtime_env=self._env, max_concurrency=1).remote(self.pod, self._files)
        try:
            info = self.ray.get(actor.describe.remote())
        except Exception as exc:
            self.ray.kill(actor)
            raise PodBuildError(f"pod {self.pod!r}: the Ray actor could not start: {exc}") from exc
        if "error" in info:
            self.ray.kill(actor)
            raise error_from_reply(self.pod, None, info["error"])
        if self.description is None:
            self.description = info["functions"]
        return actor

    def start(self, count: int | None = None) -> None:
        with self._lock:
            for index in range(count if count is not None else len(self._actors)):
                if self._actors[index] is None:
                    self._actors[index] = self._spawn()

    def pids(self) -> list[int]:
        return [self.ray.get(actor.pid.remote()) for actor in self._actors if actor is not None]

    def _pick(self) -> int:
        with self._lock:
            if self._closed is not None:
                raise PodClosedError(self._closed)
            index = min(range(len(self._actors)), key=lambda i: (self._busy[i], self._actors[i] is None))
            if self._actors[index] is None:
                self._actors[index] = self._spawn()
            self._busy[index] += 1
            return index

    def _replace(self, index: int, actor: Any) -> None:
        with self._lock:
            if self._actors[index] is actor:
                self._actors[index] = None
        try:
            self.ray.kill(actor)
        except Exception:
            pass

    def call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None) -> Any:
        index = self._pick()
        actor = self._actors[index]
        generator = any(info["name"] == name and info.get("generator") for info in self.description or [])
        try:
            if generator:
                refs = actor.stream.options(num_returns="streaming").remote(name, list(args), kwargs)
                return RayStream(self, refs, name, timeout)
            kind, value = self._get(actor.call.remote(name, list(args), kwargs), timeout, index, actor, name)
        finally:
            self._busy[index] -= 1
        if kind == "ok":
            return value
        raise error_from_reply(self.pod, name, value)

    def _get(self, ref: Any, timeout: float | None, index: int, actor: Any, name: str) -> Any:
        exceptions = self.ray.exceptions
        try:
            return self.ray.get(ref, timeout=timeout)
        except exceptions.GetTimeoutError:
            self._replace(index, actor)
            raise PodTimeoutError(
                f"pod {self.pod!r}, function {name!r}: no answer within {timeout}s; the actor was killed"
            ) from None
        except exceptions.RayActorError as exc:
            self._replace(index, actor)
            raise PodCrashedError(f"pod {self.pod!r}: its Ray actor died during {name!r}: {exc}") from exc

    def in_flight(self) -> int:
        return sum(self._busy)

    def close(self) -> None:
        with self._lock:
            self._closed = f"pod {self.pod!r} was closed"
            actors, self._actors = self._actors, [None] * len(self._actors)
        for actor in actors:
            if actor is not None:
                try:
                    self.ray.kill(actor)
                except Exception:
                    pass


class RayStream(Stream):
    """A pod generator on Ray (a streaming generator): items as the actor yields them."""

    def __init__(self, pool: RayPool, refs: Any, name: str, timeout: float | None) -> None:
        self._pool, self._refs, self._name, self._timeout = pool, refs, name, timeout
        self._done = False

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        try:
            ref = next(self._refs)
            kind, value = self._pool.ray.get(ref, timeout=self._timeout)
        except StopIteration:
            self._done = True
            raise
        except self._pool.ray.exceptions.RayActorError as exc:
            self._done = True
            raise PodCrashedError(f"pod {self._pool.pod!r}: its Ray actor died during {self._name!r}") from exc
        if kind == "error":
            self._done = True
            raise error_from_reply(self._pool.pod, self._name, value)
        return value

    def close(self) -> None:
        if not self._done:
            self._done = True
            try:
                self._pool.ray.cancel(self._refs)
            except Exception:
                pass
