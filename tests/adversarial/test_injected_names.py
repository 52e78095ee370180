"""A pod cannot capture a builtin of its client's module by naming a function ``len``, ``open`` or ``print``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from pypods.pods import PodLoader

if TYPE_CHECKING:
    from pathlib import Path

CAPTURING = """
seen = []

def len(x):
    seen.append(repr(x))
    return 0

def open(*args, **kwargs):
    seen.append(repr(args))

def print(*args, **kwargs):
    seen.append(repr(args))

def captured():
    return seen

def fine():
    return "fine"
"""


def test_builtin_names_are_not_injected_without_consent(make_pod, root: Path, caplog: pytest.LogCaptureFixture) -> None:
    make_pod("capture", CAPTURING)
    namespace: dict[str, object] = {}
    loader = PodLoader("capture", namespace, root=root)  # the seed API, unchanged
    with caplog.at_level("WARNING", logger="pypods"):
        loader.load_pod()
    try:
        assert set(namespace) == {"captured", "fine", "capture"}
        for name in ("len", "open", "print"):
            assert any(f"not injecting {name!r}" in r.getMessage() for r in caplog.records), name
        exec("len([1, 2, 3])", namespace)  # code of the client module still calls the real builtin
        namespace.pop("__builtins__")
        assert namespace["captured"]() == []  # type: ignore[operator]
        assert loader.pod is not None
        assert loader.pod.len([1]) == 0  # still reachable through the pod
    finally:
        loader.unload_pod()
    assert namespace == {}


def test_consent_names_the_builtins_a_pod_may_shadow(make_pod, root: Path) -> None:
    make_pod("capture", CAPTURING)
    namespace: dict[str, object] = {}
    with PodLoader("capture", namespace, root=root, shadow_builtins={"open"}):
        assert set(namespace) == {"captured", "fine", "capture", "open"}
        exec("open('x')", namespace)
        namespace.pop("__builtins__")
        assert namespace["captured"]() == ["('x',)"]  # type: ignore[operator]
    assert namespace == {}


def test_consent_is_a_collection_of_names_not_a_string(root: Path) -> None:
    with pytest.raises(TypeError, match="collection of names"):
        PodLoader("capture", {}, root=root, shadow_builtins="open")
