"""The worker's loop: import the pod, describe it, then answer calls one at a time until the pipe closes.

Runs inside the pod's own interpreter (Python 3.8+, standard library only). Protocol steps are
numbered where they happen; the message shapes are in ``messages.py`` and ``docs/architecture.md``.
"""

from __future__ import annotations

import collections
import importlib
import io
import os
import select
import signal
import struct
import sys
import threading
import time
import types
from typing import Any, Callable, Deque, Dict, List, Optional, Set, Tuple

from . import callbacks, fastcodec, messages, reaper
from .codec import Encoder, register
from .decoding import DecodeError, Decoder
from .exttypes import MissingLibrary, OutOfBand
from .framing import FrameError, FrameReader, PipeClosed, write_all
from .objects import ObjectLimit, ObjectTable, describe_class
from .sharedmem import SHM_TAG, WORKER_PENDING, FdChannel, Inbox, SharedMemoryError, Upload

SPIN = float(os.environ.get("PYPODS_SPIN_US", "100")) / 1e6


def _guard_stdio() -> tuple[int, int]:
    """Take fds 0 and 1 for the protocol and point them elsewhere, so no print can corrupt a frame.

    After this, fd 0 reads /dev/null and fd 1 is a copy of fd 2 (the log pipe): a C library that
    writes to fd 1 lands in the pod's log, not in the middle of a reply.
    """
    proto_in, proto_out = os.dup(0), os.dup(1)
    quiet_stdio()
    return proto_in, proto_out


def quiet_stdio() -> None:
    """Point fd 0 at /dev/null and fd 1 at fd 2 (the log pipe), line-buffered (also the template's)."""
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            try:
                reconfigure(line_buffering=True, errors="backslashreplace")
            except OSError:  # a stream that began on a seekable file (e.g. /dev/null)
                pass


def _watch_parent(parent: int) -> None:
    """Exit if the client dies while a long call keeps us from seeing the pipe close."""

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                _end_group()
                os._exit(70)

    threading.Thread(target=watch, name="pypods-parent-watch", daemon=True).start()


def _end_group() -> None:
    """Our client is gone: end the processes this pod started (our group), then ourselves."""
    if os.getpgrp() == os.getpid():  # we lead the group (start_new_session): never kill a foreign one
        reaper.end_tree(os.getpid())
        try:
            os.killpg(os.getpid(), signal.SIGKILL)
        except OSError:
            pass


def _end_children() -> None:
    """We are exiting: end every process the pod started, so none of it outlives us.

    The client ends them too, but it may have died first (its pipe closes before we are
    reparented, so we cannot tell). We are their subreaper (``main``), so those that left our
    group are still our descendants. Linux only (``/proc``); elsewhere the client's kill does it.
    """
    if os.getpgrp() == os.getpid():  # we lead the group (start_new_session): never a foreign one
        reaper.end_tree(os.getpid())


def _no_breakpoint(*args: Any, **kwargs: Any) -> None:
    print(
        "pypods: breakpoint() ignored: a pod has no terminal. Debug the function locally, or use a "
        "socket debugger such as remote-pdb (see the README).",
        file=sys.stderr,
    )


# What inspect.isroutine accepts, without importing inspect (~10 ms) at every worker start.
_ROUTINES = (types.FunctionType, types.BuiltinFunctionType, types.MethodType, types.MethodWrapperType)


def own_path(path: Optional[str], pod_dir: str) -> Optional[str]:
    """The path relative to the pod folder if it is the pod's own code (not its venv), else None."""
    if not path:
        return None
    real = os.path.realpath(path)
    base = os.path.realpath(pod_dir)
    if not real.startswith(os.path.join(base, "")):
        return None
    if real.startswith(os.path.join(os.path.realpath(sys.prefix), "")):
        return None
    return os.path.relpath(real, base)


def _offerable(obj: Any) -> bool:
    """A function, a decorated one (``functools.wraps``, ``lru_cache``: callables with ``__wrapped__``), or a
    class (its instances live in the worker: ``objects.py``)."""
    if isinstance(obj, type):
        return not issubclass(obj, BaseException)
    return isinstance(obj, _ROUTINES) or (callable(obj) and hasattr(obj, "__wrapped__"))


def exported(module: Any, pod_dir: str) -> Dict[str, Callable[..., Any]]:
    """Pick the functions a pod offers: ``__all__`` if set, else its own public (maybe decorated) functions."""
    names = getattr(module, "__all__", None)
    if names is not None:
        return {name: getattr(module, name) for name in names if callable(getattr(module, name, None))}
    chosen: Dict[str, Callable[..., Any]] = {}
    for name, obj in vars(module).items():
        if name.startswith("_") or not _offerable(obj):
            continue
        origin = sys.modules.get(getattr(obj, "__module__", None) or "")
        if own_path(getattr(origin, "__file__", None), pod_dir) is not None:
            chosen[name] = obj
    return chosen


class Worker:
    """Serve one pod over two pipes; one call at a time, in the order they arrive."""

    def __init__(self, pod_name: str, pod_dir: str, proto_in: int, proto_out: int, codec: str = "bson") -> None:
        self.pod_name = pod_name
        self.pickle = codec == "pickle"  # opt-in: pickle runs code on decode
        self.describe = True  # False when the client has a cached description: no inspect at start
        self.pod_dir = pod_dir
        self.reader = FrameReader(proto_in)
        self.out = proto_out
        self.big = OutOfBand()
        self.channel: Optional[FdChannel] = None  # the shared-memory socket, once attach() gave it
        self.waiter: Any = None
        self.nonblocking = False  # the input is non-blocking: reads never wait, polls do
        self.inbox = Inbox(WORKER_PENDING)
        self.deadline: Optional[float] = None  # the running call's (its request's timeout), bounding our waits
        self.decoder = Decoder(self.big, stdlib_imports=True)  # the pod trusts its client
        self.functions: Dict[str, Callable[..., Any]] = {}
        self.objects = ObjectTable(pod_dir)  # live instances the client holds handles to
        self.callbacks: List[Any] = []  # callbacks.Callback of the calls running (nested ones too)
        self.queue: Deque[bytes] = collections.deque()  # requests read but not yet served
        self.streams: Dict[int, List[Any]] = {}  # call id -> [suspended generator, credits left]
        self.loop: Any = None  # an asyncio loop, made (and asyncio imported) for the first coroutine
        self.import_error: Optional[Dict[str, Any]] = None
        self.busy = False  # True only while pod code runs: the one time a Ctrl-C may interrupt
        self.cancelled: Set[int] = set()  # ids the client cancelled before we started them
        self.fast = ""  # the encoding the client chose for replies: "fast1", "fast2" or "" (fastcodec.py)

    def attach(self, channel: FdChannel) -> None:
        """Send and receive big buffers through *channel* (the socket the client passed us)."""
        self.channel = channel
        self.big.attach(self.inbox)
        self.waiter = select.poll()  # what _read_frame waits on: the pipe and the socket
        self.waiter.register(channel.fileno(), select.POLLIN)
        self.waiter.register(self.reader.fd, select.POLLIN)
        if self.reader.fd != self.out:  # its own pipe (not a socket we also write on, as in tests)
            os.set_blocking(self.reader.fd, False)
            self.nonblocking = True

    def on_sigint(self, signum: int, frame: Any) -> None:
        """The client passes Ctrl-C on: interrupt the pod function, never the protocol itself."""
        if self.busy:
            raise KeyboardInterrupt

    def send(self, message: Dict[str, Any], fast: bool = False) -> bool:
        """Encode and write one whole message; a value that cannot be encoded is answered as an error.

        Returns False when *message* could not be encoded (its error went instead). Encoding ends
        before writing starts, so the pipe never carries half a frame.
        """
        sent = True
        try:
            if fast and self.fast:  # fast1: JSON or packed floats when exact, else BSON
                data = fastcodec.encode_reply(self.big, message["id"], message["value"], encoding=self.fast)
            elif fast:  # a plain result: {"id", "ok": true, "value"}
                data = Encoder(self.big).reply(message["id"], message["value"])
            elif self.fast and "yield" in message and "p" not in message:
                data = fastcodec.encode_reply(self.big, message["id"], message["yield"], "yield", self.fast)
            else:
                data = Encoder(self.big).document(message)
        except Exception as exc:  # EncodeError, or any failure of a value's own methods
            self.big.discard()
            path = getattr(exc, "path", None)
            # The top-level key ("value", "yield") reads better as what it is for the user.
            if path and path[-1] in ("value", "yield"):
                path[-1] = "result" if path[-1] == "value" else "item"
            message = {"id": message.get("id", 0), "ok": False, "error": messages.error_info(exc, "serialization")}
            data = Encoder().document(message)
            sent = False
        attachments = self.big.take()
        if attachments and not self._upload(attachments):
            error = TimeoutError("the client took no shared-memory buffer within the call's timeout")
            data = Encoder().document(
                {"id": message.get("id", 0), "ok": False, "error": messages.error_info(error, "remote")}
            )
            sent = False
        write_all(self.out, data)
        return sent

    def _upload(self, attachments: List[Any]) -> bool:
        """Send a reply's attachments before it; False if the call's deadline passed first.

        While the socket is full, read what the client sends (requests on the pipe, buffers on the
        socket): it may be sending us many buffers at the same time.
        """
        assert self.channel is not None
        upload = Upload(self.channel, attachments)
        sock = self.channel.fileno()
        while not upload.pump():
            remaining = None if self.deadline is None else self.deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                upload.abort()
                return False
            waiter = select.poll()
            waiter.register(sock, select.POLLOUT | select.POLLIN)
            waiter.register(self.reader.fd, select.POLLIN)
            events = dict(waiter.poll(None if remaining is None else max(remaining, 0.001) * 1000))
            if events.get(sock, 0) & select.POLLIN:
                self._take_attachments()
            if events.get(self.reader.fd):
                try:
                    self.reader.fill()  # PipeClosed: the client is gone, and so are we
                except BlockingIOError:
                    pass
        return True

    def _take_attachments(self) -> None:
        if self.channel is not None:
            try:
                self.channel.receive(self.inbox, self.inbox.limit + 1)
            except SharedMemoryError:
                pass  # dropped; the frame that names it is answered with the decode error

    def _read_frame(self) -> bytes:
        """The next frame; while none is whole, wait on the pipe and drain the shared-memory socket."""
        reader = self.reader
        frame = reader.pop()
        if frame is None and self.channel is None:
            return reader.read_frame()
        while frame is None:
            assert self.channel is not None
            if reader.ready and self.nonblocking:  # a spin saw the bytes come: one read takes them
                reader.ready = False
                try:
                    reader.fill()
                    frame = reader.pop()
                    continue
                except BlockingIOError:
                    pass
            events = dict(self.waiter.poll())
            if events.get(self.channel.fileno()):
                self._take_attachments()
            if events.get(reader.fd):
                try:
                    reader.fill()
                except BlockingIOError:
                    pass
            frame = reader.pop()
        return frame

    def load(self, module_name: str) -> None:
        # 1. Import pod.py as a module of the project (never as __main__: the seed's block stays inert).
        try:
            module = importlib.import_module(module_name)
            self.functions = exported(module, self.pod_dir)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            self.import_error = messages.error_info(exc, "import")

    def hello(self) -> None:
        # 2. Say who we are and what we offer, before reading anything.
        message = messages.hello_header()
        message["encodings"] = fastcodec.ENCODINGS
        if self.import_error is not None:
            message["error"] = self.import_error
        elif self.describe:
            message["functions"] = [self._described(name, fn) for name, fn in self.functions.items()]
            message["files"] = self.own_files()
        self.send(message)

    @staticmethod
    def _described(name: str, function: Callable[..., Any]) -> Dict[str, Any]:
        """A function's description, or just its name if describing it failed (the pod still loads)."""
        try:
            info = messages.describe(name, function)
            if isinstance(function, type):  # its instances live here: the client builds handles
                info["class"] = True
                info["returns"] = None  # calling it makes a handle, not what __init__ returns
                info["methods"] = describe_class(function, messages.describe)
            return info
        except Exception:
            return {"name": name, "params": None}

    def own_files(self) -> List[str]:
        """Source files of the pod's own modules that are loaded (the describe cache hashes them)."""
        files = set()
        for module in list(sys.modules.values()):
            relative = own_path(getattr(module, "__file__", None), self.pod_dir)
            if relative is not None:
                files.add(relative)
        return sorted(files)

    def serve(self) -> None:
        # 3. Answer requests until the client closes the pipe or says shutdown. Streams interleave
        #    with calls: a generator waiting for credit is only suspended, never holds the loop.
        reader = self.reader
        while True:
            try:
                if not self.queue:
                    runnable = self._runnable()
                    if runnable is not None and not reader.readable(0):
                        self._advance(runnable)
                        continue
                    if runnable is None:
                        reader.spin(SPIN)  # a caller in a loop sends the next call within microseconds
                    self._take(self._read_frame())
                # Take what has already arrived (without waiting) before running a queued call:
                # a cancel for it (a Ctrl-C or a cancelled task in the client) is then seen first.
                while reader.readable(0):
                    self._take(self._read_frame())
            except (PipeClosed, OSError):
                return
            if not self.queue:
                continue  # only controls came
            frame, timeout = _split_timeout(self.queue.popleft())
            if SHM_TAG in frame:  # the client sent the frame's buffers before it
                self._take_attachments()
            try:
                request = self.decoder.document(frame)
                if timeout is not None:
                    request["timeout"] = timeout
            except (MissingLibrary, DecodeError) as exc:
                # The frame boundary is intact, so answer this call with the error and go on.
                self.big.discard()
                self.send({"id": messages.peek_id(frame), "ok": False, "error": messages.error_info(exc, "decode")})
                continue
            op = request.get("op")
            if op == "call":
                self.call(request)
            elif op == "describe":
                self.describe = True
                self.hello()
            elif op == "register":
                self.register(request.get("classes") or [])
            elif op == "encoding":
                self.fast = fastcodec.chosen(request.get("name"))
            elif op == "shutdown":
                return

    def _take(self, frame: bytes) -> None:
        """Apply a credit or cancel at once; queue anything else (calls run in arrival order)."""
        control = self._control(frame)
        if control is None:
            self.queue.append(frame)
            return
        call_id = control.get("id", 0)
        stream = self.streams.get(call_id)
        if control.get("op") == "more":
            if stream is not None:
                stream[1] += max(int(control.get("n", 0) or 0), 0)
        elif stream is not None:
            del self.streams[call_id]
            self._run(stream[0].close)
            self.send({"id": call_id, "end": True, "cancelled": True})
        elif any(messages.peek_id(queued) == call_id for queued in self.queue):
            self.cancelled.add(call_id)
        # else: a cancel for a call that already ended: nothing to do.

    def _runnable(self) -> Optional[int]:
        for call_id, stream in self.streams.items():
            if stream[1] > 0:
                return call_id
        return None

    def _advance(self, call_id: int) -> None:
        """Produce and send one item of stream *call_id* (then let the others have a turn)."""
        stream = self.streams.pop(call_id)
        try:
            self.busy = True
            try:
                item = next(stream[0])
            finally:
                self.busy = False
        except StopIteration:
            self.send({"id": call_id, "end": True})
            return
        except BaseException as exc:  # every failure goes back to the caller (an OSError too)
            kind = "interrupted" if isinstance(exc, KeyboardInterrupt) else "remote"
            self.send({"id": call_id, "ok": False, "error": messages.error_info(exc, kind)})
            return
        reply = self.result(call_id, item, "yield")
        if not self.send(reply) or "error" in reply:
            self._run(stream[0].close)  # the item could not cross: the stream ended with that error
            return
        stream[1] -= 1
        self.streams[call_id] = stream  # re-inserted last: round robin between streams

    def _run(self, action: Callable[[], Any]) -> None:
        """Run pod code whose failure nobody waits for (a generator's close)."""
        try:
            self.busy = True
            action()
        except BaseException:
            pass
        finally:
            self.busy = False

    def register(self, names: List[str]) -> None:
        """Rebuild the client's registered classes here too, where this pod can import them."""
        for name in names:
            module_name, _, qualname = str(name).partition(":")
            try:
                obj: Any = importlib.import_module(module_name)
                for part in qualname.split("."):
                    obj = getattr(obj, part)
                register(obj)
            except Exception:
                continue

    def result(self, call_id: int, value: Any, key: str = "value") -> Dict[str, Any]:
        """A reply carrying *value*: as a BSON value, or pickled if this pod uses the pickle codec."""
        return messages.result_message(call_id, value, key, self.pickle)

    def call(self, request: Dict[str, Any]) -> None:
        call_id = request.get("id", 0)
        if call_id in self.cancelled:
            self.cancelled.discard(call_id)
            self.send({"id": call_id, "ok": False, "error": {"kind": "interrupted", "message": "cancelled"}})
            return
        name = request.get("name")
        function = self.functions.get(name) if isinstance(name, str) else None
        timeout: Any = request.get("timeout")
        self.deadline = time.monotonic() + float(timeout) if type(timeout) in (int, float) else None
        try:
            self._call(request, call_id, function, name)
        finally:
            self.deadline = None  # stream items wait for room only on the client's credit and liveness
            if self.callbacks:  # the call ended: its callbacks with it
                for callback in [c for c in self.callbacks if c.call_id == call_id]:
                    callback.live = False
                    self.callbacks.remove(callback)

    def _call(self, request: Dict[str, Any], call_id: Any, function: Any, name: Any) -> None:
        try:
            if self.import_error is not None:
                self.send({"id": call_id, "ok": False, "error": self.import_error})
                return
            refs = passed = None
            if function is None:  # a method of a live object, releases, handles or callbacks among the arguments
                if not isinstance(name, str):
                    raise AttributeError("no function %r in this pod" % (name,))
                function, refs, passed = self.objects.resolve(name, self.functions)
            try:
                args, kwargs = fastcodec.decode_request(request, self.decoder)
            except (DecodeError, MissingLibrary) as exc:  # the arguments cannot be received here
                self.big.discard()
                self.send({"id": call_id, "ok": False, "error": messages.error_info(exc, "decode")})
                return
            if "p" in request:
                if not self.pickle:
                    raise PermissionError("pod %r does not accept pickled arguments (codec is bson)" % self.pod_name)
                args, kwargs = messages.unpack_pickle(request)
            if refs or passed:
                args = list(args)
                self.objects.substitute(refs or [], args, kwargs)
                if passed:
                    self.callbacks.extend(callbacks.bind(self, call_id, passed, args, kwargs))
            if function is None:  # only releases
                self.send({"id": call_id, "value": None}, fast=True)
                return
            self.busy = True
            result = function(*args, **kwargs)
            if isinstance(result, types.CoroutineType):
                if self.loop is None:
                    import asyncio  # ~40 ms to import: only for pods that have async functions

                    self.loop = asyncio.new_event_loop()
                result = self.loop.run_until_complete(result)
            self.busy = False
        except BaseException as exc:  # every failure, even SystemExit, goes back to the caller
            self.busy = False
            kind = "interrupted" if isinstance(exc, KeyboardInterrupt) else "remote"
            self.send({"id": call_id, "ok": False, "error": messages.error_info(exc, kind)})
            return
        if isinstance(result, types.GeneratorType):
            # 4. A stream: items go out as the client grants credit (at most *window* ahead).
            self.send({"id": call_id, "ok": True, "stream": True})
            window = request.get("window", 64)  # an older client sends none: the default is the same
            self.streams[call_id] = [result, max(int(window), 1) if type(window) is int else 64]
        elif self.objects.stays(result) and not _crosses(result):
            self._send_object(call_id, result)
        elif self.pickle:
            self.send(self.result(call_id, result))
        else:
            self.send({"id": call_id, "value": result}, fast=True)

    def _send_object(self, call_id: Any, value: Any) -> None:
        """Keep *value* here and answer with its new id (the client makes a handle of it)."""
        try:
            oid = self.objects.add(value)
        except ObjectLimit as exc:
            self.send({"id": call_id, "ok": False, "error": messages.error_info(exc, "limit")})
            return
        self.send({"id": call_id, "ok": True, "value": None, "object": oid, "class": type(value).__qualname__})

    def _control(self, frame: bytes) -> Optional[Dict[str, Any]]:
        """The frame as a credit or cancel message, else None (a request to queue)."""
        if len(frame) > 64:
            return None  # controls are tiny; never decode a call here (that would consume its shm)
        if b"\x02op\x00\x07\x00\x00\x00cancel\x00" not in frame and b"\x02op\x00\x05\x00\x00\x00more\x00" not in frame:
            return None
        try:
            message = Decoder().document(frame)
        except (DecodeError, MissingLibrary):
            return None
        return message if message.get("op") in ("more", "cancel") else None


def _crosses(value: Any) -> bool:
    """Whether *value* (an instance of the pod's own class) can cross as a value: a NamedTuple, a
    dataclass of plain fields. Only what cannot stays in the pod as an object (the rare path: it
    encodes once more, inline, and throws the bytes away)."""
    try:
        Encoder(OutOfBand()).document({"value": value})
    except Exception:
        return False
    return True


_TIMEOUT = b"\x01timeout\x00"  # a double, appended last to a request by the client (core._with_fields)
_TAIL = len(_TIMEOUT) + 9  # the key, 8 bytes of double, the document's terminating NUL


def _split_timeout(frame: bytes) -> Tuple[bytes, Optional[float]]:
    """Cut a small request's trailing ``timeout`` off, so the fixed-layout decoder still reads it.

    Bytes 0-3 of a frame are its length (int32, little-endian); the timeout is the last element.
    """
    size = len(frame)
    if size > 65536 or size < _TAIL + 5 or frame[size - _TAIL : size - 9] != _TIMEOUT or frame[-1] != 0:
        return frame, None  # none, or a big frame: the generic decoder reads the field itself
    (timeout,) = struct.unpack_from("<d", frame, size - 9)
    body = bytearray(frame[: size - _TAIL])
    body += b"\x00"
    struct.pack_into("<i", body, 0, len(body))
    return bytes(body), timeout


def import_pods_package(project_root: str) -> None:
    """Make ``pods`` importable without putting the project root on ``sys.path``.

    Anything else in the client's folder (a ``queue.py``, a ``json/``) must not shadow the pod's
    standard library or packages, so only ``<root>/pods`` becomes reachable, as package ``pods``.
    """
    import importlib.machinery
    import importlib.util

    folder = os.path.join(project_root, "pods")
    init = os.path.join(folder, "__init__.py")
    if os.path.isfile(init):
        spec = importlib.util.spec_from_file_location("pods", init, submodule_search_locations=[folder])
    else:
        spec = importlib.machinery.ModuleSpec("pods", None, is_package=True)
        spec.submodule_search_locations = [folder]
    if spec is None:  # pragma: no cover - spec_from_file_location of an existing .py
        raise ImportError("cannot import the pods package from %s" % folder)
    module = importlib.util.module_from_spec(spec)
    sys.modules["pods"] = module
    if spec.loader is not None:
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules["pods"]  # the pod's import then fails and the hello reports why
            raise


def main(argv: List[str]) -> int:
    """Entry point: ``argv`` is ``[pod_name, pod_dir, project_root, codec, describe ("1"/"0"), channel fd]``.

    The channel fd is the worker's end of the socketpair for shared memory, ``-1`` for none.
    """
    pod_name, pod_dir, project_root = argv[:3]
    codec = argv[3] if len(argv) > 3 else "bson"
    describe = argv[4] != "0" if len(argv) > 4 else True
    channel_fd = int(argv[5]) if len(argv) > 5 else -1
    parent = os.getppid()
    reaper.become_subreaper()  # what the pod starts stays our descendant (see _end_children)
    proto_in, proto_out = _guard_stdio()
    from .debugger import install  # #23: breakpoint() at the client's terminal, where it has one

    sys.breakpointhook = install() or _no_breakpoint
    sys.path[:] = [p for p in sys.path if p not in ("", project_root)]
    pods_error: Optional[BaseException] = None
    try:
        import_pods_package(project_root)
    except Exception as exc:  # reported as the pod's import error below, not as a dead worker
        pods_error = exc
    _watch_parent(parent)
    worker = Worker(pod_name, pod_dir, proto_in, proto_out, codec)
    if channel_fd >= 0:
        worker.attach(FdChannel.from_fd(channel_fd))
    worker.describe = describe
    signal.signal(signal.SIGINT, worker.on_sigint)
    worker.load("pods.%s.pod" % pod_name)
    if pods_error is not None and worker.import_error is not None:
        worker.import_error = messages.error_info(pods_error, "import")  # the cause, not "no module pods"
    try:
        worker.hello()
        worker.serve()
    except (PipeClosed, FrameError, BrokenPipeError):
        pass
    finally:
        worker.inbox.clear()
        if isinstance(sys.stdout, io.TextIOBase):
            sys.stdout.flush()
        _end_children()
    return 0
