"""The Ray side of a Ray pod: an actor that stages the pod's code, imports it and serves encoded calls.

It speaks the local worker's protocol (``_worker/serve.py``) over Ray calls instead of a pipe: the
hello offers the same encodings, ``setup`` takes the client's ``encoding`` and ``register``
messages, ``call`` takes a request the client's ``CallProtocol.encode_call`` made and answers with
a value, an error, or (a generator, found when the function returns one, as the local worker does)
``{"stream": true}``, after which ``stream`` sends that generator's items. Every reply is ``bytes``
holding one message (fast1/fast2 when the client chose it, else BSON). Ray hands ``bytes`` to the
client raw, without unpickling, so a pod's values, errors and description reach the client only
through our decoder, which never runs code. For the same reason no method here lets an exception
escape: Ray would pickle it into a ``RayTaskError`` that the client unpickles.

Methods run in two Ray concurrency groups: ``calls`` (one thread: calls, hello, setup and stop, one
at a time, as in a local worker) and ``streams`` (generators), so a stream waiting for its consumer
does not hold up other calls. This module needs no Ray import; ``raypool.py`` makes it a Ray actor.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import types
import weakref
from typing import Any

from .._worker import fastcodec, messages
from .._worker.codec import Decoder, Encoder, register
from .._worker.decoding import DecodeError
from .._worker.exttypes import MissingLibrary

CONCURRENCY_GROUPS = {"calls": 1, "streams": 16}
# Generators a call returned whose stream() has not begun: the client starts it at once, but a stream
# closed before Ray ran it never begins. The oldest beyond this many is closed (it never ran a line).
MAX_WAITING_STREAMS = 1024
STAGE_PREFIX = "pypods-ray-"  # temporary projects are <tmp>/pypods-ray-<pid>-<random>/pods/<name>/


def stage(pod_name: str, files: dict[str, bytes]) -> str:
    """Write the shipped files as ``<tmp project>/pods/<pod_name>/...``; return the project folder."""
    project = tempfile.mkdtemp(prefix=f"{STAGE_PREFIX}{os.getpid()}-")
    pod_dir = os.path.realpath(os.path.join(project, "pods", pod_name))
    for relative, data in files.items():
        target = os.path.realpath(os.path.join(pod_dir, relative))
        if not target.startswith(pod_dir + os.sep):
            continue  # shipped paths are relative and inside the pod; anything else is not ours to write
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as handle:
            handle.write(data)
    return project


def sweep_stale(tmp: str | None = None) -> None:
    """Remove temporary projects left by actors that were killed (a kill runs no cleanup) on this node."""
    tmp = tmp or tempfile.gettempdir()
    for entry in os.listdir(tmp):
        if not entry.startswith(STAGE_PREFIX):
            continue
        pid_text = entry[len(STAGE_PREFIX) :].split("-", 1)[0]
        if pid_text.isdigit() and not _alive(int(pid_text)):
            shutil.rmtree(os.path.join(tmp, entry), ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def encoded(message: dict[str, Any], encoding: str = "") -> bytes:
    """One message as the bytes the client decodes; a value that cannot be encoded becomes an error.

    With *encoding* (``fast1``/``fast2``, what the client chose), a value or stream item goes as
    the local worker sends it (``fastcodec.encode_reply``), everything else as BSON.
    """
    try:
        if encoding and "p" not in message and ("value" in message or "yield" in message):
            key = "value" if "value" in message else "yield"
            return bytes(fastcodec.encode_reply(None, message["id"], message[key], key, encoding))
        return bytes(Encoder().document(message))
    except Exception as exc:  # any failure to encode (EncodeError, RecursionError, a raising __str__)
        error = {"kind": "serialization", "message": f"the result cannot be sent: {_describe(exc)}"}
        return bytes(Encoder().document({"id": message.get("id", 0), "ok": False, "error": error}))


def register_classes(names: list[Any]) -> None:
    """Rebuild the client's registered classes here too, where this pod can import them (as serve.py)."""
    import importlib

    for name in names:
        module_name, _, qualname = str(name).partition(":")
        try:
            obj: Any = importlib.import_module(module_name)
            for part in qualname.split("."):
                obj = getattr(obj, part)
            register(obj)
        except Exception:
            continue


def _describe(exc: BaseException) -> str:
    try:
        return f"{type(exc).__name__}: {exc}"
    except Exception:
        return type(exc).__name__


def _error(call_id: Any, exc: BaseException, kind: str) -> bytes:
    try:
        info = messages.error_info(exc, kind)
    except Exception:  # an exception whose __str__ raises, or worse: still an answer
        info = {"kind": kind, "type": type(exc).__name__, "mro": [], "message": "(unprintable)", "traceback": ""}
    return encoded({"id": call_id, "ok": False, "error": info})


class PodActor:
    """Serve one pod inside a Ray worker process (the Ray actor class is made from it in ``raypool``)."""

    def __init__(self, pod_name: str, files: dict[str, bytes], codec: str = "bson") -> None:
        import importlib

        from .._worker.serve import exported

        sweep_stale()
        self.pod_name = pod_name
        self.pickle = codec == "pickle"  # chosen by the client's own code, as for a local worker
        self.project = stage(pod_name, files)
        # Removed when the actor is collected or its process exits normally (weakref.finalize runs at
        # exit too); a killed actor runs nothing, so the next actor on the node sweeps what it left.
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.project, True)
        self.import_error: dict[str, Any] | None = None
        self.functions: dict[str, Any] = {}
        self.loop: Any = None
        self.fast = ""  # the encoding the client chose for replies: "fast1", "fast2" or "" (BSON)
        self.decoder = Decoder(stdlib_imports=True)  # the pod trusts its client; used by the calls thread only
        self.generators: dict[int, Any] = {}  # call id -> a generator a call returned, until stream() takes it
        sys.path.insert(0, self.project)  # holds only pods/<name>: shadows nothing but a package named "pods"
        try:
            module = importlib.import_module(f"pods.{pod_name}.pod")
            self.functions = exported(module, os.path.join(self.project, "pods", pod_name))
        except BaseException as exc:  # reported by hello(), like a local worker's import error
            self.import_error = messages.error_info(exc, "import")

    def stop(self) -> None:
        """Remove the staged code now (idempotent)."""
        self._cleanup()

    def exit(self) -> None:
        """Remove the staged code and end the actor gracefully (Ray's own exit; atexit handlers run)."""
        self.stop()
        import ray

        ray.actor.exit_actor()  # type: ignore[no-untyped-call]

    def hello(self, describe: bool = True) -> bytes:
        """The worker hello of the protocol: who we are, the encodings, and the functions or the import error."""
        message = messages.hello_header()
        message["encodings"] = fastcodec.ENCODINGS
        try:
            if self.import_error is not None:
                message["error"] = self.import_error
            elif describe:
                message["functions"] = [messages.describe(name, fn) for name, fn in self.functions.items()]
        except BaseException as exc:
            message["error"] = messages.error_info(exc, "import")
        return encoded(message)

    def setup(self, frame: bytes) -> bytes:
        """Apply an ``encoding`` or ``register`` message (the client waits for this before its next call)."""
        try:
            message = Decoder().document(frame)
            op = message.get("op")
            if op == "encoding":
                self.fast = fastcodec.chosen(message.get("name"))
            elif op == "register":
                register_classes(message.get("classes") or [])
            return encoded({"id": 0, "ok": True, "value": None})
        except BaseException as exc:
            return _error(0, exc, "decode")

    def _invoke(self, message: dict[str, Any]) -> Any:
        """Run a decoded call request; return its result or raise what the pod function raised."""
        if self.import_error is not None:
            raise ImportError(self.import_error.get("message", "importing pod.py failed"))
        name = message.get("name")
        function = self.functions.get(name) if isinstance(name, str) else None
        if function is None:
            raise AttributeError(f"pod {self.pod_name!r} has no function {name!r}")
        try:
            args, kwargs = fastcodec.decode_request(message, self.decoder)  # fast1's "a", or BSON's fields
        except (DecodeError, MissingLibrary) as exc:
            raise _Undecodable(exc) from exc
        if "p" in message:
            if not self.pickle:
                raise PermissionError(f"pod {self.pod_name!r} does not accept pickled arguments (codec is bson)")
            args, kwargs = messages.unpack_pickle(message)
        result = function(*args, **kwargs)
        if isinstance(result, types.CoroutineType):
            if self.loop is None:
                import asyncio

                self.loop = asyncio.new_event_loop()
            result = self.loop.run_until_complete(result)
        return result

    def _reply(self, call_id: Any, value: Any, key: str) -> bytes:
        return encoded(messages.result_message(call_id, value, key, self.pickle), self.fast)

    def call(self, request: bytes) -> bytes:
        """Run one call; the reply message (value, error, or the start of a stream), encoded. Never raises.

        Whether a call streams is decided here, by what the function returned (a decorated
        generator function looks like a plain one until it runs), as in the local worker.
        """
        call_id: Any = 0
        try:
            call_id = messages.peek_id(request)
            message = self.decoder.document(request)  # the pod trusts its client
            call_id = message.get("id", call_id)
            result = self._invoke(message)
        except _Undecodable as exc:
            return _error(call_id, exc.cause, "decode")
        except (DecodeError, MissingLibrary) as exc:
            return _error(call_id, exc, "decode")
        except BaseException as exc:  # every failure, even SystemExit, goes back as a message
            return _error(call_id, exc, "remote")
        if isinstance(result, types.GeneratorType):
            if len(self.generators) >= MAX_WAITING_STREAMS:  # streams a client dropped before they began
                self.generators.pop(next(iter(self.generators))).close()
            self.generators[call_id] = result  # the client starts stream(call_id) at once
            return encoded({"id": call_id, "ok": True, "stream": True})
        return self._reply(call_id, result, "value")

    def stream(self, call_id: int) -> Any:
        """Send the items of the generator call *call_id* returned: ``yield`` messages, then ``end`` or an error."""
        generator = self.generators.pop(call_id, None) if type(call_id) is int else None
        try:
            if generator is None:
                call_id = call_id if type(call_id) is int else 0
                raise LookupError(f"no stream for call {call_id!r}")
            for item in generator:
                yield self._reply(call_id, item, "yield")
            yield encoded({"id": call_id, "end": True})
        except GeneratorExit:  # the client closed or cancelled the stream
            raise
        except BaseException as exc:
            yield _error(call_id, exc, "remote")
        finally:
            if generator is not None:
                generator.close()  # the pod generator's own finally runs now, not at some later GC


class _Undecodable(Exception):
    """The arguments of a call cannot be received here (a ``decode`` error, as in the local worker)."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause
