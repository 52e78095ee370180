"""PyPods: call functions that live in pods (folders with their own environment) from any Python program.

``pypods.load("geo").area(2.0)`` runs ``area`` inside ``pods/geo/`` with that pod's own interpreter
and dependencies, served by a persistent worker; ``pypods.pods.PodLoader`` keeps the original
design's ``globals()``-injecting API.
"""

from __future__ import annotations

from ._aloader import AsyncPod, aload
from ._errors import (
    PodBuildError,
    PodClosedError,
    PodConfigError,
    PodCrashedError,
    PodCrashLoopError,
    PodError,
    PodNotFoundError,
    PodObjectLimitError,
    PodObjectLostError,
    PodProtocolError,
    PodRemoteError,
    PodSerializationError,
    PodTimeoutError,
    PodWorkerError,
)
from ._loader import Pod, load
from ._objects import AsyncPodObject, PodObject
from ._worker.codec import register
from .pods import PodListener, PodLoader

__version__ = "0.5.0"

__all__ = [
    "AsyncPod",
    "AsyncPodObject",
    "Pod",
    "PodBuildError",
    "PodClosedError",
    "PodConfigError",
    "PodCrashLoopError",
    "PodCrashedError",
    "PodError",
    "PodListener",
    "PodLoader",
    "PodNotFoundError",
    "PodObject",
    "PodObjectLimitError",
    "PodObjectLostError",
    "PodProtocolError",
    "PodRemoteError",
    "PodSerializationError",
    "PodTimeoutError",
    "PodWorkerError",
    "__version__",
    "aload",
    "load",
    "register",
]
