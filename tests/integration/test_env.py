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


def _python_in(folder: Path, code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PYPODS_")}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=folder, capture_output=True, text=True, env={**clean, **(env or {})},
        timeout=300, check=False,
    )  # fmt: skip


def test_root_is_the_nearest_pods_folder_above_the_current_directory(root: Path) -> None:
    (root / "pods").mkdir()
    deep = root / "src" / "pkg"
    deep.mkdir(parents=True)
    code = "from pypods._env.layout import resolve_root; print(resolve_root())"
    assert _python_in(deep, code).stdout.strip() == str(deep)  # an empty pods/ above does not count...
    (root / "pods" / "geo").mkdir()
    (root / "pods" / "geo" / "pod.py").write_text("")
    assert _python_in(deep, code).stdout.strip() == str(root)  # ...one holding a pod does
    assert _python_in(root, code).stdout.strip() == str(root)
    assert _python_in(deep, code, {"PYPODS_ROOT": str(deep)}).stdout.strip() == str(deep)


def test_root_next_to_the_main_script(root: Path, tmp_path: Path) -> None:
    (root / "pods").mkdir()
    (root / "client.py").write_text("from pypods._env.layout import resolve_root\nprint(resolve_root())\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PYPODS_")}
    result = subprocess.run(
        [sys.executable, str(root / "client.py")], cwd=elsewhere, capture_output=True, text=True, env=clean,
        timeout=120, check=False,
    )  # fmt: skip
    assert result.stdout.strip() == str(root)


def test_examples_pods_are_found_next_to_the_script_from_the_repository_root() -> None:
    from pathlib import Path as RealPath

    repo = RealPath(__file__).resolve().parents[2]
    probe = repo / "examples" / "where_am_i.py"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PYPODS_")}
    try:
        probe.write_text("from pypods._env.layout import resolve_root\nprint(resolve_root())\n")
        found = subprocess.run(
            [sys.executable, "examples/where_am_i.py"], cwd=repo, capture_output=True, text=True, env=clean,
            timeout=60, check=False,
        )  # fmt: skip
    finally:
        probe.unlink()
    assert found.stdout.strip() == str(repo / "examples"), found.stderr


def test_new_pod_is_announced_pinned_and_create_false_refuses(make_pod, root: Path) -> None:
    make_pod("first", "def f():\n    return 1\n")
    code = (
        "import pypods\n"
        "with pypods.load('second', progress=False) as pod:\n    print(sorted(pod.functions))\n"
        "try:\n    pypods.load('thrid', create=False)\n"
        "except pypods.PodNotFoundError as exc:\n"
        "    assert isinstance(exc, FileNotFoundError)\n    print('refused:', exc)\n"
    )
    result = _python_in(root, code)
    assert result.returncode == 0, result.stderr
    announced = [line for line in result.stderr.splitlines() if "created new pod" in line]
    assert announced == [f"pypods: created new pod 'second' in {root / 'pods' / 'second'} (existing pods: first)"]
    assert "refused: no pod 'thrid'" in result.stdout
    assert "pods there: first, second" in result.stdout
    assert not (root / "pods" / "thrid").exists()
    pinned = (root / "pods" / "second" / "pod.toml").read_text()
    assert f'python = "{sys.version_info[0]}.{sys.version_info[1]}"' in pinned


def test_build_steps_print_one_line_each_when_stderr_is_not_a_terminal(make_pod, root: Path) -> None:
    make_pod("shown", "def f():\n    return 1\n", requirements=("tinypkg==1.0",))
    result = _python_in(root, "import pypods\npypods.load('shown').close()\n")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("pypods: shown: ")]
    assert lines[0] == f"pypods: shown: creating venv with Python {sys.version.split()[0]}"
    assert "pypods: shown: resolving requirements (for every platform)" in lines
    assert lines[-1].startswith("pypods: shown: ready (")
    again = _python_in(root, "import pypods\npypods.load('shown').close()\n")
    assert again.stderr == ""  # nothing to build, nothing said
    make_pod("silent", "def f():\n    return 1\n")
    quiet = _python_in(root, "import pypods\npypods.load('silent', progress=False).close()\n")
    assert quiet.stderr == ""


def test_failed_build_is_reported_once(make_pod, root: Path) -> None:
    make_pod("broken", "def f():\n    return 1\n", requirements=("tinypkg==9.9",))
    code = "import pypods\ntry:\n    pypods.load('broken')\nexcept pypods.PodBuildError as exc:\n    print(exc)\n"
    result = _python_in(root, code)
    assert "failed for requirement" in result.stdout
    assert "failed" not in result.stderr.replace("\n", " "), result.stderr  # no logger last-resort copy


def test_unpinned_pod_keeps_the_python_it_was_built_with(make_pod, root: Path) -> None:
    other = _other_python()
    if other is None:
        pytest.skip("only one Python is installed here")
    version, path = other
    make_pod("unpinned", "import sys\n\ndef v():\n    return sys.version_info[:2]\n")
    built = subprocess.run(
        [path, "-c", "import sys; print(sys.version)"], capture_output=True, text=True, timeout=60, check=False
    )
    assert built.returncode == 0
    # build it with the other Python (as another client would), then look from this one
    layout = PodLayout.at("unpinned", root)
    from pypods._env import pythons
    from pypods._env.progress import BuildReport

    monkey = pythons.probe(path)
    store.ensure_ready(layout, path, BuildReport("unpinned", False))
    marker = store.read_marker(layout)
    assert marker is not None
    marker["request"] = None  # as if an unpinned client on that Python had built it
    (layout.venv / store.MARKER).write_text(json.dumps(marker))
    assert store.state(layout, None) == store.EnvState("ready")
    interpreter = store.ensure_ready(layout, None, BuildReport("unpinned", False))
    assert interpreter.version[:2] == monkey.version[:2] == tuple(int(p) for p in version.split("."))


def test_lock_is_universal_and_unchanged_by_a_build_on_another_python(make_pod, root: Path, tmp_path: Path) -> None:
    from wheelhouse import build_wheel

    house = tmp_path / "house"
    build_wheel(house, "winonly", "1.0", {"winonly/__init__.py": ""})
    build_wheel(house, "app", "1.0", {"app/__init__.py": ""}, requires=("winonly; sys_platform == 'win32'",))
    pod = make_pod("portable", "def f():\n    return 1\n")
    (pod / "requirements.txt").write_text(f"--no-index\n--find-links {house}\napp==1.0\n")
    with pypods.load("portable", root=root):
        pass
    lock = (pod / "requirements.lock").read_text()
    assert "winonly==1.0 ; sys_platform == 'win32'" in lock  # kept for Windows although built on Linux
    assert lock.splitlines()[0].endswith(f"python>={sys.version_info[0]}.{sys.version_info[1]}")
    other = _other_python()
    if other is None:
        return
    newer = sorted(v for v in pythons() if tuple(map(int, v.split("."))) > sys.version_info[:2])
    if newer:
        with pypods.load("portable", root=root, python=newer[0]):
            pass
        assert (pod / "requirements.lock").read_text() == lock


def test_uv_output_reaches_a_terminal_and_is_still_captured(tmp_path: Path) -> None:
    import pty

    code = (
        "from pypods._env import tools\n"
        "result = tools.run_uv(['pip', 'compile', 'no-such-requirements.txt'], '.', live=True)\n"
        "print(result.returncode, repr(result.stderr.strip().splitlines()[0]))\n"
    )
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, stdout=subprocess.PIPE, stderr=slave, text=True)
    os.close(slave)
    out, _ = proc.communicate(timeout=120)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    assert out.startswith("2 'error:"), out  # captured for the PodBuildError...
    assert b"no-such-requirements.txt" in shown  # ...and shown on the user's terminal as uv drew it


def test_windows_is_refused_with_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    from pypods._env import layout

    monkeypatch.setattr(layout.os, "name", "nt")
    with pytest.raises(pypods.PodError, match="use it inside WSL"):
        layout.check_platform()


def test_a_pinned_pod_is_ready_for_every_client_and_the_cli(make_pod, root: Path) -> None:
    other = _other_python()
    if other is None:
        pytest.skip("only one Python is installed here")
    version, _path = other
    make_pod("pinned", "def f():\n    return 1\n", toml=f'python = "{version}"\n')
    with pypods.load("pinned", root=root):  # this client runs another Python than the pod's
        pass
    env = {**os.environ, "PYPODS_ROOT": str(root)}
    cli = [sys.executable, "-m", "pypods"]
    listed = subprocess.run([*cli, "list", "--json"], capture_output=True, text=True, env=env, timeout=120, check=False)
    record = json.loads(listed.stdout)[0]
    assert (record["state"], record["python"].rsplit(".", 1)[0]) == ("ready", version)
    synced = subprocess.run([*cli, "sync", "pinned"], capture_output=True, text=True, env=env, timeout=120, check=False)
    assert synced.returncode == 0
    assert "creating venv" not in synced.stderr  # nothing rebuilt for the CLI's own Python


# A PEP 517 backend in the project's own tree (stdlib only), so an editable install builds offline.
EDITABLE_BACKEND = """
import base64, hashlib, os, zipfile

NAME, VERSION = "mylib", "0.1"
INFO = f"{NAME}-{VERSION}.dist-info"


def _wheel(directory, files):
    files = {**files, f"{INFO}/METADATA": f"Metadata-Version: 2.1\\nName: {NAME}\\nVersion: {VERSION}\\n",
             f"{INFO}/WHEEL": "Wheel-Version: 1.0\\nGenerator: test\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"}
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{INFO}/RECORD"] = "\\n".join(record + [f"{INFO}/RECORD,,"]) + "\\n"
    name = f"{NAME}-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(directory, name), "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return name


def get_requires_for_build_wheel(config_settings=None):
    return []


get_requires_for_build_editable = get_requires_for_build_wheel


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "mylib.py")) as handle:
        return _wheel(wheel_directory, {"mylib.py": handle.read()})


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    here = os.path.dirname(os.path.abspath(__file__))
    return _wheel(wheel_directory, {"mylib.pth": here + "\\n"})
"""


@pytest.mark.parametrize("alone", [True, False], ids=["alone", "with-another"])
def test_an_editable_local_project_as_the_only_requirement_is_installed(
    make_pod, root: Path, wheelhouse: Path, alone: bool
) -> None:
    lib = root / "mylib"
    lib.mkdir()
    (lib / "pyproject.toml").write_text(
        '[project]\nname = "mylib"\nversion = "0.1"\n\n'
        '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n'
    )
    (lib / "backend.py").write_text(EDITABLE_BACKEND)
    (lib / "mylib.py").write_text("WHO = 'mylib'\n")
    pod_dir = make_pod("edit", "import mylib\n\ndef who():\n    return mylib.WHO\n")
    others = "" if alone else "tinypkg==1.0\n"
    (pod_dir / "requirements.txt").write_text(f"--no-index\n--find-links {wheelhouse}\n-e ../../mylib\n{others}")
    with pypods.load("edit", root=root, progress=False) as pod:
        assert pod.who() == "mylib"
    lock = (pod_dir / "requirements.lock").read_text()
    assert "mylib" in lock


def test_an_included_requirements_file_as_the_only_requirement_is_installed_and_followed(
    make_pod, root: Path, wheelhouse: Path
) -> None:
    """``-r base.txt`` alone counted as an option: nothing was installed; an edit of base.txt never re-resolved."""
    pod_dir = make_pod("nested", "import tinypkg\n\ndef version():\n    return tinypkg.VERSION\n")
    (pod_dir / "base.txt").write_text("tinypkg==1.0\n")
    (pod_dir / "requirements.txt").write_text(f"--no-index\n--find-links {wheelhouse}\n-r base.txt\n")
    with pypods.load("nested", root=root, progress=False) as pod:
        assert pod.version() == "1.0"
    (pod_dir / "base.txt").write_text("tinypkg==2.0\n")
    with pypods.load("nested", root=root, progress=False) as pod:
        assert pod.version() == "2.0"
    os.mkfifo(pod_dir / "fifo.txt")  # a pod may write its own requirements: an include never blocks the digest
    (pod_dir / "requirements.txt").write_text(
        f"--no-index\n--find-links {wheelhouse}\n-r base.txt\n-c fifo.txt\n--requirement=base.txt\n"
    )
    from pypods._env.builders import requirements_digest
    from pypods._env.layout import PodLayout

    assert requirements_digest(PodLayout("nested", root))
