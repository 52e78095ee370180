"""Cache a pod's description (its functions, signatures, docstrings) so a load can skip starting a worker.

The cache is keyed by the environment's key and the hashes of ``pod.py`` and every file of the pod's
own folder that the worker had imported when it described the pod; editing any of them, or
changing the environment, invalidates it.

The file list comes from the pod's ``hello``, so it is hostile input: only regular files inside
the pod's folder are read (no absolute paths, no ``..``, no symlink leading out, no FIFO or
device), at most ``MAX_FILES`` of them and ``MAX_BYTES`` in all; anything else means no cache.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from .._worker import codec, decoding

if TYPE_CHECKING:
    from .layout import PodLayout

FILE = "description.bson"  # our own codec: defaults keep their exact types (tuples, bytes, ...)
DESCRIPTION_FORMAT = 2  # bumped when descriptions gain fields (2: classes and their methods, #22)
MAX_FILES = 1000  # files a hello may list for the cache key
MAX_BYTES = 64 * 1024 * 1024  # bytes read to hash them, all files together


def _digest(layout: PodLayout, env_key: str, files: list[Any]) -> str | None:
    """The cache key, or None if a listed file is not a regular file of the pod's folder (or too big)."""
    if len(files) > MAX_FILES or not all(isinstance(name, str) for name in files):
        return None
    base = os.path.realpath(layout.pod_dir)
    sha = hashlib.sha256(env_key.encode())
    sha.update(b"\0description %d\0" % DESCRIPTION_FORMAT)
    budget = MAX_BYTES
    for relative in sorted(set(files) | {"pod.py"}):
        file_hash = _hash_own_file(base, relative, budget)
        if file_hash is None:
            return None
        budget -= file_hash[1]
        sha.update(relative.encode() + b"\0" + file_hash[0])
    return sha.hexdigest()


def _hash_own_file(base: str, relative: str, budget: int) -> tuple[bytes, int] | None:
    """SHA-256 and size of *relative* under *base*, if it is a regular file inside it of at most *budget* bytes."""
    parts = PurePosixPath(relative).parts
    if not parts or "\0" in relative or PurePosixPath(relative).is_absolute() or ".." in parts:
        return None
    path = os.path.realpath(os.path.join(base, relative))
    if not path.startswith(os.path.join(base, "")):
        return None  # a symlink leading out of the pod's folder
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat then refuses it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > budget:
            return None
        sha = hashlib.sha256()
        size = 0
        while size <= info.st_size:  # a file growing while we read stops at its size + 1 chunk
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            size += len(chunk)
            sha.update(chunk)
        return (sha.digest(), size) if size <= budget else None
    except OSError:
        return None
    finally:
        os.close(fd)


def load(layout: PodLayout, env_key: str) -> list[dict[str, Any]] | None:
    """The cached description if still valid, else None."""
    try:
        cached = decoding.decode((layout.state / FILE).read_bytes())
        files = list(cached["files"])
    except (OSError, ValueError, KeyError, TypeError, ModuleNotFoundError):
        return None
    if cached.get("key") != _digest(layout, env_key, files):
        return None
    functions = cached.get("functions")
    return functions if isinstance(functions, list) else None


def store(layout: PodLayout, env_key: str, files: list[str], functions: list[dict[str, Any]]) -> None:
    """Remember a fresh description (written atomically; failures to write are ignored)."""
    key = _digest(layout, env_key, files)
    if key is None:
        return
    try:
        data = codec.encode({"key": key, "files": files, "functions": functions})
        layout.state.mkdir(parents=True, exist_ok=True)
        tmp = layout.state / (FILE + f".{os.getpid()}.tmp")
        tmp.write_bytes(bytes(data))
        os.replace(tmp, layout.state / FILE)
    except (OSError, TypeError, ValueError):
        pass
