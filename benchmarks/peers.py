"""The work the peers run (importable by their child processes) and the peers' servers."""

from __future__ import annotations

import os
import struct
import sys


def add(a, b):
    return a + b


def size(value):
    return len(value)


def echo(value):
    return value


def pipe_echo_child(read_fd: int, write_fd: int, spin: float = 0.0) -> None:
    """The floor: read a length-prefixed message, write it back, until EOF (spinning first if asked)."""
    import select
    import time

    poll = select.poll()
    poll.register(read_fd, select.POLLIN)
    while True:
        if spin:
            end = time.perf_counter() + spin
            while not poll.poll(0) and time.perf_counter() < end:
                pass
        header = os.read(read_fd, 4)
        if len(header) < 4:
            return
        (length,) = struct.unpack("<i", header)
        data = bytearray()
        while len(data) < length:
            chunk = os.read(read_fd, length - len(data))
            if not chunk:
                return
            data += chunk
        view = memoryview(header + data)
        while view:
            view = view[os.write(write_fd, view) :]


def mp_pipe_child(conn) -> None:  # multiprocessing.Pipe with pickle
    while True:
        try:
            name, args = conn.recv()
        except EOFError:
            return
        conn.send(globals()[name](*args))


RPYC_CONFIG = {"allow_public_attrs": True, "allow_pickle": True}


def rpyc_server(socket_path: str) -> None:
    import rpyc
    from rpyc.utils.classic import obtain
    from rpyc.utils.server import OneShotServer

    class Service(rpyc.Service):
        def exposed_add(self, a, b):
            return a + b

        def exposed_size(self, value):
            return len(value)

        def exposed_echo(self, value):
            return obtain(value)  # a copy, not a proxy to the caller's object (like for like)

    OneShotServer(Service, socket_path=socket_path, protocol_config=RPYC_CONFIG).start()


EXECNET_LOOP = """
def add(a, b):
    return a + b

def echo(value):
    return value

while True:
    name, args = channel.receive()
    channel.send({"add": add, "echo": echo}[name](*args))
"""


if __name__ == "__main__" and sys.argv[1:2] == ["pipe"]:
    pipe_echo_child(0, 1, float(sys.argv[2]) if len(sys.argv) > 2 else 0.0)


def spin(n):
    total = 0
    for i in range(n):
        total += i * i
    return total
