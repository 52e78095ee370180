"""Cache a pod's description (its functions, signatures, docstrings) so a load can skip starting a worker.

The cache is keyed by the environment's key and the hashes of ``pod.py`` and every file of the pod's
own folder that the worker had imported when it described the pod; editing any of them, or
changing the environment, invalidates it.
"""

from __future__ import annotations

import hashlib
import os
from typing import TYPE_CHECKING, Any

from .._worker import codec, decoding

if TYPE_CHECKING:
    from .layout import PodLayout

FILE = "description.bson"  # our own codec: defaults keep their exact types (tuples, bytes, ...)


def _digest(layout: PodLayout, env_key: str, files: list[str]) -> str | None:
    sha = hashlib.sha256(env_key.encode())
    for relative in sorted(set(files) | {"pod.py"}):
        path = layout.pod_dir / relative
        try:
            data = path.read_bytes()
        except OSError:
            return None
        sha.update(relative.encode() + b"\0" + hashlib.sha256(data).digest())
    return sha.hexdigest()


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
