"""Reading an actor's reply: raw bytes only, Ray's system errors raised, anything else refused unread."""

from __future__ import annotations

import types
from typing import Any

import pytest

from pypods._client import rayobjects


class Buffer:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def to_pybytes(self) -> bytes:
        return self.data


class RayError(Exception):
    pass


class TaskCancelledError(RayError):
    pass


class FakeRay:
    """Just enough of Ray: a core worker holding one object, and a ``ray.get`` that records its use."""

    def __init__(self, data: bytes | None, metadata: bytes) -> None:
        self.gets = 0
        core = types.SimpleNamespace(get_objects=lambda refs, timeout_ms: [(self._data, metadata, None)])
        self._data = None if data is None else Buffer(data)
        self._private = types.SimpleNamespace(worker=types.SimpleNamespace(global_worker=types.SimpleNamespace()))
        self._private.worker.global_worker.core_worker = core
        self.exceptions = types.SimpleNamespace(RayError=RayError, TaskCancelledError=TaskCancelledError)

    def get(self, ref: Any, timeout: float | None = None) -> Any:
        self.gets += 1
        raise RayError("the actor died (built from protobuf)")


def test_raw_bytes_are_read_as_they_are() -> None:
    assert rayobjects.read_raw(FakeRay(b"\x05\x00\x00\x00\x00", b"RAW"), "ref", 1.0) == b"\x05\x00\x00\x00\x00"
    assert rayobjects.read_raw(FakeRay(None, b"RAW"), "ref", None) == b""


@pytest.mark.parametrize("metadata", [b"XLANG", b"PYTHON", b"ACTOR_HANDLE", b"3", b"", b"RAWX"])
def test_objects_ray_would_unpickle_are_refused_unread(metadata: bytes) -> None:
    ray = FakeRay(b"\x80\x05cos\nsystem\n.", metadata)
    with pytest.raises(rayobjects.UnsafeObject):
        rayobjects.read_raw(ray, "ref", 1.0)
    assert ray.gets == 0  # never handed to Ray's deserializer


def test_ray_system_errors_are_raised_as_ray_builds_them() -> None:
    ray = FakeRay(b"", b"1")  # ACTOR_DIED
    with pytest.raises(RayError, match="actor died"):
        rayobjects.read_raw(ray, "ref", 1.0)
    assert ray.gets == 1
    with pytest.raises(TaskCancelledError):
        rayobjects.read_raw(FakeRay(b"", b"5"), "ref", 1.0)  # cancelled: not read (may be pickled)


def test_ray_is_imported_only_when_a_pod_asks_for_it() -> None:
    import subprocess
    import sys

    probe = "import sys, pypods, pypods._client.raypool; sys.exit('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], timeout=60).returncode == 0
