"""The README runs as written: its quick start verbatim in an empty folder, and every Python example in a project.

Blocks are fenced code blocks; a comment line ``<!-- readme: KEY -->`` just above a block marks it:
``quickstart`` (run in order, shell and Python, in one empty folder), ``pod`` (a shell block that
makes a pod the later examples use, run in their project), ``network`` / ``ray`` (run
under those markers), ``skip`` (not runnable as shown, such as an install command).
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
_MARK = re.compile(r"^<!-- readme: ([a-z, ]+) -->$")


@dataclasses.dataclass
class Block:
    lang: str
    code: str
    marks: frozenset[str]
    line: int


def blocks() -> list[Block]:
    found: list[Block] = []
    marks: set[str] = set()
    lines = README.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        mark = _MARK.match(line.strip())
        if mark:
            marks |= {m.strip() for m in mark[1].split(",")}
        elif line.startswith("```"):
            start, lang, body = i + 1, line[3:].strip(), []
            i += 1
            while not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            found.append(Block(lang, "\n".join(body) + "\n", frozenset(marks), start))
            marks = set()
        elif line.strip():
            marks = set()
        i += 1
    return found


def environ() -> dict[str, str]:
    """This interpreter's venv first on PATH (``python`` and ``pypods`` are ours), no PYPODS_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYPODS_")}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def test_blocks_are_found_and_marked() -> None:
    found = blocks()
    quick = [b for b in found if "quickstart" in b.marks]
    assert [b.lang for b in quick] == ["bash", "python", "bash"]
    assert quick[1].code.startswith("# client.py\n")
    assert not [b for b in found if b.lang == "python" and "skip" in b.marks], "every Python example must run"


def test_quick_start_runs_verbatim_in_an_empty_folder(tmp_path: Path) -> None:
    out, err = "", ""
    for block in (b for b in blocks() if "quickstart" in b.marks):
        if block.lang == "python":
            name = block.code.splitlines()[0].removeprefix("# ").strip()
            (tmp_path / name).write_text(block.code)
            continue
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block.code], cwd=tmp_path, env=environ(), capture_output=True,
            text=True, timeout=300, check=False,
        )  # fmt: skip
        assert result.returncode == 0, f"README line {block.line}: {result.stderr}"
        out, err = out + result.stdout, err + result.stderr
    assert out == "12.566370614359172\n[3, 2, 1]\n"
    steps = err.splitlines()
    assert steps[0] == f"pypods: geo: creating venv with Python {sys.version.split()[0]}"
    assert steps[-1].startswith("pypods: geo: ready (")


def _quickstart_pod() -> str:
    shell = next(b for b in blocks() if "quickstart" in b.marks and b.lang == "bash")
    return shell.code.split("<<'EOF'\n", 1)[1].split("\nEOF\n", 1)[0] + "\n"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project holding the quick start's geo pod, built, with its pods_typed stubs."""
    folder = tmp_path_factory.mktemp("readme")
    (folder / "pods" / "geo").mkdir(parents=True)
    (folder / "pods" / "geo" / "pod.py").write_text(_quickstart_pod())
    for block in (b for b in blocks() if "pod" in b.marks):  # the pods other examples use
        made = subprocess.run(["bash", "-euo", "pipefail", "-c", block.code], cwd=folder, check=False)
        assert made.returncode == 0, f"README line {block.line}"
    stubs = subprocess.run(
        [sys.executable, "-m", "pypods", "stubs"], cwd=folder, env=environ(), capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip
    assert stubs.returncode == 0, stubs.stderr
    return folder


def _examples() -> list[object]:
    params: list[object] = []
    for block in blocks():
        if block.lang != "python" or "quickstart" in block.marks:
            continue
        marks = [pytest.mark.network] if "network" in block.marks else []
        marks += [pytest.mark.ray, pytest.mark.slow] if "ray" in block.marks else []
        params.append(pytest.param(block, id=f"line{block.line}", marks=marks))
    return params


@pytest.mark.parametrize("block", _examples())
def test_python_example_runs(block: Block, project: Path) -> None:
    if "ray" in block.marks:
        pytest.importorskip("ray")
    script = project / f"example_{block.line}.py"
    script.write_text(block.code)
    result = subprocess.run(
        [sys.executable, script.name], cwd=project, env=environ(), capture_output=True, text=True, timeout=300,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"README line {block.line}:\n{block.code}\n{result.stderr}"
    assert "Traceback" not in result.stderr
