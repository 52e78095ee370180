"""Version parsing with packaging 21.3, which still accepts legacy (non-PEP 440) versions."""

import packaging
from packaging.version import parse


def packaging_version() -> str:
    """The version of `packaging` installed in this pod."""
    return packaging.__version__


def describe_version(text: str) -> str:
    """How this pod's `packaging` understands a version string."""
    return f"{type(parse(text)).__name__}({text!r})"
