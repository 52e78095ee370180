"""The built wheel and sdist hold what users and packagers need (built offline with hatchling from .venv)."""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import pypods

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("hatchling", reason="hatchling is in the dev extra: pip install -e '.[dev]'")
    out = tmp_path_factory.mktemp("dist")
    code = f"import hatchling.build as b; b.build_sdist({str(out)!r}); b.build_wheel({str(out)!r})"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr
    return out


def test_wheel_contents_and_metadata(dist: Path) -> None:
    (wheel,) = dist.glob("*.whl")
    assert wheel.name == f"pypods-{pypods.__version__}-py3-none-any.whl"  # one version source
    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("pypods/py.typed", "pypods/_worker/serve.py", "pypods/_worker/ruff.toml", "pypods/_cli/__init__.py"):
        assert needed in names
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)
    metadata = zipfile.ZipFile(wheel).read(f"pypods-{pypods.__version__}.dist-info/METADATA").decode()
    for minor in range(9, 14):
        assert f"Classifier: Programming Language :: Python :: 3.{minor}" in metadata
    assert "License-Expression: MIT" in metadata
    assert "platformdirs" not in metadata
    assert "Requires-Python: >=3.9" in metadata


def test_one_version_everywhere() -> None:
    """``__version__``, the installed metadata and the newest CHANGELOG entry name the same version."""
    from importlib.metadata import version

    newest = re.search(r"^## \[(\S+)\]", (REPO / "CHANGELOG.md").read_text(), re.MULTILINE)
    assert newest is not None
    assert pypods.__version__ == version("pypods") == newest.group(1)


def test_sdist_contents(dist: Path) -> None:
    (sdist,) = dist.glob("*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for needed in (
        "LICENSE", "CHANGELOG.md", "README.md", "Makefile", "examples/client.py", "example/README.md",
        "examples/pods/hello_world_pod/pod.py", "examples/pods/modern_versions/requirements.lock",
        "tests/conftest.py", "docs/architecture.md",
    ):  # fmt: skip
        assert needed in names, needed
    assert not any("/venv/" in name or "__pycache__" in name for name in names)


def test_readme_works_on_an_index_page() -> None:
    """No relative links: an index page (PyPI) has no repository to resolve them against."""
    text = (REPO / "README.md").read_text()
    links = re.findall(r"\]\(([^)]*)\)", text)
    assert [link for link in links if not link.startswith("https://")] == []
    assert "pip install pypods" not in text.replace("`pip install pypods` from PyPI", "")
