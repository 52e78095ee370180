"""Make a forked child forget its parent's workers, so it starts its own on first use.

After ``os.fork`` (a ``multiprocessing`` fork child, a ``gunicorn --preload`` worker) the child holds
copies of the parent's pipes, pidfds and shared-memory sockets, and the parent's threads are gone
from it, perhaps in the middle of a call and holding locks. Reading or writing those pipes would
steal the parent's replies, and ending those workers (an ``atexit`` handler, a finalizer) would
kill them under the parent. So, in the child only, right after the fork, every tracked object's
``_forget_after_fork()`` runs: locks are made anew, the inherited workers are dropped and our
copies of their descriptors closed (the parent's copies stay open), and nothing is ever signalled.
A pool then finds its slots empty and starts the child's own workers on the next call.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from typing import TYPE_CHECKING, Any, Protocol

from .._worker import sharedmem

if TYPE_CHECKING:
    from collections.abc import Callable


class Forgetful(Protocol):
    """An object holding per-process state: ``_forget_after_fork()`` runs in a forked child."""

    def _forget_after_fork(self) -> None: ...


_tracked: weakref.WeakSet[Any] = weakref.WeakSet()
_resets: list[Callable[[], None]] = []


def track(obj: Forgetful) -> None:
    """Call ``obj._forget_after_fork()`` in every child forked while *obj* lives (held weakly)."""
    _tracked.add(obj)


def on_fork(reset: Callable[[], None]) -> None:
    """Call *reset* in every forked child, before the tracked objects forget (module-level locks)."""
    _resets.append(reset)


def _after_fork_in_child() -> None:
    # One thread runs here, before any Python code of the child: never raise out of a fork hook.
    for reset in list(_resets):
        try:
            reset()
        except Exception:  # pragma: no cover - a hook that failed must not break the fork
            logging.getLogger("pypods").debug("pypods: a fork reset failed", exc_info=True)
    for obj in list(_tracked):
        try:
            obj._forget_after_fork()
        except Exception:  # pragma: no cover
            logging.getLogger("pypods").debug("pypods: forgetting %r after fork failed", obj, exc_info=True)


def _new_token_lock() -> None:
    sharedmem._token_lock = threading.Lock()  # a parent's thread may have held it at the fork


if hasattr(os, "register_at_fork"):
    on_fork(_new_token_lock)
    os.register_at_fork(after_in_child=_after_fork_in_child)
