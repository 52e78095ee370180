"""Run one Ray node (``ray start --block``) for the test cluster, and stop it when pytest is gone.

    python rayguard.py <pytest pid> <log file> <command...>

The guard leads its own session (the launcher started it so), runs the node in it, and stops the
node on SIGTERM (from the test session's cleanup) or as soon as the pytest process no longer
exists (it was killed with SIGKILL, so no cleanup of its own could run): SIGTERM to the node, a
grace period for Ray's own shutdown, then SIGKILL to the whole session's process group.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

GRACE = 20.0  # seconds Ray's shutdown may take on a loaded machine


def main(argv: list[str]) -> int:
    parent, log, command = int(argv[1]), argv[2], argv[3:]
    with open(log, "wb") as out:
        node = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def stop(*_: object) -> None:
        node.terminate()
        try:
            node.wait(GRACE)
        except subprocess.TimeoutExpired:
            pass
        os.killpg(0, signal.SIGKILL)  # our session: the node, what it started, and this guard

    signal.signal(signal.SIGTERM, stop)
    while node.poll() is None:
        try:
            os.kill(parent, 0)
        except ProcessLookupError:
            stop()
        time.sleep(1.0)
    return node.returncode or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
