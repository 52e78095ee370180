"""The original design's API, kept word for word: ``PodLoader`` for clients, ``PodListener`` for pods.

``PodLoader(pod_name, namespace).load_pod()`` creates the pod if missing and puts its functions
(and the pod itself, under its name) into *namespace*; ``unload_pod()`` takes exactly those names
back out and stops the worker.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from ._loader import Injection, Pod
from ._worker.codec import EncodeError, encode
from ._worker.decoding import DecodeError, decode

if TYPE_CHECKING:
    from collections.abc import Iterable, MutableMapping

__all__ = ["PodListener", "PodLoader"]


class PodLoader:
    """Load a pod's functions into a namespace (usually the caller's ``globals()``).

    Args:
        pod_name: the pod's name, a Python identifier (``ValueError`` otherwise, before any file
            is touched).
        namespace: where to inject the functions; None to inject nothing and use ``.pod``.
        shadow_builtins: names of builtins (``open``, ``len`` ...) the pod's functions may shadow in
            *namespace*, e.g. ``{"open"}``. A pod function named like any other builtin is not
            injected (a warning names it): it would capture every later use of that builtin in the
            module. It stays reachable as an attribute of the pod (``namespace[pod_name].open``).
        **options: ``root``, ``python``, ``workers``, ``timeout``, ``env``, ``start``,
            ``idle_timeout``, ``codec``, ``log``, ``start_timeout``: see ``pypods.Pod``; they
            override ``pod.toml``. ``reload=True`` (the default in interactive sessions) serves the
            next call from edited code and re-injects the functions.
    """

    def __init__(
        self,
        pod_name: str,
        namespace: MutableMapping[str, Any] | None = None,
        *,
        shadow_builtins: Iterable[str] = (),
        **options: Any,
    ) -> None:
        from ._env.names import check_pod_name

        self.pod_name = check_pod_name(pod_name)
        self.namespace = namespace
        if isinstance(shadow_builtins, str):
            raise TypeError(f"shadow_builtins must be a collection of names such as {{{shadow_builtins!r}}}, not a str")
        self.shadow_builtins = frozenset(shadow_builtins)
        self.options = options
        self.pod: Pod | None = None
        self._injection: Injection | None = None

    def load_pod(self) -> Pod:
        """Create the pod if it does not exist, start it, and inject its functions.

        Loading again first unloads what the previous load injected (a reload picks up edits).

        Raises:
            PodBuildError: the pod's environment could not be built.
            PodRemoteError: importing ``pod.py`` failed in the pod.
        """
        if self.pod is not None:
            self.unload_pod()
        pod = Pod(self.pod_name, **self.options)
        self.pod = pod
        self._inject()
        pod._on_reload(self._inject)
        return pod

    def _inject(self) -> None:
        """Put the pod's functions (and the pod, under its name) into the namespace; again after a reload."""
        if self.namespace is None or self.pod is None:
            return
        if self._injection is not None:
            self._injection.remove()
        injection = Injection(self.namespace, self.shadow_builtins)
        for name, function in self.pod._functions.items():
            injection.put(name, function)
        injection.put(self.pod_name, self.pod)
        self._injection = injection

    def unload_pod(self) -> None:
        """Remove the names ``load_pod`` injected (restoring any they shadowed) and stop the worker."""
        if self._injection is not None:
            self._injection.remove()
            self._injection = None
        if self.pod is not None:
            Pod.close(self.pod)
            self.pod = None

    def __enter__(self) -> PodLoader:
        self.load_pod()
        return self

    def __exit__(self, *exc: object) -> None:
        self.unload_pod()


class PodListener:
    """The original pod side of the protocol: one BSON message on stdin, one BSON reply on stdout.

    pypods' own workers do not use it (they keep a framed, persistent channel); it stays for code
    written against the original design.
    """

    def read_stdin(self) -> dict[str, Any] | None:
        """Read one BSON document from stdin: ``{"name", "args", "kwargs"}``; None (and an error on
        stderr) if it is not one."""
        try:
            message = decode(sys.stdin.buffer.read())
            if not {"name", "args", "kwargs"} <= set(message):
                raise ValueError("Corrupt pod input!")
        except (DecodeError, ValueError, ModuleNotFoundError) as exc:
            self.write_stderr(str(exc))
            return None
        return message

    def write_stdout(self, data: Any) -> None:
        """Write ``{"response": data}`` as BSON to stdout."""
        try:
            payload = encode({"response": data})
        except EncodeError as exc:
            self.write_stderr(str(exc))
            return
        sys.stdout.buffer.write(payload)
        sys.stdout.buffer.flush()

    def write_stderr(self, error: str) -> None:
        """Write ``{"error": error}`` as BSON to stderr."""
        if not isinstance(error, str):
            raise TypeError("Error message should be of type string.")
        sys.stderr.buffer.write(encode({"error": error}))
        sys.stderr.flush()
