"""A pod cannot drive the user's terminal or write code into stubs (#20 item 4).

``pypods call`` runs on a real pseudo-terminal (its stdout and stderr are a tty), and again on pipes:
on the terminal the pod's control characters arrive as visible ``\\xNN`` text, on a pipe unchanged.
``pypods stubs`` is fed a hostile description: only identifiers become names in a ``.pyi``.
"""

from __future__ import annotations

import ast
import os
import pty
import select
import subprocess
import sys
import time
from typing import TYPE_CHECKING

from pypods import _stubs
from pypods._terminal import escape_controls

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

    from conftest import PodFactory

LOUD = """
import sys

def clip():
    return "\\x1b]52;c;SGVsbG8=\\x07\\x1b[2K\\rpypods: done\\x9b31m"

def noisy():
    sys.stderr.write("\\x1b]0;owned\\x07\\x1b[1Apypods: error: forged\\n")
    sys.stderr.flush()
    return 1
"""
CLIP = "\x1b]52;c;SGVsbG8=\x07\x1b[2K\rpypods: done\x9b31m"


def on_a_terminal(root: Path, *args: str) -> str:
    """Run ``pypods ARGS`` with stdout and stderr on a pseudo-terminal; what the terminal received."""
    leader, follower = pty.openpty()
    env = {**os.environ, "PYPODS_ROOT": str(root)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pypods", *args], stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, env=env
    )
    os.close(follower)
    received = bytearray()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not chunk:
                break
            received += chunk
        elif proc.poll() is not None:
            break
    proc.wait(timeout=30)
    os.close(leader)
    assert proc.returncode == 0, received.decode(errors="replace")[-2000:]
    return received.decode("utf-8", "surrogateescape")


def test_escape_controls_leaves_tab_and_newline_only() -> None:
    every = "".join(chr(code) for code in range(0xA1))
    shown = escape_controls(every)
    assert not [c for c in shown if (ord(c) < 0x20 and c not in "\t\n") or 0x7F <= ord(c) <= 0x9F]
    assert "\t\n" in shown
    assert escape_controls("\x1b[2K\r\x9b") == "\\x1b[2K\\x0d\\x9b"
    assert escape_controls("plain text, é, \U0001f600") == "plain text, é, \U0001f600"


def test_call_on_a_terminal_escapes_the_pods_text_and_stderr(make_pod: PodFactory, root: Path) -> None:
    make_pod("loud", LOUD)
    seen = on_a_terminal(root, "call", "loud", "clip")
    assert "\\x1b]52;c;SGVsbG8=\\x07\\x1b[2K\\x0dpypods: done\\x9b31m" in seen
    assert "\x1b]52" not in seen
    assert "\x9b" not in seen
    seen = on_a_terminal(root, "call", "loud", "noisy")
    assert "[loud] \\x1b]0;owned\\x07\\x1b[1Apypods: error: forged" in seen
    assert "\x1b]0;owned" not in seen


def test_call_on_a_pipe_prints_the_result_unchanged(make_pod: PodFactory, root: Path) -> None:
    make_pod("loud", LOUD)
    env = {**os.environ, "PYPODS_ROOT": str(root)}
    done = subprocess.run(
        [sys.executable, "-m", "pypods", "call", "loud", "clip"], capture_output=True, env=env, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout.decode()
    assert "\\x" not in out  # not escaped (click itself drops ANSI styles, CSI ... m, when piped)
    assert out.startswith("\x1b]52;c;SGVsbG8=\x07")
    assert "\rpypods: done" in out


HOSTILE_DESCRIPTION = [
    {
        "name": "f",
        "doc": 'ends in a quote"',
        "params": [{"name": "x=__import__('os').system('id')", "kind": 1}, {"name": "y", "kind": 1}],
    },
    {"name": "g", "params": [{"name": "class", "kind": 1}]},
    {"name": "h", "params": [{"name": "ok", "kind": 1, "annotation": "int"}]},
    {"name": "import os; os", "params": []},
    {"name": "def", "params": []},
]


def test_stubs_write_identifiers_only(tmp_path: Path) -> None:
    module = _stubs.module_stub(HOSTILE_DESCRIPTION)
    package = _stubs.package_stub({"evil": HOSTILE_DESCRIPTION})
    for text in (module, package):
        ast.parse(text)  # valid Python
        assert "__import__" not in text
        assert "import os; os" not in text
        assert "def def" not in text
    assert "def f(*args: Any, **kwargs: Any)" in module
    assert "def g(*args: Any, **kwargs: Any)" in module
    assert "def h(ok: int)" in module
    written = _stubs.write(tmp_path, {"evil": HOSTILE_DESCRIPTION})
    for path in written:
        if path.suffix == ".pyi":
            ast.parse(path.read_text())


def test_escape_controls_shows_bidi_controls_and_separators() -> None:
    assert escape_controls("exe.\u202etxt") == "exe.\\u202etxt"
    assert escape_controls("\u2066a\u2069\u200f\u061c\u2028\u2029") == "\\u2066a\\u2069\\u200f\\u061c\\u2028\\u2029"
    assert escape_controls("zwj \U0001f469\u200d\U0001f4bb, no-break\u00a0space") == (
        "zwj \U0001f469\u200d\U0001f4bb, no-break\u00a0space"
    )


DOCS = '''
def clip():
    """\\x1b]52;c;SGVsbG8=\\x07 [link=https://evil.example]docs[/link] [blink]x[/blink] exe.\\u202etxt"""
    return 1
'''


def test_describe_and_list_on_a_terminal_escape_the_pods_text(
    make_pod: PodFactory, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """rich passes ESC through and reads markup in a plain str: a docstring or folder name must be text only."""
    monkeypatch.setenv("COLUMNS", "400")  # rich would wrap the cells
    make_pod("docs", DOCS)
    (root / "pods" / "bad\x1b]0;owned\x07name").mkdir()
    seen = on_a_terminal(root, "describe", "docs")
    assert "\x1b]52" not in seen
    assert "\x1b]8;" not in seen  # no OSC 8 hyperlink made of the pod's markup
    assert "\u202e" not in seen
    assert "[link=https://evil.example]docs[/link]" in seen
    assert "\\x1b]52;c;SGVsbG8=\\x07" in seen
    seen = on_a_terminal(root, "list")
    assert "\x1b]0;owned" not in seen
    assert "bad\\x1b]0;owned\\x07name" in seen


def test_library_errors_show_a_pods_controls_as_text() -> None:
    """A PodError is printed by whatever excepthook or logger meets it, often on a terminal."""
    from pypods._errors import PodCrashedError, PodRemoteError, remote_error_type

    error = remote_error_type(["builtins.ValueError"])(
        "ValueError: \x1b]0;owned\x07\x1b[2K\rpypods: forged", remote_type="ValueError", remote_traceback="tb \x9b31m"
    )
    assert isinstance(error, PodRemoteError)
    assert isinstance(error, ValueError)
    text = str(error)
    assert "\x1b" not in text
    assert "\x9b" not in text
    assert "\r" not in text
    assert "\\x1b]0;owned\\x07\\x1b[2K\\x0dpypods: forged" in text
    assert error.args[0] == "ValueError: \x1b]0;owned\x07\x1b[2K\rpypods: forged"  # raw for code that wants it
    assert error.remote_traceback == "tb \x9b31m"
    crashed = PodCrashedError("worker died; last stderr:\n\x1b[1Apypods: ok", returncode=1)
    assert str(crashed) == "worker died; last stderr:\n\\x1b[1Apypods: ok"


INVALID_SIGNATURES = [
    {"name": "comment", "params": [{"name": "x", "kind": 1, "annotation": "int # "}]},
    {"name": "returns", "params": [], "returns": "int #"},
    {"name": "nul", "params": [], "doc": "a\x00b\rc"},
    {"name": "order", "params": [{"name": "kw", "kind": 4}, {"name": "y", "kind": 1}]},
    {"name": "default", "params": [{"name": "x", "kind": 1, "default": 1}, {"name": "y", "kind": 1}]},
    {"name": "twice", "params": [{"name": "x", "kind": 1}, {"name": "x", "kind": 1}]},
    {"name": "method", "params": [{"name": "self", "kind": 1}]},
]


def test_a_description_that_makes_invalid_python_still_gives_valid_stubs() -> None:
    """Each entry broke the whole .pyi (a SyntaxError: editors and mypy lost every pod's types)."""
    module = _stubs.module_stub(INVALID_SIGNATURES)
    package = _stubs.package_stub({"evil": INVALID_SIGNATURES})
    for text in (module, package):
        compile(text, "<stub>", "exec")
    assert "def comment(*args: Any, **kwargs: Any) -> Any" in module
    assert "def twice(*args: Any, **kwargs: Any) -> Any" in module
    assert "def method(self: Any) -> Any" in module  # a function may take self; a method stub may not twice
    assert "def method(self, *args: Any, **kwargs: Any) -> Any" in package
    assert '"""a\\x00b\\x0dc"""' in module  # the docstring kept, its controls as escapes


def test_verbose_log_lines_on_a_terminal_escape_a_pods_stderr(make_pod: PodFactory, root: Path) -> None:
    """With log = "logging" the pod's stderr lines are log records; `pypods -v` prints them on the terminal."""
    make_pod("loud", LOUD, toml='log = "logging"\n')
    seen = on_a_terminal(root, "-v", "call", "loud", "noisy")
    assert "\x1b]0;owned" not in seen
    assert "\\x1b]0;owned\\x07\\x1b[1Apypods: error: forged" in seen


def test_annotations_that_blow_up_the_parser_become_any() -> None:
    """A description is the pod's: an annotation of 10**5 unary minuses was a MemoryError, a.a.a... a RecursionError."""
    for annotation in ("-" * 100_000 + "1", "a." * 100_000 + "b", "int|" * 100_000 + "int", 42):
        info = {"name": "f", "params": [{"name": "x", "kind": 1, "annotation": annotation}], "returns": annotation}
        module = _stubs.module_stub([info])
        compile(module, "<stub>", "exec")
        assert "def f(x: Any) -> Any" in module
