"""The original design's walk-through, followed word for word by a new user, on real pods."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import pypods
from pypods.pods import PodLoader

FOO = '''
from pods.hello_world_pod.module_test import foo_in_module_test

"""
Write your module's functions in this area.
"""
def foo(x, y):
    return x + y

# Don't change anything here!
if __name__ == "__main__":
    from pypods.pods import PodListener
    pl = PodListener()  # PodListener will send output back to the pod client.
    msg = (
        pl.read_stdin()
    )  # Pod client writes function name and parameters to pod's stdin.
    if msg:
        function_name, args, kwargs = msg["name"], msg["args"], msg["kwargs"]
        try:
            if function_name in globals():
                function_output = globals()[function_name](*args, **kwargs)
                pl.write_stdout(function_output)
            else:
                pl.write_stderr(f"Function {function_name} does not exist in pod")
        except Exception as e:
            pl.write_stderr(str(e))
'''


def test_walk_through(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(root)
    namespace: dict[str, object] = {}
    # Steps 1-2: the first load creates the pod under the current directory.
    pl = PodLoader("hello_world_pod", namespace)
    pl.load_pod()
    pod_dir = root / "pods" / "hello_world_pod"
    assert (pod_dir / "pod.py").is_file()
    assert (pod_dir / "requirements.txt").is_file()
    assert (pod_dir / "venv" / "pyvenv.cfg").is_file()
    assert "Write your module's functions in this area." in (pod_dir / "pod.py").read_text()
    pl.unload_pod()
    assert namespace == {}
    # Steps 3-4: a function in pod.py and one in a package of the pod folder.
    (pod_dir / "module_test").mkdir()
    (pod_dir / "module_test" / "__init__.py").write_text('def foo_in_module_test():\n    return "foo_in_module_test"\n')
    (pod_dir / "pod.py").write_text(FOO)
    # Step 5: the client calls both without importing them.
    pl = PodLoader("hello_world_pod", namespace)
    pl.load_pod()
    foo, foo_in_module_test = namespace["foo"], namespace["foo_in_module_test"]
    assert foo(1, 2) == 3  # type: ignore[operator]
    assert foo_in_module_test() == "foo_in_module_test"  # type: ignore[operator]
    assert namespace["hello_world_pod"].foo(1, 2) == 3  # type: ignore[attr-defined]
    assert set(namespace) == {"foo", "foo_in_module_test", "hello_world_pod"}
    # Step 6: unload removes exactly what was injected.
    pl.unload_pod()
    assert namespace == {}


def test_readme_client_as_a_script(root: Path) -> None:
    """The README's client.py, run as a real program from the project root."""
    (root / "client.py").write_text(
        textwrap.dedent(
            """
            from pypods.pods import PodLoader

            pl = PodLoader("hello_world_pod", globals())
            pl.load_pod()
            print(foo(1, 2), foo_in_module_test())
            pl.unload_pod()
            print("foo" in globals())
            """
        )
    )
    pod_dir = root / "pods" / "hello_world_pod" / "module_test"
    pod_dir.mkdir(parents=True)
    (pod_dir / "__init__.py").write_text('def foo_in_module_test():\n    return "foo_in_module_test"\n')
    (pod_dir.parent / "pod.py").write_text(FOO)
    result = subprocess.run(
        [sys.executable, "client.py"], cwd=root, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["3", "foo_in_module_test", "False"]


def test_venv_missing_after_clone_is_rebuilt(make_pod, root: Path) -> None:
    make_pod("cloned", "def one():\n    return 1\n")
    assert not (root / "pods" / "cloned" / "venv").exists()
    with pypods.load("cloned", root=root) as pod:
        assert pod.one() == 1
    assert (root / "pods" / "cloned" / "venv" / "pyvenv.cfg").exists()


def test_root_from_environment_variable(root: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PYPODS_ROOT", str(root))
    monkeypatch.chdir(tmp_path)
    with pypods.load("envroot") as pod:
        assert pod.layout.pod_dir == root / "pods" / "envroot"
    assert (root / "pods" / "envroot" / "pod.py").exists()


def test_exported_functions_are_own_public_functions(make_pod, root: Path) -> None:
    pod_dir = make_pod(
        "picky",
        """
        import os
        from json import dumps
        from pods.picky.helpers import helper

        def public(a):
            return a

        def _private():
            return 0

        VALUE = 3
        """,
    )
    (pod_dir / "helpers.py").write_text("def helper():\n    return 'h'\n")
    with pypods.load("picky", root=root) as pod:
        assert sorted(pod.functions) == ["helper", "public"]


def test_all_chooses_exactly(make_pod, root: Path) -> None:
    make_pod(
        "chosen", "__all__ = ['b', 'dumps']\nfrom json import dumps\ndef a():\n    return 1\ndef b():\n    return 2\n"
    )
    with pypods.load("chosen", root=root) as pod:
        assert sorted(pod.functions) == ["b", "dumps"]
        assert pod.dumps([1]) == "[1]"


def test_proxies_look_like_the_originals(make_pod, root: Path) -> None:
    make_pod(
        "looks",
        '''
        def area(radius: float, *, pi: float = 3.14159, unit: "str" = "m") -> float:
            """Area of a circle.

            More words.
            """
            return pi * radius * radius
        ''',
    )
    namespace: dict[str, object] = {}
    loader = PodLoader("looks", namespace, root=root)
    loader.load_pod()
    try:
        area = namespace["area"]
        assert area.__name__ == "area"  # type: ignore[attr-defined]
        assert area.__doc__ == "Area of a circle.\n\nMore words."
        assert str(inspect.signature(area)) == "(radius: float, *, pi: float = 3.14159, unit: str = 'm') -> float"  # type: ignore[arg-type]
        assert inspect.signature(area).parameters["pi"].default == 3.14159  # type: ignore[arg-type]
        import pydoc

        text = pydoc.render_doc(area, renderer=pydoc.plaintext)
        assert "area(radius: float, *, pi: float = 3.14159" in text
        assert "Area of a circle." in text
        assert area(2.0, pi=3) == 12.0  # type: ignore[operator]
    finally:
        loader.unload_pod()


def test_unload_restores_shadowed_names(make_pod, root: Path) -> None:
    make_pod("shadow", "def foo():\n    return 'pod'\n")
    sentinel = object()
    namespace: dict[str, object] = {"foo": sentinel, "other": 1}
    loader = PodLoader("shadow", namespace, root=root)
    loader.load_pod()
    assert namespace["foo"]() == "pod"  # type: ignore[operator]
    loader.unload_pod()
    assert namespace == {"foo": sentinel, "other": 1}


def test_injected_names_are_plain_identifiers_and_shadowing_is_logged(
    make_pod, root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_pod(
        "names",
        """
        def ok():
            return "ok"

        def len(x):
            return "pod len"

        def __dunder__():
            return "no"

        globals()["not-an-identifier"] = ok
        __all__ = ["ok", "len", "__dunder__", "not-an-identifier"]
        """,
    )
    namespace: dict[str, object] = {"len": len}
    loader = PodLoader("names", namespace, root=root, shadow_builtins={"len"})  # consent to shadow a builtin
    with caplog.at_level("WARNING", logger="pypods"):
        loader.load_pod()
    assert set(namespace) == {"ok", "len", "names"}
    assert namespace["len"]([1]) == "pod len"  # type: ignore[operator]
    assert any("shadows" in record.getMessage() and "'len'" in record.getMessage() for record in caplog.records)
    loader.unload_pod()
    assert namespace == {"len": len}


def test_syntax_error_names_pod_py_with_its_path(make_pod, root: Path) -> None:
    pod_dir = make_pod("broken", "def f(:\n    pass\n")
    with pytest.raises(SyntaxError) as info:
        pypods.load("broken", root=root)
    assert str(pod_dir / "pod.py") in str(info.value)
    remote = info.value.remote_traceback  # type: ignore[attr-defined]
    assert "importlib" not in remote  # neither <frozen importlib._bootstrap> nor importlib/__init__.py
    assert f'File "{pod_dir / "pod.py"}", line 1' in remote


def test_import_error_traceback_starts_in_pod_py(make_pod, root: Path) -> None:
    pod_dir = make_pod("noimport", "import not_a_module_anywhere\n")
    with pytest.raises(ModuleNotFoundError) as info:
        pypods.load("noimport", root=root)
    remote = info.value.remote_traceback  # type: ignore[attr-defined]
    assert "importlib" not in remote
    assert remote.splitlines()[1].startswith(f'  File "{pod_dir / "pod.py"}"')


def test_pod_py_is_never_imported_in_the_client(make_pod, root: Path) -> None:
    make_pod("heavy", "import tinypkg\n\ndef version():\n    return tinypkg.VERSION\n", requirements=("tinypkg==1.0",))
    before = set(sys.modules)
    with pypods.load("heavy", root=root) as pod:
        assert pod.version() == "1.0"
    assert "tinypkg" not in sys.modules
    assert not any(name.startswith("pods.") for name in set(sys.modules) - before)


def test_remote_exceptions_keep_builtin_type_and_traceback(make_pod, root: Path) -> None:
    make_pod(
        "raiser",
        """
        import json

        def bad(x):
            raise ValueError(f"bad value {x}")

        def missing(d):
            return d["nope"]

        def decode():
            return json.loads("{")

        class Custom(Exception):
            pass

        def custom():
            raise Custom("mine")
        """,
    )
    with pypods.load("raiser", root=root) as pod:
        with pytest.raises(ValueError, match="bad value 3") as info:
            pod.bad(3)
        assert isinstance(info.value, pypods.PodRemoteError)
        assert isinstance(info.value, pypods.PodError)
        assert 'raise ValueError(f"bad value {x}")' in info.value.remote_traceback
        assert "serve.py" not in info.value.remote_traceback
        with pytest.raises(KeyError):
            pod.missing({})
        with pytest.raises(ValueError) as decoded:  # json.JSONDecodeError's nearest builtin
            pod.decode()
        assert decoded.value.remote_type == "JSONDecodeError"  # type: ignore[attr-defined]
        with pytest.raises(pypods.PodRemoteError, match="Custom: mine") as custom:
            pod.custom()
        assert not isinstance(custom.value, ValueError)
        assert pod.bad.__name__ == "bad"  # the pod still works after errors


def test_unknown_function_is_attribute_error(make_pod, root: Path) -> None:
    make_pod("known", "def a():\n    return 1\n")
    with pypods.load("known", root=root) as pod:
        with pytest.raises(AttributeError, match=r"pod 'known' has no function 'nope'"):
            pod.nope()
        with pytest.raises(AttributeError, match="nope"):
            pod.call("nope")


@pytest.mark.parametrize("name", ["../evil", "my-pod", "", "class", "a/b", "1abc", " x"])
def test_bad_pod_names_raise_value_error_before_touching_disk(name: str, root: Path) -> None:
    with pytest.raises(ValueError, match="pod name"):
        PodLoader(name, {}, root=root).load_pod()
    with pytest.raises(ValueError):
        pypods.load(name, root=root)
    assert not (root / "pods").exists()


def test_prints_and_fd_writes_never_corrupt_replies(make_pod, root: Path, capfd: pytest.CaptureFixture[str]) -> None:
    make_pod(
        "noisy",
        """
        import os, sys

        def shout(n):
            print("hello from print")
            sys.stdout.write("x" * n + "\\n")
            os.write(1, b"raw fd 1 write\\n")
            os.write(2, b"raw fd 2 write\\n")
            return n
        """,
    )
    with pypods.load("noisy", root=root) as pod:
        for n in (1, 100_000, 3):
            assert pod.shout(n) == n
    err = capfd.readouterr().err
    assert "[noisy] hello from print" in err
    assert "[noisy] raw fd 1 write" in err


def test_module_api_context_manager_stops_worker(make_pod, root: Path) -> None:
    make_pod("ctx", "import os\ndef pid():\n    return os.getpid()\n")
    with pypods.load("ctx", root=root) as pod:
        pid = pod.pid()
        assert pid != os.getpid()
    with pytest.raises(pypods.PodClosedError):
        pod.pid()
    assert not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def test_pod_sys_path_is_isolated(make_pod, root: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    leak = tmp_path / "leak"
    leak.mkdir()
    (leak / "leaky_module.py").write_text("X = 1\n")
    monkeypatch.setenv("PYTHONPATH", str(leak))
    monkeypatch.setenv("VIRTUAL_ENV", sys.prefix)
    make_pod(
        "isolated",
        """
        import importlib.util, os, site, sys

        def paths():
            return sys.path

        def leaked():
            return importlib.util.find_spec("leaky_module") is not None or "PYTHONPATH" in os.environ

        def has_pytest():
            return importlib.util.find_spec("pytest") is not None

        def user_site():
            return site.ENABLE_USER_SITE
        """,
    )
    with pypods.load("isolated", root=root) as pod:
        paths = pod.paths()
        assert str(root) not in paths  # only pods/ is importable from the client's folder (#11)
        assert not pod.leaked()
        assert not pod.has_pytest()  # the client's packages are not the pod's
        assert not pod.user_site()
        assert all(str(leak) not in p for p in paths)
        venv = str(root / "pods" / "isolated" / "venv")
        assert any(p.startswith(venv) and p.endswith("site-packages") for p in paths)


def test_original_listener_protocol(tmp_path: Path) -> None:
    """A pod.py run as a script with PodListener answers one BSON message, as the design says."""
    from pypods._worker import codec

    script = tmp_path / "pod.py"
    script.write_text(FOO.replace("from pods.hello_world_pod.module_test import foo_in_module_test\n", ""))
    message = bytes(codec.encode({"name": "foo", "args": [1, 2], "kwargs": {}}))
    result = subprocess.run([sys.executable, str(script)], input=message, capture_output=True, timeout=60, check=False)
    assert codec.decode(result.stdout) == {"response": 3}
    bad = bytes(codec.encode({"name": "nope", "args": [], "kwargs": {}}))
    result = subprocess.run([sys.executable, str(script)], input=bad, capture_output=True, timeout=60, check=False)
    assert codec.decode(result.stderr) == {"error": "Function nope does not exist in pod"}
