"""The crash brake: stop restarting a pod whose workers keep dying, and recover as a supervisor does.

Policy (one brake per pod, shared by the pools its reloads open):

1. Strikes are crashes (a worker that died, also while starting) and reloads (the pod's source
   changed). Timeouts, protocol errors and closes never count.
2. ``CRASH_LIMIT`` strikes within ``CRASH_WINDOW`` seconds trip it: calls raise ``PodCrashLoopError``
   at once, without starting a worker, for a backoff delay.
3. After the delay, one call (the probe) may try a fresh worker while the others still fail fast.
   If its worker does not crash, the brake re-arms: strikes forgotten, delay back to its first value.
   If it crashes, the brake trips again with the delay doubled, up to ``BACKOFF_MAX``.
"""

from __future__ import annotations

import collections
import copy
import threading
import time

from .._errors import PodCrashLoopError, PodError

CRASH_LIMIT = 5  # strikes ...
CRASH_WINDOW = 10.0  # ... within this many seconds trip the brake
BACKOFF_FIRST = 1.0  # seconds before the first probe after a trip
BACKOFF_MAX = 60.0  # the delay doubles after each failed probe, up to this


class CrashBrake:
    """Count a pod's crashes and reloads; trip, back off, let one probe through, re-arm on its success."""

    def __init__(
        self,
        pod: str,
        limit: int = CRASH_LIMIT,
        window: float = CRASH_WINDOW,
        first: float = BACKOFF_FIRST,
        most: float = BACKOFF_MAX,
    ) -> None:
        self.pod = pod
        self.limit, self.window, self.first, self.most = limit, window, first, most
        # (when, what, whether a crash) of the last *limit* strikes
        self._strikes: collections.deque[tuple[float, str, bool]] = collections.deque(maxlen=limit)
        self._reloads = 0  # reloads among the strikes that tripped it
        self._lock = threading.Lock()  # the pod's sync pools (current and draining) share it
        self.tripped: PodCrashLoopError | None = None  # the error calls get while it is tripped
        self._delay = first  # the backoff the next trip waits
        self._retry_at = 0.0
        self._probing = False

    def forget_after_fork(self) -> None:
        """In a forked child: a parent's thread may hold the lock, and the parent's strikes are not ours."""
        self._strikes.clear()
        self._reloads = 0
        self._lock = threading.Lock()
        self.tripped = None
        self._delay = self.first
        self._retry_at = 0.0
        self._probing = False

    def crashed(self, error: PodError) -> None:
        """Count a crash; while tripped, a crash (the probe's worker) trips it again, for longer."""
        self._strike(str(error).split("\n", 1)[0], retrip=True)

    def reloaded(self) -> None:
        """Count a reload (the pod's source changed), or raise if tripped and still backing off.

        Raises:
            PodCrashLoopError: this reload tripped the brake, or it is tripped and backing off.
        """
        with self._lock:
            if self.tripped is not None:
                self._check()
                return  # due a probe: the call after this reload is it
        self._strike(f"pod {self.pod!r} reloaded: its source changed", retrip=False)
        with self._lock:
            if self.tripped is not None:
                raise self._error()

    def admit(self) -> bool:
        """Let a call in: False normally, True for the one probe after a backoff.

        Raises:
            PodCrashLoopError: tripped and backing off, or another call is the probe.
        """
        with self._lock:
            if self.tripped is None:
                return False
            self._check()
            self._probing = True
            return True

    def check(self) -> None:
        """Raise if tripped and backing off (a crash just noted may have tripped it).

        Raises:
            PodCrashLoopError: tripped, and its backoff has not passed.
        """
        with self._lock:
            if self.tripped is not None and time.monotonic() < self._retry_at:
                raise self._error()

    def probed(self, crashed: bool) -> None:
        """The probe ended: re-arm unless its worker crashed (then ``crashed()`` tripped it again)."""
        with self._lock:
            self._probing = False
            if not crashed and self.tripped is not None:
                self.tripped = None
                self._strikes.clear()
                self._delay = self.first

    def _check(self) -> None:
        if self._probing or time.monotonic() < self._retry_at:
            raise self._error()

    def _error(self) -> PodCrashLoopError:
        assert self.tripped is not None
        error = copy.copy(self.tripped)
        wait = self._retry_at - time.monotonic()
        when = f"Next try of a fresh worker in {wait:.1f}s." if wait > 0 else "A fresh worker is being tried now."
        error.args = (f"{error.args[0]}\n{when}",)
        return error

    def _strike(self, text: str, retrip: bool) -> None:
        now = time.monotonic()
        with self._lock:
            if self.tripped is not None:
                if retrip:  # the probe (or a call let in before the trip) crashed: back off longer
                    self._trip(now)
                return
            self._strikes.append((now, text, retrip))
            if len(self._strikes) == self.limit and now - self._strikes[0][0] < self.window:
                strikes = [text for _, text, _ in self._strikes]
                self._reloads = sum(1 for *_, crash in self._strikes if not crash)
                listed = "".join(f"\n  {i}. {text}" for i, text in enumerate(strikes, 1))
                what = "crashed" if self._reloads == 0 else "crashed or reloaded"
                self.tripped = PodCrashLoopError(
                    f"pod {self.pod!r}: its worker {what} {self.limit} times in {self.window:g}s; "
                    f"not restarting it for a while (the delay doubles up to {self.most:g}s while it keeps "
                    f"crashing). Fix the cause; a call after the delay tries one fresh worker. "
                    f"The strikes:{listed}",
                    crashes=strikes,
                )
                self._trip(now)

    def _trip(self, now: float) -> None:
        self._retry_at = now + self._delay
        self._delay = min(self._delay * 2, self.most)
