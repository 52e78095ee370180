"""Pod environments built for real with uv, offline from the session's wheelhouse."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from typing import TYPE_CHECKING

import pytest

import pypods
from conftest import pythons
from pypods._env import store
from pypods._env.layout import PodLayout
from pypods._env.tools import uv_binary

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

VERSION_POD = "import tinypkg\n\ndef version():\n    return tinypkg.VERSION\n"


@pytest.fixture
def uv_log(tmp_path: Path) -> tuple[Path, Path]:
    """A stand-in uv that logs each command, then runs the real uv (or hangs on ``pip sync`` if asked)."""
    log = tmp_path / "uv.log"
    wrapper = tmp_path / "uv-wrapper"
    wrapper.write_text(
        textwrap.dedent(
            f"""\
            #!{sys.executable}
            import os, sys, time
            with open({str(log)!r}, "a") as handle:
                handle.write(" ".join(sys.argv[1:3]) + "\\n")
            if os.environ.get("HANG_ON_SYNC") and sys.argv[1:3] == ["pip", "sync"]:
                time.sleep(600)
            os.execv({uv_binary()!r}, [{uv_binary()!r}] + sys.argv[1:])
            """
        )
    )
    wrapper.chmod(0o755)
    return wrapper, log


@contextlib.contextmanager
def uv_at(path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make this process use the uv at *path* (which may not exist) while the block runs."""
    monkeypatch.setenv("PYPODS_UV", str(path))
    uv_binary.cache_clear()
    try:
        yield
    finally:
        monkeypatch.delenv("PYPODS_UV")
        uv_binary.cache_clear()


def _load_in_subprocess(root: Path, name: str, env: dict[str, str]) -> subprocess.Popen[str]:
    code = f"import pypods; pod = pypods.load({name!r}, root={str(root)!r}); print(pod.version()); pod.close()"
    return subprocess.Popen(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_conflicting_versions_side_by_side(make_pod, root: Path) -> None:
    make_pod("old", VERSION_POD, requirements=("tinypkg==1.0",))
    make_pod("new", VERSION_POD, requirements=("tinypkg==2.0",))
    with pypods.load("old", root=root) as old, pypods.load("new", root=root) as new:
        assert (old.version(), new.version()) == ("1.0", "2.0")
        assert (old.version(), new.version()) == ("1.0", "2.0")


def test_dependencies_of_requirements_are_resolved_and_locked(make_pod, root: Path) -> None:
    pod_dir = make_pod("deps", "import helperpkg\n\ndef which():\n    return helperpkg.which()\n", ("helperpkg",))
    with pypods.load("deps", root=root) as pod:
        assert pod.which() == "2.0"
    lock = (pod_dir / "requirements.lock").read_text()
    assert "helperpkg==0.1" in lock
    assert "tinypkg==2.0" in lock


def test_requirements_edit_resyncs_in_place(make_pod, root: Path) -> None:
    pod_dir = make_pod("edited", VERSION_POD, requirements=("tinypkg==1.0",))
    with pypods.load("edited", root=root) as pod:
        assert pod.version() == "1.0"
    layout = PodLayout.at("edited", root)
    assert store.state(layout, None).state == "ready"
    requirements = pod_dir / "requirements.txt"
    requirements.write_text(requirements.read_text().replace("tinypkg==1.0", "tinypkg==2.0"))
    assert store.state(layout, None) == store.EnvState("stale", "requirements changed")
    venv_inode = os.stat(pod_dir / "venv").st_ino
    with pypods.load("edited", root=root) as pod:
        assert pod.version() == "2.0"
    assert os.stat(pod_dir / "venv").st_ino == venv_inode  # re-synced, not rebuilt
    assert "tinypkg==2.0" in (pod_dir / "requirements.lock").read_text()


def test_unchanged_pod_reload_runs_no_installer(make_pod, root: Path, uv_log, monkeypatch: pytest.MonkeyPatch) -> None:
    make_pod("steady", VERSION_POD, requirements=("tinypkg==1.0",))
    with pypods.load("steady", root=root) as pod:
        assert pod.version() == "1.0"
    wrapper, log = uv_log
    with uv_at(wrapper, monkeypatch), pypods.load("steady", root=root) as pod:
        assert pod.version() == "1.0"
    assert not log.exists()


def test_lock_pins_versions_for_a_fresh_clone(make_pod, root: Path) -> None:
    pod_dir = make_pod("pinned", VERSION_POD, requirements=("tinypkg==1.0",))
    with pypods.load("pinned", root=root) as pod:
        assert pod.version() == "1.0"
    # Loosen the requirement: the lock keeps what was installed while it still fits.
    requirements = pod_dir / "requirements.txt"
    requirements.write_text(requirements.read_text().replace("tinypkg==1.0", "tinypkg"))
    import shutil

    shutil.rmtree(pod_dir / "venv")  # as after a git clone
    with pypods.load("pinned", root=root) as pod:
        assert pod.version() == "1.0"
    # Deleting the lock re-resolves to the newest.
    (pod_dir / "requirements.lock").unlink()
    with pypods.load("pinned", root=root) as pod:
        assert pod.version() == "2.0"


def test_uninstallable_requirement_raises_build_error_and_leaves_pod_not_ready(make_pod, root: Path) -> None:
    make_pod("broken", VERSION_POD, requirements=("tinypkg==9.9",))
    for _ in range(2):  # and every later load says the same
        with pytest.raises(pypods.PodBuildError) as info:
            pypods.load("broken", root=root)
        message = str(info.value)
        assert "'broken'" in message
        assert "tinypkg==9.9" in message
        assert "tinypkg" in info.value.output
    layout = PodLayout.at("broken", root)
    assert store.read_marker(layout) is None
    assert store.state(layout, None).state in ("broken", "missing")


def test_build_killed_midway_is_rebuilt_cleanly(make_pod, root: Path, uv_log) -> None:
    make_pod("killed", VERSION_POD, requirements=("tinypkg==1.0",))
    wrapper, log = uv_log
    proc = _load_in_subprocess(root, "killed", {"PYPODS_UV": str(wrapper), "HANG_ON_SYNC": "1"})
    deadline = time.monotonic() + 60
    while "pip sync" not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    subprocess.run(["pkill", "-f", str(wrapper)], check=False)
    layout = PodLayout.at("killed", root)
    assert layout.venv.exists()
    assert store.read_marker(layout) is None
    with pypods.load("killed", root=root) as pod:
        assert pod.version() == "1.0"
    assert store.state(layout, None).state == "ready"


def test_two_processes_build_once(make_pod, root: Path, uv_log) -> None:
    make_pod("shared", VERSION_POD, requirements=("tinypkg==2.0",))
    wrapper, log = uv_log
    procs = [_load_in_subprocess(root, "shared", {"PYPODS_UV": str(wrapper)}) for _ in range(2)]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    assert [out.strip() for out, _ in outputs] == ["2.0", "2.0"]
    assert log.read_text().splitlines().count("pip sync") == 1


def test_local_wheel_path_requirement(make_pod, root: Path, wheelhouse: Path) -> None:
    pod_dir = make_pod("local", VERSION_POD)
    (pod_dir / "wheels").mkdir()
    wheel = wheelhouse / "tinypkg-1.0-py3-none-any.whl"
    (pod_dir / "wheels" / wheel.name).write_bytes(wheel.read_bytes())
    (pod_dir / "requirements.txt").write_text(f"--no-index\n./wheels/{wheel.name}\n")
    with pypods.load("local", root=root) as pod:
        assert pod.version() == "1.0"


def _other_python() -> tuple[str, str] | None:
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    others = sorted((v for v in pythons() if v != here), key=lambda v: int(v.split(".")[1]))
    return (others[0], pythons()[others[0]]) if others else None


def test_pod_on_another_python_by_version_and_by_path(make_pod, root: Path) -> None:
    other = _other_python()
    if other is None:
        pytest.skip("only one Python is installed here")
    version, _path = other
    make_pod(
        "elsewhere",
        "import sys\n\ndef version():\n    return '%d.%d' % sys.version_info[:2]\n",
        toml=f'python = "{version}"\n',
    )
    with pypods.load("elsewhere", root=root) as pod:
        assert pod.version() == version
    # An argument overrides pod.toml; here a path to this client's own interpreter.
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    with pypods.load("elsewhere", root=root, python=sys.executable) as pod:
        assert pod.version() == here
    layout = PodLayout.at("elsewhere", root)
    assert store.state(layout, version).state == "stale"


def test_unknown_python_version_names_where_it_looked(root: Path) -> None:
    with pytest.raises(pypods.PodBuildError, match=r"no Python 3\.99 found.*versions"):
        pypods.load("nopython", root=root, python="3.99")


def test_worker_env_from_pod_toml_and_argument(make_pod, root: Path) -> None:
    make_pod("withenv", "import os\n\ndef get(k):\n    return os.environ.get(k)\n", toml='[env]\nGREETING = "hi"\n')
    with pypods.load("withenv", root=root) as pod:
        assert pod.get("GREETING") == "hi"
    with pypods.load("withenv", root=root, env={"GREETING": "override"}) as pod:
        assert pod.get("GREETING") == "override"


def test_invalid_pod_toml_names_file_and_key(make_pod, root: Path) -> None:
    make_pod("badtoml", "def f():\n    return 1\n", toml="workers = 0\n")
    with pytest.raises(ValueError, match=r"pod\.toml: setting 'workers'"):
        pypods.load("badtoml", root=root)
    make_pod("unknowntoml", "def f():\n    return 1\n", toml="wrokers = 2\n")
    with pytest.raises(ValueError, match="unknown setting"):
        pypods.load("unknowntoml", root=root)


def test_venv_fallback_without_uv(make_pod, root: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    make_pod("plainvenv", VERSION_POD, requirements=("tinypkg==1.0",))
    with uv_at(tmp_path / "no-uv-here", monkeypatch), pypods.load("plainvenv", root=root) as pod:
        assert pod.version() == "1.0"
    lock = (root / "pods" / "plainvenv" / "requirements.lock").read_text()
    assert "tinypkg==1.0" in lock


def test_marker_holds_the_key_and_interpreter(make_pod, root: Path) -> None:
    make_pod("marked", "def f():\n    return 1\n")
    with pypods.load("marked", root=root):
        pass
    marker = json.loads((root / "pods" / "marked" / "venv" / ".pypods-ready").read_text())
    assert set(marker) >= {"key", "python", "version"}
