"""Every error pypods raises, in one hierarchy, so ``except pypods.PodError`` catches them all.

::

    PodError(Exception)
    ├── PodBuildError                         the environment could not be built
    ├── PodConfigError(.., ValueError)        pod.toml or a setting is invalid
    ├── PodNotFoundError(.., FileNotFoundError)  no such pod, and it was not to be created
    ├── PodSerializationError(.., TypeError)  a value cannot cross the boundary
    ├── PodRemoteError                        the pod function raised (also the builtin type)
    ├── PodClosedError                        the pod was unloaded or closed
    ├── PodObjectLimitError                   a worker already holds its limit of live objects
    └── PodWorkerError                        the worker failed the call; a retry may work
        ├── PodCrashedError                   the worker died (exit code or signal, last stderr)
        ├── PodCrashLoopError                 workers kept dying; the pod stopped restarting them
        ├── PodObjectLostError                a live object's worker died (or was killed)
        ├── PodTimeoutError(.., TimeoutError) the call passed its deadline; worker replaced
        └── PodProtocolError                  a bad frame or protocol version
"""

from __future__ import annotations

import builtins
import signal
from typing import Any

from ._terminal import escape_controls

__all__ = [
    "PodBuildError",
    "PodClosedError",
    "PodConfigError",
    "PodCrashLoopError",
    "PodCrashedError",
    "PodError",
    "PodNotFoundError",
    "PodObjectLimitError",
    "PodObjectLostError",
    "PodProtocolError",
    "PodRemoteError",
    "PodSerializationError",
    "PodTimeoutError",
    "PodWorkerError",
]


class PodError(Exception):
    """Base of every pypods error.

    Its text (``str(exc)``, what a traceback prints) shows control characters as ``\\xNN``: it often
    quotes a pod (its message, traceback, stderr lines) and may be printed to a terminal by any
    excepthook or logger, where an ESC would be a command. The raw text stays in ``exc.args``.
    """

    def __str__(self) -> str:
        return escape_controls(super().__str__())


class PodBuildError(PodError):
    """A pod's environment could not be built: names the pod, the requirement and the installer's output.

    The pod is left not-ready, so every later load raises this again until the cause is fixed.
    """

    def __init__(self, message: str, *, pod: str = "", output: str = "") -> None:
        super().__init__(message)
        self.pod = pod
        self.output = output


class PodConfigError(PodError, ValueError):
    """A pod's settings are invalid (``pod.toml`` or an argument): names the file and the key.

    A misspelled key gets a "did you mean"; a ``ValueError`` too, as settings errors always were.
    """


class PodNotFoundError(PodError, FileNotFoundError):
    """The pod does not exist and was not to be created (``create=False``, or a ``pypods`` command).

    Names the folder searched and the pods that do exist; a ``FileNotFoundError`` too.
    """


class PodSerializationError(PodError, TypeError):
    """A value cannot be sent to or from a pod; raised before anything is sent.

    The message says where the value sat, e.g. ``args[1]['items'][3]: cannot send Custom``.
    """


class PodRemoteError(PodError):
    """The pod function raised. Carries the remote type name, message and traceback.

    When the remote exception is (or derives from) a builtin such as ``ValueError``, the raised
    object is also an instance of that builtin, so ``except ValueError`` works in the client.
    """

    remote_type: str = ""
    remote_traceback: str = ""
    remote_mro: tuple[str, ...] = ()

    def __init__(self, message: str, *, remote_type: str = "", remote_traceback: str = "", mro: Any = ()) -> None:
        super().__init__(message)
        self.remote_type = remote_type
        self.remote_traceback = remote_traceback
        self.remote_mro = tuple(mro)

    def __reduce__(self) -> Any:
        # Rebuilt through remote_error_type, so the builtin-mixing subclass survives pickling
        # (multiprocessing, ProcessPoolExecutor) and unpickles as itself.
        # The builtin's own attributes (errno, filename, name) live in slots, not in __dict__.
        state = dict(self.__dict__)
        for name in ("errno", "strerror", "filename", "filename2", "name", "path"):
            value = getattr(self, name, None)
            if value is not None:
                state[name] = value
        return (_rebuild_remote_error, (self.remote_mro, self.args), state)

    def __str__(self) -> str:
        text = str(self.args[0]) if self.args else ""
        if self.remote_traceback:
            text += "\n\nRemote traceback (most recent call last, in the pod):\n" + self.remote_traceback.rstrip()
        return escape_controls(text)  # the pod's own words (raw in .args[0] and .remote_traceback)


class PodClosedError(PodError):
    """The pod was unloaded or closed by this process's own code; unlike PodWorkerError, retrying will not help.

    Raised only after ``close()``/``unload_pod()`` (or ``with`` ended): a pod that stopped on its own
    raises a ``PodWorkerError`` (e.g. ``PodCrashLoopError``) instead.
    """


class PodWorkerError(PodError):
    """The worker failed this call for a reason of its own (not the function's); a retry may work."""


class PodCrashedError(PodWorkerError):
    """The worker process died during the call: exit code or signal and its last stderr lines.

    Every call in flight on that worker gets this at once; the next call starts a fresh worker.
    """

    def __init__(self, message: str, *, returncode: int | None = None, stderr: str = "") -> None:
        super().__init__(message)
        self.returncode = returncode
        self.stderr = stderr


class PodCrashLoopError(PodWorkerError):
    """The pod's workers crashed (or the pod reloaded) too often: 5 times in 10 s.

    Calls raise it at once, naming the strikes (``crashes``: their first lines), for a backoff
    (1 s, doubling after each failed try up to 60 s); then one call tries a fresh worker, and if
    that worker does not crash the pod works again. Timeouts never count as crashes. Unlike
    ``PodClosedError``, nobody closed the pod: a retry later may work.
    """

    def __init__(self, message: str, *, crashes: Any = ()) -> None:
        super().__init__(message)
        self.crashes = list(crashes)


class PodObjectLimitError(PodError):
    """A worker already holds ``PYPODS_MAX_OBJECTS`` live objects (default 10000), so it made no more.

    The object that would have passed the limit was dropped in the pod. Unlike ``PodWorkerError``
    the worker is fine: close (or drop) handles you no longer need, and try again.
    """


class PodObjectLostError(PodWorkerError):
    """A ``PodObject``'s worker died or was killed (a crash, or a call's timeout), and the object with it.

    Every later use of the handle raises this, naming the object and why its worker ended; the pool
    replaced the worker as usual, so making the object again works. Unlike ``PodClosedError``, you
    did not close anything.
    """


class PodTimeoutError(PodWorkerError, TimeoutError):
    """The call passed its deadline; the stuck worker was killed and will be replaced."""


class PodProtocolError(PodWorkerError):
    """The worker sent something that is not a valid frame, or speaks another protocol version."""


def describe_exit(returncode: int | None) -> str:
    """Say how a process ended: ``exit code 3`` or ``signal SIGKILL``."""
    if returncode is None:
        return "no exit status"
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


_REMOTE_TYPES: dict[type, type[PodRemoteError]] = {}
# A remote StopIteration must not end the client's iteration silently (PEP 479): it arrives as a
# RuntimeError, as a StopIteration raised inside a generator does.
_NEVER_MIXED = {"StopIteration": RuntimeError, "StopAsyncIteration": RuntimeError}


def _takes_a_message(builtin: type[Exception]) -> bool:
    try:
        builtin("message")
    except Exception:
        return False
    return True


def _message_init(
    self: PodRemoteError, message: str, *, remote_type: str = "", remote_traceback: str = "", mro: Any = ()
) -> None:
    """``PodRemoteError.__init__`` for a builtin whose own wants other arguments (``UnicodeDecodeError``'s five)."""
    BaseException.__init__(self, message)
    self.remote_type = remote_type
    self.remote_traceback = remote_traceback
    self.remote_mro = tuple(mro)


def _group_new(cls: type[BaseException], message: str, *args: Any, **kwargs: Any) -> Any:
    """An ``ExceptionGroup`` needs members: one ``PodRemoteError`` with the message (the pod's own members
    are in the remote traceback)."""
    group: Any = vars(builtins)["ExceptionGroup"]  # 3.11+: only called for its subclasses
    return group.__new__(cls, str(message), [PodRemoteError(str(message))])


def _mixed_type(builtin: type[Exception]) -> type[PodRemoteError]:
    """``PodRemoteError[builtin]``: a PodRemoteError that is also *builtin*, made from one message."""
    name = f"PodRemoteError[{builtin.__name__}]"
    namespace: dict[str, Any] = {"__module__": "pypods", "__qualname__": name}
    if not _takes_a_message(builtin):
        namespace["__init__"] = _message_init
        group = getattr(builtins, "BaseExceptionGroup", None)
        if group is not None and issubclass(builtin, group):
            namespace["__new__"] = _group_new
    try:
        cls = type(name, (PodRemoteError, builtin), namespace)
        cls("message")  # a builtin whose __new__ still refuses one message: plain PodRemoteError
    except TypeError:  # or whose layout cannot be mixed in
        return PodRemoteError
    return cls


def remote_error_type(mro: list[str] | tuple[str, ...]) -> type[PodRemoteError]:
    """Return a PodRemoteError subclass that also derives from the nearest builtin in *mro*."""
    for name in mro:
        module, _, qualname = name.rpartition(".")
        if module != "builtins":
            continue
        builtin = _NEVER_MIXED.get(qualname) or getattr(builtins, qualname, None)
        if not isinstance(builtin, type) or not issubclass(builtin, Exception):
            continue  # never make a client-side KeyboardInterrupt or SystemExit out of a pod's
        if builtin is Exception:
            return PodRemoteError
        cached = _REMOTE_TYPES.get(builtin)
        if cached is None:
            cached = _REMOTE_TYPES[builtin] = _mixed_type(builtin)
        return cached
    return PodRemoteError


def _rebuild_remote_error(mro: tuple[str, ...], args: tuple[Any, ...]) -> PodRemoteError:
    """Unpickle a ``PodRemoteError`` as the same builtin-mixing subclass (see ``__reduce__``)."""
    cls = remote_error_type(mro)
    try:
        exc = cls(*args[:1])
    except TypeError:  # pragma: no cover - remote_error_type only returns classes built from one message
        exc = PodRemoteError(*args[:1])
    exc.args = tuple(args)
    return exc


for _cls in (
    PodError,
    PodBuildError,
    PodConfigError,
    PodNotFoundError,
    PodSerializationError,
    PodRemoteError,
    PodClosedError,
    PodWorkerError,
    PodCrashedError,
    PodCrashLoopError,
    PodTimeoutError,
    PodProtocolError,
):
    _cls.__module__ = "pypods"
