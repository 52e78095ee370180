"""Pod classes in the tools: ``pypods describe``, ``pypods stubs`` (typed handles, checked by mypy) and PodLoader."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING

import pypods
from pypods.pods import PodLoader

if TYPE_CHECKING:
    from pathlib import Path


def run(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYPODS_ROOT": str(root)}
    return subprocess.run(
        [sys.executable, "-m", "pypods", *args], capture_output=True, text=True, env=env, timeout=300, check=False
    )


MODEL = '''
class Model:
    """A model loaded once."""

    def __init__(self, weights: str) -> None:
        self.scale = len(weights)

    def predict(self, x: float) -> float:
        """Scale x by the weights."""
        return x * self.scale


def area(radius: float) -> float:
    return 3.0 * radius * radius
'''


def test_describe_lists_classes_and_their_methods(make_pod, root: Path) -> None:
    make_pod("model", MODEL)
    result = run(root, "describe", "model")
    assert result.returncode == 0, result.stderr
    assert "class Model(weights: str)\tA model loaded once." in result.stdout
    assert "Model.predict(x: float) -> float\tScale x by the weights." in result.stdout
    records = json.loads(run(root, "describe", "model", "--json").stdout)
    assert [r["name"] for r in records] == ["Model", "Model.predict", "area"]


def test_stubs_type_handles_and_their_methods(make_pod, root: Path) -> None:
    make_pod("model", MODEL)
    result = run(root, "stubs")
    assert result.returncode == 0, result.stderr
    good = textwrap.dedent(
        """
        import pods_typed
        from pods_typed import model

        m = model.Model("abc")
        a: float = m.predict(2.0)
        with pods_typed.load("model") as pod:
            b: float = pod.Model("ab").predict(1.0)
        print(a, b)
        """
    )
    (root / "good.py").write_text(good)
    (root / "bad.py").write_text(good.replace("m.predict(2.0)", 'm.predict("two")'))
    mypy = [sys.executable, "-m", "mypy", "--no-incremental", "--strict"]
    ok = subprocess.run([*mypy, "good.py"], cwd=root, capture_output=True, text=True, timeout=300, check=False)
    assert ok.returncode == 0, ok.stdout
    bad = subprocess.run([*mypy, "bad.py"], cwd=root, capture_output=True, text=True, timeout=300, check=False)
    assert bad.returncode == 1
    assert 'Argument 1 to "predict" of "Model" has incompatible type "str"; expected "float"' in bad.stdout
    ran = subprocess.run(
        [sys.executable, "good.py"], cwd=root, capture_output=True, text=True, timeout=300, check=False
    )
    assert ran.stdout.split() == ["6.0", "2.0"], ran.stderr


def test_pod_loader_injects_classes(make_pod, root: Path) -> None:
    make_pod("model", MODEL)
    namespace: dict[str, object] = {}
    loader = PodLoader("model", root=root, namespace=namespace)
    loader.load_pod()
    try:
        model = namespace["Model"]("abcd")  # type: ignore[operator]
        assert isinstance(model, pypods.PodObject)
        assert model.predict(1.0) == 4.0
    finally:
        loader.unload_pod()
