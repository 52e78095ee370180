"""Read an actor's reply from Ray's object store as raw bytes, refusing any object Ray would unpickle.

Our actor returns only ``bytes``, which Ray stores with ``RAW`` metadata and hands back as they are.
But the actor runs the pod's code: a pod that patches its own actor could return any object, and a
plain ``ray.get`` would unpickle it in the client (as it does for a ``RayTaskError``). So we look at
the object's metadata first, through Ray's core worker, and read only ``RAW`` objects; Ray's own
system errors (actor died, node died, runtime_env failed: built from protobuf, never pickle) are
raised as Ray raises them; everything else is refused unread.

Streams (Ray's streaming generators) are read the same way, item by item, and their end is our own
``end`` message: the generator task's own result, which Ray reads with ``ray.get`` when a stream
runs out, is only looked at through ``read_raw`` (a dead actor's error, or refused).

This uses ``CoreWorker.get_objects`` and the object-ref stream calls, which are not public Ray API;
where they are missing or differ (another Ray version), we fall back to ``ray.get`` plus a type
check and Ray's own ``ObjectRefGenerator`` iteration, and log once that replies are then only as
safe as Ray's deserialization.
"""

from __future__ import annotations

import logging
import time
from typing import Any

RAW = b"RAW"
TASK_EXECUTION_EXCEPTION = 3  # Ray's ErrorType: a pickled RayTaskError
TASK_CANCELLED = 5  # Ray's ErrorType: protobuf, or a pickled error as a fallback

log = logging.getLogger("pypods")
_warned = False


class UnsafeObject(Exception):
    """The actor returned an object that is not raw bytes (refused without reading it)."""


def read_raw(ray: Any, ref: Any, timeout: float | None) -> bytes:
    """The bytes object behind *ref*, waiting at most *timeout* seconds.

    Raises:
        ray.exceptions.GetTimeoutError: not ready within *timeout*.
        ray.exceptions.RayError: Ray's own error for the object (the actor died, and so on).
        UnsafeObject: the object is anything but raw bytes or one of Ray's system errors.
    """
    try:
        core = ray._private.worker.global_worker.core_worker
        timeout_ms = -1 if timeout is None else max(int(timeout * 1000), 0)
        found = core.get_objects([ref], timeout_ms)[0]
        data, metadata = found[0], found[1]
    except (AttributeError, TypeError, IndexError):
        return _fallback(ray, ref, timeout)
    kind = bytes(metadata or b"").split(b",", 1)[0]
    if kind == RAW:
        return b"" if data is None else bytes(data.to_pybytes())
    if kind.isdigit():
        code = int(kind)
        if code == TASK_CANCELLED:
            raise ray.exceptions.TaskCancelledError()
        if code != TASK_EXECUTION_EXCEPTION:
            ray.get(ref, timeout=0)  # raises Ray's system error, decoded from protobuf
    raise UnsafeObject(f"a Ray object of kind {kind[:40]!r} instead of raw bytes (not read)")


def _fallback(ray: Any, ref: Any, timeout: float | None) -> bytes:
    global _warned
    if not _warned:
        _warned = True
        log.warning("pypods: this Ray has no CoreWorker.get_objects; replies are read with ray.get (unpickling)")
    value = ray.get(ref, timeout=timeout)
    if not isinstance(value, bytes):
        raise UnsafeObject(f"a {type(value).__name__} instead of raw bytes")
    return value


def read_item(ray: Any, refs: Any, timeout: float | None) -> bytes:
    """The next item of a streaming generator (*refs*, an ``ObjectRefGenerator``), as raw bytes.

    Raises:
        ray.exceptions.GetTimeoutError: no item within *timeout*.
        ray.exceptions.RayError: the actor died (its error, as Ray raises it).
        UnsafeObject: the item is not raw bytes, or the stream ended (ours end with an ``end`` item).
    """
    began = time.monotonic()
    ref = _next_ref(ray, refs, timeout)
    left = None if timeout is None else max(timeout - (time.monotonic() - began), 0.0)
    return read_raw(ray, ref, left)


def _next_ref(ray: Any, refs: Any, timeout: float | None) -> Any:
    try:
        core = refs.worker.core_worker
        generator = refs._generator_ref
        expected, ready = core.peek_object_ref_stream(generator)
    except AttributeError:
        return _fallback_next(ray, refs, timeout)
    if not ready:
        _, unready = ray.wait([expected], timeout=timeout, fetch_local=False)
        if unready:
            raise ray.exceptions.GetTimeoutError(f"no stream item within {timeout}s")
    try:
        return core.try_read_next_object_ref_stream(generator)
    except ray.exceptions.ObjectRefStreamEndOfStreamError:
        read_raw(ray, generator, 0)  # the task's result: raises a dead actor's error, or refuses the rest
        raise UnsafeObject("the end of the stream without its end message") from None


def _fallback_next(ray: Any, refs: Any, timeout: float | None) -> Any:
    next_sync = getattr(refs, "_next_sync", None)  # Ray >= 2.8; before it, no deadline on the wait
    try:
        ref = next_sync(timeout_s=timeout) if next_sync is not None else next(refs)
    except StopIteration:
        raise UnsafeObject("the end of the stream without its end message") from None
    if ref.is_nil():
        raise ray.exceptions.GetTimeoutError(f"no stream item within {timeout}s")
    return ref
