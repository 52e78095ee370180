"""Text from a pod made safe to show on a terminal: control characters written as visible escapes.

A pod's stderr, and the strings ``pypods call`` prints, are the pod's own bytes. On a terminal, a
control character is a command (ESC ``[2K`` erases the line, OSC 52 writes the clipboard, CR lets
a line overwrite the one before it, so a pod could forge ``pypods:`` lines), so every C0 and C1
control but tab and newline, and DEL, is shown as ``\\xNN`` instead. So are the bidirectional
controls (U+202E and kin, "Trojan Source") and the line/paragraph separators, shown as ``\\uNNNN``:
a terminal that reorders text by them would show a pod's ``evil.py`` as something else.
Output that is not a terminal (a file, a pipe) gets the text unchanged.
"""

from __future__ import annotations

import re
from typing import Any

# C0 but tab and newline, DEL, C1; the bidi marks, embeddings, overrides and isolates; U+2028/U+2029.
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """*text* with every control character except tab and newline written as ``\\xNN`` (bidi ones ``\\uNNNN``)."""
    return _CONTROLS.sub(_visible, text)


def is_terminal(stream: Any) -> bool:
    """True when *stream* is a terminal (a closed or odd stream counts as one: escaping is the safe side)."""
    try:
        return bool(stream.isatty())
    except Exception:
        return True


def for_terminal(text: str, stream: Any) -> str:
    """*text* escaped when *stream* is a terminal, else unchanged."""
    return escape_controls(text) if is_terminal(stream) else text
