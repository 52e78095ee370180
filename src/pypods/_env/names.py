"""Check a pod name before it touches the disk: an identifier, never a path."""

from __future__ import annotations

import keyword
import unicodedata


def check_pod_name(name: object) -> str:
    """Return *name* if it is a valid pod name.

    Raises:
        ValueError: the name is not a str, not a Python identifier, or a keyword (``"../evil"``,
            ``"my-pod"``, ``""``, ``"class"``): pods import as ``pods.<name>``, so a name must be
            an identifier, which also keeps it from ever being a path.
    """
    if not isinstance(name, str):
        raise ValueError(f"pod name must be a str, not {type(name).__name__}")
    if not name.isidentifier() or keyword.iskeyword(name) or unicodedata.normalize("NFKC", name) != name:
        raise ValueError(
            f"invalid pod name {name!r}: a pod name must be a Python identifier (letters, digits, "
            "underscores; not starting with a digit) and not a keyword, e.g. 'hello_world_pod'"
        )
    return name
