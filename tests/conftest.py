"""Shared fixtures: a temp project root, an offline wheelhouse, pod factories, and a stray-process check."""

from __future__ import annotations

import os
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from wheelhouse import build_wheel

# The machine's interpreters, only where PYENV_ROOT names them: the suite never looks into the home folder.
PYENV = Path(os.environ.get("PYENV_ROOT") or "/nonexistent") / "versions"


def pythons() -> dict[str, str]:
    """Installed interpreters by ``major.minor`` (3.8+), for worker tests on each."""
    found: dict[str, str] = {}
    if PYENV.is_dir():
        for folder in sorted(PYENV.iterdir()):
            parts = folder.name.split(".")
            if len(parts) == 3 and parts[0] == "3" and int(parts[1]) >= 8 and (folder / "bin" / "python").exists():
                found[f"3.{parts[1]}"] = str(folder / "bin" / "python")
    found.setdefault(f"{sys.version_info[0]}.{sys.version_info[1]}", sys.executable)
    return found


LONG_TIMEOUT = 300  # seconds for tests marked slow, network or ray (the default is 30: pyproject.toml)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give tests marked slow/network/ray a longer timeout, unless they set their own."""
    for item in items:
        if item.get_closest_marker("timeout") is None and any(
            item.get_closest_marker(mark) for mark in ("slow", "network", "ray")
        ):
            item.add_marker(pytest.mark.timeout(LONG_TIMEOUT))


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No PYPODS_* setting from the developer's shell leaks into a test."""
    for key in list(os.environ):
        if key.startswith("PYPODS_"):
            monkeypatch.delenv(key)


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny wheels built by the test session: tinypkg 1.0 and 2.0, and helperpkg 0.1 (needs tinypkg)."""
    folder = tmp_path_factory.mktemp("wheelhouse")
    for version in ("1.0", "2.0"):
        build_wheel(folder, "tinypkg", version, {"tinypkg/__init__.py": f"VERSION = {version!r}\n"})
    build_wheel(
        folder,
        "helperpkg",
        "0.1",
        {"helperpkg/__init__.py": "import tinypkg\n\ndef which():\n    return tinypkg.VERSION\n"},
        requires=("tinypkg",),
    )
    return folder


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A fresh project folder; pods go to ``root / 'pods'``."""
    project = tmp_path / "project"
    project.mkdir()
    return project


PodFactory = Callable[..., Path]


@pytest.fixture
def make_pod(root: Path, wheelhouse: Path) -> PodFactory:
    """Write ``pods/<name>/pod.py`` (dedented) and, if given, requirements from the wheelhouse."""

    def make(name: str, source: str, requirements: tuple[str, ...] = (), toml: str = "") -> Path:
        pod_dir = root / "pods" / name
        pod_dir.mkdir(parents=True, exist_ok=True)
        (pod_dir / "pod.py").write_text(textwrap.dedent(source))
        lines = [f"--no-index\n--find-links {wheelhouse}\n"] if requirements else []
        (pod_dir / "requirements.txt").write_text("".join(lines) + "".join(r + "\n" for r in requirements))
        if toml:
            (pod_dir / "pod.toml").write_text(textwrap.dedent(toml))
        return pod_dir

    return make


def _children() -> set[int]:
    """Pids of this process's live children (Linux /proc)."""
    me = os.getpid()
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == me and fields[0] != "Z":
            found.add(int(entry.name))
    return found


@pytest.fixture(scope="session", autouse=True)
def no_stray_processes() -> Iterator[None]:
    """After the whole suite, no worker of ours may still run."""
    before = _children() if sys.platform.startswith("linux") else set()
    yield
    if not sys.platform.startswith("linux"):
        return
    import gc
    import time

    gc.collect()
    deadline = time.monotonic() + 5
    while (_children() - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    stray = _children() - before
    assert not stray, f"worker processes left running after the suite: {sorted(stray)}"


@pytest.fixture(scope="session", autouse=True)
def no_stray_cgroups() -> Iterator[None]:
    """Client scripts that were killed or left by os._exit leave empty worker cgroups: remove them."""
    yield
    from pypods._client import cgroups

    cgroups.sweep()
