"""The client's side of live objects, without I/O: which ids a worker made, refs to them, and the call names.

A worker answers a call whose result stays in the pod with ``"object": id`` (``_worker/objects.py``
has the grammar of the names that reach it). Every id is checked here: it must be an int that no
earlier reply of that connection used, so a pod cannot make the client hold a handle twice, or one it
did not just make, and the connection's live count is bounded.
"""

from __future__ import annotations

import threading
from typing import Any

# A worker that claims more live objects than this at once is hostile (its own limit is lower).
MAX_LIVE = 1_000_000
# Replies are decoded by their callers, in any order, so ids may arrive out of order: an id may be
# at most MAX_AHEAD past the highest seen, and at most MAX_GAPS skipped ids wait to come.
MAX_AHEAD = 1024
MAX_GAPS = 4096


class ObjectLedger:
    """One connection's live objects: ids seen (they only grow), ids live, releases not yet sent."""

    __slots__ = ("gaps", "last", "live", "lock", "pending")

    def __init__(self) -> None:
        self.last = 0
        self.gaps: set[int] = set()  # ids below ``last`` not seen yet (their replies are still being decoded)
        self.live: set[int] = set()
        self.pending: list[int] = []  # released here (close, garbage collection), not yet told
        self.lock = threading.Lock()

    def created(self, oid: Any) -> str | None:
        """Record a new id; return why it is forged (not an int, not fresh, too many), else None."""
        if type(oid) is not int:
            return f"object id {oid!r} is not an int"
        with self.lock:
            if len(self.live) >= MAX_LIVE:
                return f"more than {MAX_LIVE} live objects"
            if oid > self.last:
                skipped = oid - self.last - 1
                if skipped >= MAX_AHEAD or len(self.gaps) + skipped > MAX_GAPS:
                    return f"object id {oid} is too far past the last ({self.last})"
                self.gaps.update(range(self.last + 1, oid))
                self.last = oid
            elif oid in self.gaps:
                self.gaps.discard(oid)
            else:
                return f"object id {oid!r} is not a fresh id (it was used before)"
            self.live.add(oid)
        return None

    def release(self, oid: int) -> bool:
        """Forget *oid* (idempotent); True if it was live, so its release must reach the worker."""
        with self.lock:
            if oid not in self.live:
                return False
            self.live.discard(oid)
            self.pending.append(oid)
            return True

    def prefix(self) -> str:
        """The releases to send ahead of the next call's name (``~1,2;``), taken now; "" for none."""
        if not self.pending:
            return ""
        with self.lock:
            pending, self.pending = self.pending, []
        return "~" + ",".join(map(str, pending)) + ";"


class ObjectRef:
    """What a call returns for an object that stays in the pod; the pool binds it to its worker."""

    __slots__ = ("cls", "conn", "index", "ledger", "oid", "pool")

    def __init__(self, oid: int, cls: str, ledger: ObjectLedger) -> None:
        self.oid = oid
        self.cls = cls
        self.ledger = ledger
        self.conn: Any = None  # the connection (worker) it lives in, and its pool slot
        self.index = -1
        self.pool: Any = None  # the pool that holds that worker (a reload's new pool does not)

    def label(self) -> str:
        return f"{self.cls} object {self.oid}"


def with_refs(
    name: str, args: tuple[Any, ...], kwargs: dict[str, Any], refs: list[tuple[Any, int]]
) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    """The call name and arguments with handles replaced by None and named in the name (``?0:3,=m:5``)."""
    if not refs:
        return name, args, kwargs
    positional = list(args)
    keywords = dict(kwargs)
    parts = []
    for where, oid in refs:
        if isinstance(where, int):
            positional[where] = None
            parts.append(f"{where}:{oid}")
        else:
            keywords[where] = None
            parts.append(f"={where}:{oid}")
    return name + "?" + ",".join(parts), tuple(positional), keywords
