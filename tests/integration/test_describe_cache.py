"""The cached description: a second load starts no worker; an edit of pod.py or a module it imports re-describes."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pypods

if TYPE_CHECKING:
    from pathlib import Path


def test_unchanged_pod_loads_without_a_worker_and_edits_invalidate(make_pod, root: Path) -> None:
    pod_dir = make_pod("cached", "from pods.cached.helpers import helper\n\ndef one():\n    return 1\n")
    (pod_dir / "helpers.py").write_text("def helper():\n    return 'h'\n")
    with pypods.load("cached", root=root) as pod:
        assert len(pod.pids()) == 1
    with pypods.load("cached", root=root) as pod:
        assert pod.pids() == []  # described from the cache: no process yet
        assert sorted(pod.functions) == ["helper", "one"]
        assert pod.one() == 1  # the worker starts on the first call
        assert len(pod.pids()) == 1
    time.sleep(0.01)
    (pod_dir / "pod.py").write_text((pod_dir / "pod.py").read_text() + "\ndef two():\n    return 2\n")
    with pypods.load("cached", root=root) as pod:
        assert len(pod.pids()) == 1  # re-described by a worker
        assert pod.two() == 2
    (pod_dir / "helpers.py").write_text("def helper():\n    return 'h'\n\ndef helper2():\n    return 'h2'\n")
    (pod_dir / "pod.py").write_text((pod_dir / "pod.py").read_text())  # untouched
    with pypods.load("cached", root=root) as pod:
        assert "helper2" not in pod.functions  # pod.py imports only helper
        assert pod.helper() == "h"
    (pod_dir / "helpers.py").write_text("def helper():\n    '''Changed.'''\n    return 'H'\n")
    with pypods.load("cached", root=root) as pod:
        assert pod.helper.__doc__ == "Changed."
        assert len(pod.pids()) == 1


def test_eager_start_ignores_the_cache(make_pod, root: Path) -> None:
    make_pod("eager", "def one():\n    return 1\n")
    with pypods.load("eager", root=root):
        pass
    with pypods.load("eager", root=root, start="eager", workers=2) as pod:
        assert len(pod.pids()) == 2
