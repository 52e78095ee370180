"""The peers a pod is compared with, started once and called the same way: ``call(name, *args)``.

multiprocessing.Pipe + pickle, ProcessPoolExecutor(1), execnet and rpyc each run ``add`` and ``echo``
in a child process; a peer that is not installed (``pip install -e .[bench]``) is left out with a note.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import time
from typing import TYPE_CHECKING, Any

import peers

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path


class Peers:
    """The peers' child processes, for the lifetime of one benchmark section."""

    def __init__(self, base: Path) -> None:
        self.notes: list[str] = []
        self._closers: list[Callable[[], object]] = []
        self._calls: dict[str, Callable[[str, tuple[Any, ...]], Any]] = {}
        self._pipe()
        self._executor()
        self._execnet()
        self._rpyc(base)

    def _pipe(self) -> None:
        parent, child = multiprocessing.Pipe()
        proc = multiprocessing.Process(target=peers.mp_pipe_child, args=(child,), daemon=True)
        proc.start()

        def call(name: str, args: tuple[Any, ...]) -> Any:
            parent.send((name, args))
            return parent.recv()

        self._calls["multiprocessing.Pipe + pickle"] = call
        self._closers.append(lambda: (parent.close(), proc.join(5)))

    def _executor(self) -> None:
        executor = concurrent.futures.ProcessPoolExecutor(1)
        executor.submit(peers.add, 0, 0).result()
        functions = {"add": peers.add, "echo": peers.echo}
        self._calls["ProcessPoolExecutor(1)"] = lambda name, args: executor.submit(functions[name], *args).result()
        self._closers.append(executor.shutdown)

    def _execnet(self) -> None:
        try:
            import execnet
        except ImportError:
            self.notes.append("execnet not installed: `pip install -e .[bench]`")
            return
        gateway = execnet.makegateway("popen")
        channel = gateway.remote_exec(peers.EXECNET_LOOP)

        def call(name: str, args: tuple[Any, ...]) -> Any:
            channel.send((name, args))
            return channel.receive()

        self._calls["execnet (popen gateway, channel)"] = call
        self._closers.append(gateway.exit)

    def _rpyc(self, base: Path) -> None:
        try:
            import rpyc
            from rpyc.utils.classic import obtain
        except ImportError:
            self.notes.append("rpyc not installed: `pip install -e .[bench]`")
            return
        socket_path = str(base / f"rpyc-{time.perf_counter_ns()}.sock")
        server = multiprocessing.Process(target=peers.rpyc_server, args=(socket_path,), daemon=True)
        server.start()
        deadline = time.monotonic() + 10
        while not os.path.exists(socket_path) and time.monotonic() < deadline:
            time.sleep(0.01)
        connection = rpyc.utils.factory.unix_connect(socket_path, config=peers.RPYC_CONFIG)
        root = connection.root

        def call(name: str, args: tuple[Any, ...]) -> Any:
            if name == "echo":
                return obtain(root.echo(*args))  # a copy back, as the other contenders return
            return getattr(root, name)(*args)

        self._calls["rpyc (Unix socket)"] = call
        self._closers.append(lambda: (connection.close(), server.join(5)))

    def contenders(self, label: str, name: str, *args: Any) -> dict[str, Callable[[], Any]]:
        """``{"<peer> <label>": call}`` for every peer, each calling *name* with *args*."""
        return {
            f"{peer} {label}": (lambda call=call: call(name, args))  # type: ignore[misc]
            for peer, call in self._calls.items()
        }

    def close(self) -> None:
        for close in self._closers:
            close()
