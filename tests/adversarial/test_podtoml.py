"""A hostile pod.toml (it lives in the pod's folder) and hostile CLI input: refused clearly, never run or injected."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

import pypods
from pypods._env.layout import PodLayout
from pypods._env.settings import PodSettings, toml_string

if TYPE_CHECKING:
    from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib


def settings_of(root: Path, toml: str, **overrides: object) -> PodSettings:
    pod = root / "pods" / "p"
    pod.mkdir(parents=True, exist_ok=True)
    (pod / "pod.py").write_text("")
    (pod / "pod.toml").write_text(toml)
    return PodSettings.load(PodLayout.at("p", root), overrides)


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("timeout = nan", "finite"),
        ("timeout = inf", "finite"),
        ("idle_timeout = -inf", "finite"),
        ("start_timeout = 0", "above 0"),
        ("timeout = 1e300", "at most"),
        ("timeout = true", "number of seconds"),
        ('timeout = "5"', "number of seconds"),
        ("workers = 0", "from 1 to 64"),
        ("workers = 65", "from 1 to 64"),
        ("workers = 100000000", "from 1 to 64"),
        ("workers = 2.0", "whole number"),
        ("workers = true", "whole number"),
        ('start = "now"', "one of"),
        ("python = 3.11", "string"),
        ('python = ""', "non-empty"),
        ('python = "3.11\\ncodec = \\"pickle\\""', "control characters"),
        ('[env]\n"A=B" = "x"', "not a valid environment variable name"),
        ('[env]\n"" = "x"', "not a valid environment variable name"),
        ('[env]\n"A\\u0000B" = "x"', "not a valid environment variable name"),
        ('[env]\nA = "x\\u0000y"', "NUL"),
        ("[env]\nA = [1, 2]", "string or a number"),
        ("[env]\nA = true", "string or a number"),
        ('env = "A=B"', "table"),
        ("timout = 3", "did you mean 'timeout'"),
        ("wrokers = 3", "did you mean 'workers'"),
        ("this is not toml", "not valid TOML"),
    ],
)
def test_invalid_pod_toml_is_a_config_error(root: Path, toml: str, message: str) -> None:
    with pytest.raises(pypods.PodConfigError, match=message) as caught:
        settings_of(root, toml)
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, pypods.PodError)
    assert str(root / "pods" / "p" / "pod.toml") in str(caught.value)


def test_valid_pod_toml_values_are_kept(root: Path) -> None:
    settings = settings_of(root, 'workers = 64\ntimeout = 0.5\nstart_timeout = 3\n[env]\nN = 1\nS = "x y"\n')
    assert (settings.workers, settings.timeout, settings.start_timeout) == (64, 0.5, 3.0)
    assert settings.env == {"N": "1", "S": "x y"}


def test_pod_toml_cannot_choose_the_pickle_codec(root: Path) -> None:
    with pytest.raises(pypods.PodConfigError, match=r'codec = "pickle" is not allowed in pod\.toml'):
        settings_of(root, 'codec = "pickle"\n')
    # the client's own code may choose it (overriding whatever the file says)
    assert settings_of(root, 'codec = "bson"\n', codec="pickle").codec == "pickle"


def test_arguments_are_validated_too(root: Path) -> None:
    with pytest.raises(pypods.PodConfigError, match="argument 'timeout'"):
        settings_of(root, "", timeout=float("nan"))
    with pytest.raises(pypods.PodConfigError, match="argument 'env'"):
        settings_of(root, "", env={"A=B": "1"})


@pytest.mark.parametrize(
    "text", ["plain", 'a"b', "back\\slash", "new\nline", "tab\tcr\r", "\x00\x1f\x7f", "é€😀", '"""', "'''"]
)
def test_toml_string_round_trips_without_injection(text: str) -> None:
    document = f"python = {toml_string(text)}\n"
    assert tomllib.loads(document) == {"python": text}


def test_cli_python_option_cannot_inject_a_setting(root: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pypods", "--root", str(root), "new", "evil", "--no-build",
         "--python", '3.11"\ncodec = "pickle'],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert not (root / "pods" / "evil" / "pod.toml").exists()
    quoted = subprocess.run(
        [sys.executable, "-m", "pypods", "--root", str(root), "new", "quoted", "--no-build", "--python", '3.11"x'],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert quoted.returncode == 0, quoted.stderr
    assert tomllib.loads((root / "pods" / "quoted" / "pod.toml").read_text())["python"] == '3.11"x'


def test_list_and_doctor_never_run_a_pods_interpreter(make_pod, root: Path, tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    evil = tmp_path / "evil-python"
    evil.write_text(f'#!/bin/sh\necho ran >> {ran}\nexec {sys.executable} "$@"\n')
    evil.chmod(0o755)
    make_pod("named", "def f():\n    return 1\n", toml=f'python = "{evil}"\n')
    make_pod("built", "def f():\n    return 1\n")
    with pypods.load("built", root=root):
        pass
    ran.unlink(missing_ok=True)
    venv_python = root / "pods" / "built" / "venv" / "bin" / "python"
    venv_python.unlink()
    venv_python.symlink_to(evil)  # the pod's own interpreter is now hostile too
    env = {**os.environ, "PYPODS_ROOT": str(root)}
    for command in ("list", "doctor"):
        result = subprocess.run(
            [sys.executable, "-m", "pypods", command], capture_output=True, text=True, env=env, timeout=300,
            check=False,
        )  # fmt: skip
        assert "Traceback" not in result.stderr, result.stderr
        assert "named" in result.stdout
    assert not ran.exists(), "list/doctor executed an interpreter named by a pod"


def test_folder_that_is_not_a_pod_name_is_reported(root: Path) -> None:
    (root / "pods" / "my-pod").mkdir(parents=True)
    (root / "pods" / "my-pod" / "pod.py").write_text("def f():\n    return 1\n")
    result = subprocess.run(
        [sys.executable, "-m", "pypods", "--root", str(root), "list", "--json"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert '"state": "ignored"' in result.stdout
    assert "not a valid pod name" in result.stdout
