"""The Ray backend: each worker of a pod is a Ray actor (``RayConnection``) in the one ``WorkerPool``.

A ``RayConnection`` is one actor created with the pod's ``runtime_env`` (its requirements through
Ray's ``uv`` field, ``pod.toml``'s ``env`` as ``env_vars``; see ``rayship``) and given the pod's code
files, which it stages in a temporary project (Ray uploads local ``working_dir`` folders only for a
whole job, not per actor). It speaks the local worker's protocol through the same core
(``CallProtocol``: the encodings of the hello, the class registry, ``encode_call``, ``decode``, the
reply's outcome), over Ray calls instead of a pipe and with every buffer in band (an actor may run
on another machine). Replies are read only as raw bytes (``rayobjects``), so the client never
unpickles anything a pod produced. Whether a call streams is what its first reply says, as for a
local worker: a ``stream`` reply starts a Ray streaming generator over the one the call returned.
The pool gives Ray pods what it gives local ones: least-busy pick, replacement, the crash brake,
``idle_timeout``. Ray is imported only here, and only for ``backend="ray"``.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from .._errors import (
    PodBuildError,
    PodClosedError,
    PodConfigError,
    PodCrashedError,
    PodError,
    PodProtocolError,
)
from . import rayactor, rayobjects, rayship
from .base import Stream
from .connection import NotSentError
from .core import START, CallProtocol, Outcome, check_hello

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._env.layout import PodLayout, PodSettings

BACKEND = "ray"
START_TIMEOUT = 120.0  # without a start_timeout: a first start may build the pod's environment on the node
# The settings this backend honours (the loader refuses any other one set to a non-default value,
# naming it and the backend): the pool's (workers, timeout, start, idle_timeout), start_timeout (the
# actor's hello), env (env_vars), codec (encoded in the actor), address, and python when it names
# the cluster's Python (checked in open_ray). Not ``log``: an actor's output goes to Ray's logs.
OPTIONS = frozenset(
    {"python", "workers", "timeout", "env", "start", "idle_timeout", "codec", "backend", "address", "start_timeout"}
) | {"ship"}  # the data files that go with the code (rayship.py)


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ImportError("the Ray backend needs Ray: pip install 'pypods[ray]'") from exc
    return ray


def check_python(pod: str, python: str | None) -> None:
    """Refuse a ``python`` other than the cluster's (the one this client runs: Ray needs them equal).

    Raises:
        PodConfigError: *python* names another version or interpreter.
    """
    cluster = ".".join(map(str, sys.version_info[:2]))
    if python is None or python.strip() in (cluster, sys.executable) or python.startswith(cluster + "."):
        return
    raise PodConfigError(
        f"pod {pod!r}: option python={python!r} is not supported by backend {BACKEND!r}: pods run on the "
        f"cluster's Python ({cluster}); remove it or use backend 'local'"
    )


class RayConnection:
    """One Ray actor serving one pod: calls, streams, deadlines, and the errors of a local worker.

    Raises (from the constructor):
        PodBuildError: the actor or its runtime_env could not be created.
        PodTimeoutError: the actor did not say hello within *start_timeout* seconds (it was killed).
        PodRemoteError: importing the pod's ``pod.py`` failed in the actor.
    """

    def __init__(self, ray: Any, actor_class: Any, layout: PodLayout, settings: PodSettings) -> None:
        self.pod = layout.name
        self.ray = ray
        self.proto = CallProtocol(self.pod, settings.codec)  # no inbox: every buffer in band
        self._lock = threading.Lock()
        # Held while a ``register`` message is on its way: a call that needs the classes waits for it
        # (Ray runs a threaded actor's calls in no guaranteed order, so the message must land first).
        self._setup_lock = threading.Lock()
        self._in_flight = 0
        self._broken: PodError | None = None
        self.hello: dict[str, Any] = {}
        self.description: list[dict[str, Any]] = []
        self.actor = actor_class.options(
            runtime_env=rayship.runtime_env(layout, settings), scheduling_strategy="SPREAD", max_restarts=0
        ).remote(self.pod, rayship.pod_files(layout), settings.codec)
        try:
            start_timeout: float | None = getattr(settings, "start_timeout", None)  # None: Ray's own default
            start_timeout = start_timeout or START_TIMEOUT
            self.hello = self._decode(self._get(self.actor.hello.remote(), start_timeout, START))
            self.description = check_hello(self.pod, self.hello)
            encoding = self.proto.choose_encoding(self.hello)  # fast2 unless the codec or PYPODS_ENCODING say not
            if encoding is not None:
                self._setup(encoding, start_timeout, START)
        except PodCrashedError as exc:
            self.close(kill=True)
            raise PodBuildError(f"pod {self.pod!r}: its Ray actor could not start: {exc}") from exc
        except BaseException:
            self.close(kill=True)
            raise

    @property
    def pid(self) -> int:
        pid = self.hello.get("pid")
        return pid if type(pid) is int else 0

    @property
    def broken(self) -> PodError | None:
        return self._broken

    def in_flight(self) -> int:
        return self._in_flight

    def _count(self, step: int) -> None:
        with self._lock:
            self._in_flight += step

    def call(
        self,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        deadline: float | None = None,
    ) -> Any:
        """Run *name* on the actor by *deadline* (else *timeout* from now): its value, or a ``RayStream``.

        Raises:
            PodRemoteError: the function raised.
            PodSerializationError: an argument or the result cannot cross.
            PodTimeoutError: no answer within *timeout*; the actor was killed.
            PodCrashedError: the actor died.
            PodProtocolError: the actor sent something that is not a message of ours.
            PodClosedError: the pod was closed meanwhile.
        """
        if self._broken is not None:
            raise NotSentError(f"pod {self.pod!r}: its Ray actor is gone: {self._broken}")
        call_id = self.proto.next_id()
        frame, attachments = self.proto.encode_call(call_id, name, args, kwargs)  # PodSerializationError
        if attachments:  # cannot happen without an inbox; a shared-memory token would reach nobody
            raise self._protocol_error("an out-of-band buffer on a connection without shared memory")
        if deadline is not None:  # what is left of the caller's deadline (a timeout names that rest)
            timeout = max(deadline - time.monotonic(), 0.0)
        self._count(1)
        try:
            timeout = self._send_registry(name, timeout)
            reply = self._decode(self._get(self.actor.call.remote(bytes(frame)), timeout, name))
            outcome = self._meaning(self.proto.outcome, name, reply)
            if outcome.kind == Outcome.STREAM:  # the function returned a generator: read its items
                refs = self.actor.stream.options(
                    num_returns="streaming", concurrency_group="streams", _generator_backpressure_num_objects=64
                ).remote(call_id)
                return RayStream(self, refs, name, timeout)
        finally:
            self._count(-1)
        return outcome.value

    def _send_registry(self, name: str, timeout: float | None) -> float | None:
        """Send classes registered since the last call and wait until the actor has them; the time left."""
        with self._setup_lock:  # uncontended but for the rare call that sends classes
            frame = self.proto.registry_frame()
            if frame is None:
                return timeout
            began = time.monotonic()
            self._setup(frame, timeout, name)
        return None if timeout is None else max(timeout - (time.monotonic() - began), 0.0)

    def _setup(self, frame: bytearray, timeout: float | None, what: str) -> None:
        """Send an ``encoding`` or ``register`` message and wait for the actor's answer."""
        reply = self._decode(self._get(self.actor.setup.remote(bytes(frame)), timeout, what))
        self._meaning(self.proto.outcome, what, reply)

    def _get(self, ref: Any, timeout: float | None, what: str) -> bytes:
        """Wait for one reply object (see ``_wait``)."""
        return self._wait(lambda: rayobjects.read_raw(self.ray, ref, timeout), timeout, what, ref)

    def _wait(self, read: Callable[[], bytes], timeout: float | None, what: str, cancel: Any) -> bytes:
        """Run *read*; map Ray's failures to ours (the one place that does). Ctrl-C cancels *cancel*."""
        errors = self.ray.exceptions
        try:
            return read()
        except rayobjects.UnsafeObject as exc:
            raise self._protocol_error(exc) from None
        except errors.GetTimeoutError:
            error = self.proto.timeout_error(what, timeout)
            self._break(error)
            raise error from None
        except errors.RuntimeEnvSetupError as exc:
            self._break(PodBuildError(str(exc)))
            raise PodBuildError(f"pod {self.pod!r}: Ray could not build its runtime_env: {exc}") from exc
        except errors.RayError as exc:  # the actor died, its node died, the object was lost
            if isinstance(self._broken, PodClosedError):
                raise PodClosedError(str(self._broken)) from exc
            crashed = PodCrashedError(f"pod {self.pod!r}: its Ray actor died during {what!r}: {exc}")
            self._break(crashed)
            raise crashed from exc
        except KeyboardInterrupt:
            try:
                self.ray.cancel(cancel)
            except Exception:
                pass
            raise

    def _decode(self, data: bytes) -> dict[str, Any]:
        """One message, through the core's decoder (no inbox: an actor has no shared memory with us)."""
        try:
            return self.proto.decode(data)
        except PodProtocolError as exc:
            self._break(exc)
            raise

    def _meaning(self, read: Callable[[str, dict[str, Any]], Outcome], name: str, reply: dict[str, Any]) -> Outcome:
        """What the core makes of a reply; a malformed one breaks this connection too."""
        try:
            return read(name, reply)
        except PodProtocolError as exc:
            self._break(exc)
            raise

    def _protocol_error(self, cause: object) -> PodProtocolError:
        error = self.proto.protocol_error(cause)
        self._break(error)
        return error

    def _break(self, reason: PodError) -> None:
        """Mark the connection broken and kill the actor (the pool replaces it)."""
        if self._broken is None:
            self._broken = reason
        try:
            self.ray.kill(self.actor, no_restart=True)
        except Exception:
            pass

    def close(self, kill: bool = False) -> None:
        """Stop the actor without blocking: it removes its staged code and exits, unless killed.

        An actor with calls in flight is killed, so that their callers get ``PodClosedError`` now.
        """
        if self._broken is None:
            self._broken = PodClosedError(f"pod {self.pod!r} was closed")
        try:
            if kill or self._in_flight:
                self.ray.kill(self.actor, no_restart=True)
            else:
                self.actor.exit.remote()
        except Exception:
            pass


class RayStream(Stream):
    """A pod generator on Ray (a streaming generator): its items as the actor yields them."""

    def __init__(self, conn: RayConnection, refs: Any, name: str, timeout: float | None) -> None:
        self._conn, self._refs, self._name, self._timeout = conn, refs, name, timeout
        self._done = False
        conn._count(1)

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        conn = self._conn
        try:
            read = functools.partial(rayobjects.read_item, conn.ray, self._refs, self._timeout)
            reply = conn._decode(conn._wait(read, self._timeout, self._name, self._refs))
            outcome = conn._meaning(conn.proto.stream_item, self._name, reply)
        except BaseException:
            self.close()  # an error ends the stream here: stop the generator in the actor too
            raise
        if outcome.kind == Outcome.ITEM:
            return outcome.value
        self._finish()
        raise StopIteration

    def _finish(self) -> None:
        if not self._done:
            self._done = True
            self._conn._count(-1)

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
    """Check what the loader cannot, join the cluster, and return the factory of the pod's actors.

    Each actor gets the pod's files as they are when it starts, so a replaced (or reloaded) actor
    runs the current code, as a new local worker would.

    Raises:
        PodConfigError: ``python`` is not the cluster's.
        PodBuildError: the pod would ship too much.
        ImportError: Ray is not installed.
    """
    check_python(layout.name, settings.python)
    rayship.select_files(layout)  # refuse a pod that ships too much at load, not at its first call
    ray = _ray()
    if not ray.is_initialized():
        address = settings.address or os.environ.get("RAY_ADDRESS")
        ray.init(address=address, include_dashboard=False, ignore_reinit_error=True)
    actor_class = ray.remote(concurrency_groups=rayactor.CONCURRENCY_GROUPS)(rayactor.PodActor)

    def spawn() -> RayConnection:
        return RayConnection(ray, actor_class, layout, settings)

    return spawn
