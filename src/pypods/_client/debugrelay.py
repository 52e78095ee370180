"""Relay a pod's pdb session to the client's terminal (the worker side is ``_worker/debugger.py``).

One daemon thread per worker with ``debug`` on reads the worker's debug socket: ``O`` text is shown
on the client's stdout with control characters escaped (the pod must not drive the terminal), and
``I`` is answered with one line read from the client's stdin, only then. One prompt at a time
across all workers, and no log line of a pod cuts into it (``process._output_lock``).
"""

from __future__ import annotations

import socket
import struct
import sys
import threading
from typing import Callable

from .._terminal import escape_controls, is_terminal

_HEADER = struct.Struct(">cI")
MAX_TEXT = 1 << 20
_prompt_lock = threading.Lock()


def at_terminal() -> bool:
    """Whether the client's stdin and stdout are terminals (where a pdb prompt can work)."""
    try:
        return sys.stdin is not None and sys.stdout is not None and sys.stdin.isatty() and sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def _exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def relay(sock: socket.socket, pod_name: str, output_lock: Callable[[], threading.Lock]) -> None:
    """Serve the worker's debugger until its end of the socket closes."""
    try:
        while True:
            tag, size = _HEADER.unpack(_exactly(sock, _HEADER.size))
            if size > MAX_TEXT:
                return  # not a debugger's message: stop listening, the pod's pdb sees end of file
            payload = _exactly(sock, size)
            if tag == b"O":
                text = payload.decode("utf-8", "replace")
                if is_terminal(sys.stdout):
                    text = escape_controls(text)
                with output_lock():
                    sys.stdout.write(text)
                    sys.stdout.flush()
            elif tag == b"I":
                with _prompt_lock:
                    line = sys.stdin.readline()
                data = line.encode("utf-8", "replace")[: MAX_TEXT - 1]
                sock.sendall(_HEADER.pack(b"L", len(data)) + data)
            else:
                return
    except (OSError, EOFError, ValueError, struct.error):
        pass
    finally:
        sock.close()


def open_relay(pod_name: str, output_lock: Callable[[], threading.Lock]) -> tuple[socket.socket, threading.Thread]:
    """A socketpair for one worker's debugger: the worker's end (to pass it) and the running relay thread."""
    ours, theirs = socket.socketpair()
    thread = threading.Thread(
        target=relay, args=(ours, pod_name, output_lock), name=f"pypods-{pod_name}-pdb", daemon=True
    )
    thread.start()
    return theirs, thread
