"""Version parsing with packaging 24.1, which rejects legacy (non-PEP 440) versions."""

import packaging
from packaging.version import InvalidVersion, parse


def packaging_version() -> str:
    """The version of `packaging` installed in this pod."""
    return packaging.__version__


def describe_version(text: str) -> str:
    """How this pod's `packaging` understands a version string."""
    try:
        return f"{type(parse(text)).__name__}({text!r})"
    except InvalidVersion as exc:
        return f"rejected: {exc}"


def sorted_versions(versions: list) -> list:
    """Sort version strings the PEP 440 way."""
    return sorted(versions, key=parse)
