"""The Ray backend: each worker of a pod is a Ray actor (``RayConnection``), served by the one pool.

A ``RayConnection`` is one actor created with the pod's ``runtime_env`` (its requirements as ``pip``,
``pod.toml``'s ``env`` as ``env_vars``; see ``rayship``) and given the pod's code files, which it
stages in a temporary project (Ray uploads local ``working_dir`` folders only for a whole job, not
per actor). Calls and replies cross as ``bytes`` encoded with our codec, so the client never
unpickles anything a pod produced. Ray is imported only here, and only for ``backend="ray"``.
Ray layers the pip packages over the cluster's base environment, so isolation from the client's
packages is weaker than with a local pod.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from .._errors import (
    PodBuildError,
    PodClosedError,
    PodCrashedError,
    PodError,
    PodProtocolError,
    PodSerializationError,
    PodTimeoutError,
)
from .._worker import messages
from .._worker.codec import Encoder
from .._worker.decoding import Decoder
from . import rayactor, rayobjects, rayship
from .base import Stream, check_hello, error_from_reply
from .pool import WorkerPool

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._env.layout import PodLayout, PodSettings

BACKEND = "ray"
START_TIMEOUT = 300.0  # a first start may build the pod's pip environment on the node
STREAM_WINDOW = 64  # items an actor's generator may run ahead of the consumer (as a local worker's)


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ImportError("the Ray backend needs Ray: pip install 'pypods[ray]'") from exc
    return ray


def refuse(pod: str, option: str, value: Any, why: str) -> PodBuildError:
    """The error for an option the Ray backend cannot honour, naming the option and the backend."""
    return PodBuildError(f"pod {pod!r}: option {option}={value!r} is not supported by backend {BACKEND!r}: {why}")


def check_options(pod: str, settings: PodSettings) -> None:
    """Refuse, at load, every option the Ray backend would otherwise ignore.

    Honoured: ``workers``, ``timeout``, ``start``, ``idle_timeout`` (the pool), ``start_timeout``
    (the actor's hello), ``env`` (``env_vars``), ``codec`` (replies are encoded in the actor),
    ``address``, and ``python`` when it names the cluster's Python.

    Raises:
        PodBuildError: ``python`` names another Python than the cluster's, or ``log="logging"``.
    """
    cluster = ".".join(map(str, sys.version_info[:2]))
    python = settings.python
    if python is not None and python.strip() not in (cluster, sys.executable) and not python.startswith(cluster + "."):
        raise refuse(
            pod, "python", python, f"pods run on the cluster's Python ({cluster}); remove it or use backend 'local'"
        )
    if settings.log != "stderr":
        raise refuse(
            pod, "log", settings.log, "an actor's output goes to Ray's logs (and the driver's console), not to pypods"
        )


class RayConnection:
    """One Ray actor serving one pod: calls, streams, deadlines, and the errors of a local worker.

    Raises (from the constructor):
        PodBuildError: the actor or its runtime_env could not be created.
        PodTimeoutError: the actor did not answer its hello within *start_timeout* seconds.
        PodRemoteError: importing the pod's ``pod.py`` failed in the actor.
    """

    def __init__(self, ray: Any, actor_class: Any, layout: PodLayout, settings: PodSettings, start_timeout: float):
        self.pod = layout.name
        self.ray = ray
        self.codec = settings.codec
        self._lock = threading.Lock()
        self._in_flight = 0
        self._ids = itertools.count(1)
        self.broken: PodError | None = None
        self.hello: dict[str, Any] = {}
        files = rayship.pod_files(layout)
        self.actor = actor_class.options(
            runtime_env=rayship.runtime_env(layout, settings), scheduling_strategy="SPREAD", max_restarts=0
        ).remote(self.pod, files, settings.codec)
        try:
            self.hello = self._decode(self._get(self.actor.hello.remote(), start_timeout, "(start)"))
            self.description = check_hello(self.pod, self.hello)
        except BaseException as exc:
            self.close(kill=True)
            if isinstance(exc, PodCrashedError):
                raise PodBuildError(f"pod {self.pod!r}: its Ray actor could not start: {exc}") from exc
            raise
        self.pid: int = int(self.hello.get("pid") or 0)
        self._generators = {info["name"] for info in self.description if info.get("generator")}

    def in_flight(self) -> int:
        return self._in_flight

    @property
    def worker(self) -> RayConnection:  # what WorkerPool asks of a connection (until the one pool lands)
        return self

    def alive(self) -> bool:
        return self.broken is None

    def call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None) -> Any:
        """Run *name* on the actor: its value, or a ``RayStream`` for a generator function.

        Raises:
            PodRemoteError: the function raised.
            PodSerializationError: an argument or the result cannot cross.
            PodTimeoutError: no answer within *timeout*; the actor was killed.
            PodCrashedError: the actor died (or was already dead).
            PodProtocolError: the actor sent something that is not a message of ours.
        """
        if self.broken is not None:
            raise PodCrashedError(f"pod {self.pod!r}: its Ray actor is gone: {self.broken}")
        request = self._encode(name, args, kwargs)
        if name in self._generators:
            refs = self.actor.stream.options(
                num_returns="streaming",
                concurrency_group="streams",
                _generator_backpressure_num_objects=STREAM_WINDOW,
            ).remote(request)
            return RayStream(self, refs, name, timeout)
        with self._lock:
            self._in_flight += 1
        try:
            reply = self._decode(self._get(self.actor.call.remote(request), timeout, name))
        finally:
            with self._lock:
                self._in_flight -= 1
        if reply.get("ok"):
            return reply_value(reply, "value")
        raise error_from_reply(self.pod, name, reply.get("error"))

    def _encode(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
        call_id = next(self._ids)
        try:
            if self.codec != "pickle":
                return bytes(Encoder().request(call_id, name, args, kwargs))
            packed = messages.pack_pickle((args, kwargs))
            return bytes(Encoder().document({"id": call_id, "op": "call", "name": name, **packed}))
        except Exception as exc:
            raise PodSerializationError(f"pod {self.pod!r}, function {name!r}: {exc}") from exc

    def _get(self, ref: Any, timeout: float | None, what: str) -> Any:
        """Wait for one reply object; map Ray's failures to ours (the one place that does)."""
        errors = self.ray.exceptions
        try:
            return rayobjects.read_raw(self.ray, ref, timeout)
        except rayobjects.UnsafeObject as exc:
            self._break(PodProtocolError(str(exc)))
            raise PodProtocolError(f"pod {self.pod!r}: its Ray actor sent {exc}") from None
        except errors.GetTimeoutError:
            self._break(PodTimeoutError(f"pod {self.pod!r}, function {what!r}: no answer within {timeout}s"))
            raise PodTimeoutError(
                f"pod {self.pod!r}, function {what!r}: no answer within {timeout}s; its Ray actor was killed"
            ) from None
        except errors.RuntimeEnvSetupError as exc:
            self._break(PodBuildError(str(exc)))
            raise PodBuildError(f"pod {self.pod!r}: Ray could not build its runtime_env: {exc}") from exc
        except (errors.RayActorError, errors.RayError) as exc:  # died, unreachable, cancelled, lost
            self._break(PodCrashedError(str(exc)))
            raise PodCrashedError(f"pod {self.pod!r}: its Ray actor died during {what!r}: {exc}") from exc
        except KeyboardInterrupt:
            try:
                self.ray.cancel(ref)
            except Exception:
                pass
            raise

    def _decode(self, data: Any) -> dict[str, Any]:
        """One reply message; anything else the actor sent breaks the connection (PodProtocolError)."""
        try:
            if not isinstance(data, bytes):
                raise TypeError(f"a reply must be bytes, not {type(data).__name__}")
            return Decoder().document(data)
        except Exception as exc:
            self._break(PodProtocolError(str(exc)))
            raise PodProtocolError(f"pod {self.pod!r}: its Ray actor sent a malformed reply: {exc}") from exc

    def _break(self, reason: PodError) -> None:
        """Mark the connection broken and kill the actor (the pool replaces it)."""
        if self.broken is None:
            self.broken = reason
        try:
            self.ray.kill(self.actor, no_restart=True)
        except Exception:
            pass

    def close(self, kill: bool = False) -> None:
        """Stop the actor: gracefully (it removes its staged code and exits) unless *kill*. Never blocks."""
        if self.broken is None:
            self.broken = PodClosedError(f"pod {self.pod!r} was closed")
        try:
            if kill:
                self.ray.kill(self.actor, no_restart=True)
            else:
                self.actor.exit.remote()
        except Exception:
            pass


def reply_value(reply: dict[str, Any], key: str) -> Any:
    """The value a reply carries (unpickled only for a pod the client's code loaded with codec="pickle")."""
    if "p" in reply:
        return messages.unpack_pickle(reply)
    return reply.get(key)


class RayStream(Stream):
    """A pod generator on Ray (a streaming generator): its items as the actor yields them."""

    def __init__(self, conn: RayConnection, refs: Any, name: str, timeout: float | None) -> None:
        self._conn, self._refs, self._name, self._timeout = conn, refs, name, timeout
        self._done = False
        with conn._lock:
            conn._in_flight += 1

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        try:
            reply = self._conn._decode(self._conn._get(self._next_ref(), self._timeout, self._name))
        except BaseException:
            self._finish()
            raise
        if "yield" in reply:
            return reply_value(reply, "yield")
        self._finish()
        if reply.get("end"):
            raise StopIteration
        raise error_from_reply(self._conn.pod, self._name, reply.get("error"))

    def _next_ref(self) -> Any:
        """The next item's reference, waiting at most the call's timeout for the actor to yield it."""
        began = time.monotonic()
        try:
            ref = self._refs._next_sync(timeout_s=self._timeout)
        except StopIteration:
            raise PodProtocolError(f"pod {self._conn.pod!r}: its Ray actor ended {self._name!r} without a word")
        if ref.is_nil():
            raise self._conn.ray.exceptions.GetTimeoutError(f"{time.monotonic() - began:.1f}s")
        return ref

    def _finish(self) -> None:
        if not self._done:
            self._done = True
            with self._conn._lock:
                self._conn._in_flight -= 1

    def close(self) -> None:
        """Stop the generator in the actor (Ray cancels it; its ``finally`` runs there)."""
        if self._done:
            return
        self._finish()
        try:
            self._conn.ray.cancel(self._refs)
        except Exception:
            pass


def open_ray(layout: PodLayout, settings: PodSettings) -> Callable[[], RayConnection]:
    """Check the options, join the cluster and return the spawn factory of the pod's actors.

    Raises:
        PodBuildError: an option the Ray backend cannot honour (see ``check_options``).
        ImportError: Ray is not installed.
    """
    check_options(layout.name, settings)
    rayship.pod_files(layout)  # refuse a pod that ships too much at load, not at its first call
    ray = _ray()
    if not ray.is_initialized():
        address = settings.address or os.environ.get("RAY_ADDRESS")
        ray.init(address=address, include_dashboard=False, ignore_reinit_error=True)
    actor_class = ray.remote(concurrency_groups=rayactor.CONCURRENCY_GROUPS)(rayactor.PodActor)
    start_timeout = getattr(settings, "start_timeout", None) or START_TIMEOUT

    def spawn() -> RayConnection:
        return RayConnection(ray, actor_class, layout, settings, start_timeout)

    return spawn


class RayPool(WorkerPool):
    """The pod's actors in the local worker pool (crash brake, idle stop), until the one pool lands."""

    def __init__(self, layout: PodLayout, settings: PodSettings) -> None:
        super().__init__(layout.name, open_ray(layout, settings), settings.workers, settings.idle_timeout)  # type: ignore[arg-type]
