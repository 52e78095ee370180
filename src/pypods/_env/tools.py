"""Locate and run the ``uv`` binary (a dependency of pypods) with a clean, explicit environment."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

# Variables that would point uv, pip or Python at the caller's environment instead of the pod's.
_LEAKY = ("VIRTUAL_ENV", "CONDA_PREFIX", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PIP_REQUIRE_VIRTUALENV")


_find_lock = threading.Lock()


def uv_binary() -> str | None:
    """Path of uv: the one installed with pypods, else one on PATH, else None."""
    # uv's finder reads sysconfig, whose first use is not thread-safe (parallel `pypods sync`).
    with _find_lock:
        return _uv_binary()


def _clear() -> None:
    _uv_binary.cache_clear()


uv_binary.cache_clear = _clear  # type: ignore[attr-defined]


@functools.lru_cache(maxsize=1)
def _uv_binary() -> str | None:
    explicit = os.environ.get("PYPODS_UV")
    if explicit:
        return explicit if os.path.exists(explicit) else None
    try:
        from uv import find_uv_bin

        return str(find_uv_bin())
    except (ImportError, FileNotFoundError):
        return shutil.which("uv")


def clean_environ(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The client's environment minus anything that would leak the client's Python into a pod."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in _LEAKY and (not k.startswith("PYPODS_") or k == "PYPODS_SPIN_US")
    }
    if extra:
        env.update(extra)
    return env


def run_uv(args: Sequence[str], cwd: str, live: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ``uv ARGS`` in *cwd*, capturing its output (never through a shell).

    With *live* (stderr is a terminal), uv's own progress (downloads) is shown as it draws it.
    """
    binary = uv_binary()
    if binary is None:
        raise FileNotFoundError("uv")
    argv = [binary, *args]
    if live and hasattr(os, "openpty"):
        return _run_on_terminal(argv, cwd, clean_environ())
    env = clean_environ({"UV_NO_PROGRESS": "1", "NO_COLOR": "1"})
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)


_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def _run_on_terminal(argv: list[str], cwd: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Give uv a pseudo-terminal as stderr (it draws progress only on one), copy it to ours, keep its text."""
    import fcntl
    import termios

    master, slave = os.openpty()
    try:
        try:  # the same width as the user's terminal, so progress bars fit
            fcntl.ioctl(slave, termios.TIOCSWINSZ, fcntl.ioctl(2, termios.TIOCGWINSZ, b"\0" * 8))
        except OSError:
            pass
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
    finally:
        os.close(slave)
    out: list[bytes] = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.read() if proc.stdout else b""), daemon=True)
    reader.start()
    drawn = bytearray()
    try:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: uv closed the terminal (Linux)
                break
            if not data:
                break
            drawn += data
            os.write(2, data)
    finally:
        os.close(master)
        proc.wait()
        reader.join()
    lines = _ESCAPE.sub("", drawn.decode("utf-8", "replace")).replace("\r\n", "\n").split("\n")
    text = "\n".join(line.rsplit("\r", 1)[-1] for line in lines)
    return subprocess.CompletedProcess(argv, proc.returncode, b"".join(out).decode("utf-8", "replace"), text)


@functools.lru_cache(maxsize=32)
def uv_python_find(request: str) -> str | None:
    """Ask uv for an interpreter matching *request* (it knows uv-managed Pythons); None if none."""
    if uv_binary() is None:
        return None
    result = run_uv(["python", "find", "--no-project", request], cwd=os.getcwd())
    path = result.stdout.strip()
    return path if result.returncode == 0 and path else None


def uv_version() -> str | None:
    if uv_binary() is None:
        return None
    result = run_uv(["--version"], cwd=os.getcwd())
    return result.stdout.strip() or None
