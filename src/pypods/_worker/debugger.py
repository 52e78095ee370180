"""Give ``breakpoint()`` and ``pdb.set_trace()`` in a pod a pdb prompt at the client's terminal.

The pod never gets the terminal itself. The client passes one end of a private socketpair (fd
number in ``$PYPODS_DEBUG_FD``, removed from the environment at once so subprocesses do not see
it); pdb's stdout and stdin here are that socket, in messages of a tag byte and a 4-byte length:
``O`` text to show, ``I`` "read me a line" (the client reads it from its own stdin and answers
``L`` with the line, empty at end of file). The client shows the text escaped, so the pod cannot
drive the terminal, and reads a line only when asked, while the pod's prompt is on the screen.

``pdb`` is imported only when a breakpoint is hit (it costs 40-60 ms): ``pdb.set_trace`` is
redirected by a finder that patches the module as it is imported.
"""

from __future__ import annotations

import io
import os
import socket
import struct
import sys
import threading
from typing import Any, Callable, Optional

ENV = "PYPODS_DEBUG_FD"
_HEADER = struct.Struct(">cI")  # tag, payload length
MAX_LINE = 1 << 16


class _Channel:
    def __init__(self, fd: int) -> None:
        self.sock = socket.socket(fileno=fd)
        self.lock = threading.Lock()  # one debugger at a time (threads of the pod)

    def send(self, tag: bytes, data: bytes) -> None:
        self.sock.sendall(_HEADER.pack(tag, len(data)) + data)

    def _exactly(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    def line(self) -> str:
        self.send(b"I", b"")
        try:
            tag, size = _HEADER.unpack(self._exactly(_HEADER.size))
            if tag != b"L" or size > MAX_LINE:
                return ""
            return self._exactly(size).decode("utf-8", "replace")
        except (OSError, EOFError, struct.error):
            return ""  # the client went away: pdb sees end of file and continues


class _Out(io.TextIOBase):
    def __init__(self, channel: _Channel) -> None:
        self.channel = channel

    def write(self, text: str) -> int:
        try:
            self.channel.send(b"O", text.encode("utf-8", "backslashreplace"))
        except OSError:
            pass
        return len(text)

    def flush(self) -> None:
        pass


class _In(io.TextIOBase):
    def __init__(self, channel: _Channel) -> None:
        self.channel = channel

    def readline(self, size: Any = -1) -> str:  # type: ignore[override]
        return self.channel.line()


_channel: Optional[_Channel] = None


def _debugger() -> Any:
    import pdb

    assert _channel is not None
    stdin: Any = _In(_channel)
    stdout: Any = _Out(_channel)
    debugger = pdb.Pdb(stdin=stdin, stdout=stdout, nosigint=True)
    debugger.use_rawinput = False
    return debugger


def _breakpoint(*args: Any, **kwargs: Any) -> None:
    _debugger().set_trace(sys._getframe(1))


def _set_trace(*args: Any, header: Optional[str] = None, **kwargs: Any) -> None:
    debugger = _debugger()
    if header is not None:
        debugger.message(header)
    debugger.set_trace(sys._getframe(1))


class _PatchedLoader:
    def __init__(self, real: Any) -> None:
        self.real = real

    def create_module(self, spec: Any) -> Any:
        return self.real.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self.real.exec_module(module)
        module.set_trace = _set_trace

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class _PdbFinder:
    """Patch ``pdb.set_trace`` as ``pdb`` is imported (whoever imports it first)."""

    @staticmethod
    def find_spec(name: str, path: Any = None, target: Any = None) -> Any:
        if name != "pdb":
            return None
        import importlib.machinery

        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _PatchedLoader(spec.loader)  # type: ignore[assignment]
        return spec


def install() -> Optional[Callable[..., None]]:
    """The breakpoint hook at the client's terminal, or None (no channel: the client is not at one)."""
    global _channel
    raw = os.environ.pop(ENV, "")
    if not raw.isdigit():
        return None
    try:
        _channel = _Channel(int(raw))
    except OSError:
        return None
    if "pdb" in sys.modules:
        sys.modules["pdb"].set_trace = _set_trace  # type: ignore[attr-defined]
    else:
        sys.meta_path.insert(0, _PdbFinder)
    return _breakpoint


def attach(fd: int) -> None:
    """In a worker forked from a template: debug over *fd* (the template installed the finder)."""
    global _channel
    _channel = _Channel(fd)
    if "pdb" in sys.modules:
        sys.modules["pdb"].set_trace = _set_trace  # type: ignore[attr-defined]
    elif _PdbFinder not in sys.meta_path:
        sys.meta_path.insert(0, _PdbFinder)
    sys.breakpointhook = _breakpoint
