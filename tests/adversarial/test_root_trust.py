"""Finding the project root never adopts a ``pods/`` another user planted or can swap (git's CVE-2022-24765).

The suite runs as root, so "another user" is a folder chowned to uid 12345, and "writable by others"
is a chmod; ``/tmp`` itself (root's, sticky, world-writable) is the legitimate case that must keep working.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

import pypods
from pypods._env import layout
from pypods._env.layout import resolve_root

if TYPE_CHECKING:
    from pathlib import Path

    from conftest import PodFactory

OTHER = 12345  # a uid that is not ours

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="simulating another user's folder needs chown (root)")


@pytest.fixture(autouse=True)
def no_script(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process tests have no ``__main__`` script of their own (pytest's may be a plain file)."""
    monkeypatch.setattr(layout, "_script_folder", lambda: None, raising=False)


def plant(folder: Path, owner: int = OTHER) -> Path:
    """Another user's ``pods/evil/pod.py`` in *folder*, which leaves a mark when it runs."""
    pod = folder / "pods" / "evil"
    pod.mkdir(parents=True)
    (pod / "pod.py").write_text(f"open({str(folder / 'ran')!r}, 'w').close()\n\ndef f():\n    return 1\n")
    for path in (folder / "pods", pod, pod / "pod.py"):
        os.chown(path, owner, owner)
    return pod


def shared(tmp_path: Path, mode: int, owner: int = 0) -> Path:
    folder = tmp_path / "shared"
    folder.mkdir()
    os.chown(folder, owner, owner)
    folder.chmod(mode)
    return folder


def test_pods_in_a_world_writable_parent_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parent = shared(tmp_path, 0o777)
    plant(parent)
    work = parent / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    with pytest.raises(pypods.PodError, match="writable by other users") as caught:
        resolve_root()
    message = str(caught.value)
    assert str(parent) in message
    assert "root=" in message
    assert "PYPODS_ROOT" in message
    with pytest.raises(pypods.PodError, match="writable by other users"):
        pypods.load("mypod", progress=False)
    assert not (parent / "pods" / "mypod").exists()  # the user's new pod is not created in the other's folder
    assert not (parent / "ran").exists()


def test_pods_in_another_users_sticky_folder_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parent = shared(tmp_path, 0o1777, owner=OTHER)
    plant(parent)
    work = parent / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    with pytest.raises(pypods.PodError, match=f"owned by uid {OTHER}|owned by .*\\(uid {OTHER}\\)"):
        resolve_root()


def test_another_users_pods_in_our_sticky_folder_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Root's own /tmp: the folder is ours and sticky, but the pods/ in it was made by someone else.
    parent = shared(tmp_path, 0o1777)
    plant(parent)
    work = parent / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    with pytest.raises(pypods.PodError, match=f"uid {OTHER}") as caught:
        resolve_root()
    assert str(parent / "pods") in str(caught.value)
    assert f"root={str(parent)!r}" in str(caught.value)


def test_another_users_pod_folder_in_our_pods_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "project"
    (project / "pods" / "mine").mkdir(parents=True)
    (project / "pods" / "mine" / "pod.py").write_text("")
    theirs = project / "pods" / "theirs"
    theirs.mkdir()
    (theirs / "pod.py").write_text("")
    os.chown(theirs, OTHER, OTHER)
    monkeypatch.chdir(project)
    with pytest.raises(pypods.PodError, match=f"{theirs}.*uid {OTHER}"):
        pypods.load("theirs", progress=False)


def test_the_walk_stops_at_a_folder_others_can_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A pods/ above an untrusted folder is not reached: nothing above it is known to be the user's.
    (tmp_path / "pods" / "geo").mkdir(parents=True)
    (tmp_path / "pods" / "geo" / "pod.py").write_text("")
    parent = shared(tmp_path, 0o777)
    work = parent / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert resolve_root() == work.resolve()


def test_an_untrusted_current_folder_without_pods_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parent = shared(tmp_path, 0o777)
    monkeypatch.chdir(parent)
    with pytest.raises(pypods.PodError, match="writable by other users"):
        pypods.load("mypod", progress=False)
    assert not (parent / "pods").exists()


def test_our_own_project_under_a_sticky_shared_folder_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parent = shared(tmp_path, 0o1777)  # like /tmp
    project = parent / "project"
    (project / "pods" / "geo").mkdir(parents=True)
    (project / "pods" / "geo" / "pod.py").write_text("")
    deep = project / "src" / "pkg"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    assert resolve_root() == project.resolve()
    empty = parent / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    assert resolve_root() == empty.resolve()  # no pods/ anywhere: the current folder, as before


def test_a_group_writable_folder_counts_only_with_our_private_group(tmp_path: Path) -> None:
    folder = tmp_path / "group"
    folder.mkdir()
    folder.chmod(0o775)  # root's group is named root: a private group, as Debian's umask 002 makes
    assert layout.trusted(folder)
    os.chown(folder, 0, OTHER)
    assert not layout.trusted(folder)


def test_root_accepts_folders_of_sudo_uid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "theirs"
    folder.mkdir()
    os.chown(folder, OTHER, OTHER)
    assert not layout.trusted(folder)
    monkeypatch.setenv("SUDO_UID", str(OTHER))  # `sudo` in the user's own checkout, as git allows
    assert layout.trusted(folder)


def test_explicit_root_is_the_way_to_choose_a_shared_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parent = shared(tmp_path, 0o777)
    plant(parent)
    monkeypatch.chdir(parent)
    assert resolve_root(parent) == parent.resolve()
    monkeypatch.setenv("PYPODS_ROOT", str(parent))
    assert resolve_root() == parent.resolve()


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PYPODS_")}


def test_the_script_folder_fallback_checks_ownership_too(tmp_path: Path) -> None:
    parent = shared(tmp_path, 0o777)
    plant(parent)
    (parent / "client.py").write_text("from pypods._env.layout import resolve_root\nprint(resolve_root())\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run(
        [sys.executable, str(parent / "client.py")], cwd=elsewhere, capture_output=True, text=True,
        env=clean_env(), timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "writable by other users" in result.stderr
    assert str(parent) in result.stderr


def test_pypods_commands_apply_the_same_rule(tmp_path: Path) -> None:
    parent = shared(tmp_path, 0o777)
    plant(parent)
    work = parent / "work"
    work.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "pypods", "list"], cwd=work, capture_output=True, text=True, env=clean_env(),
        timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout
    assert "writable by other users" in result.stderr
    assert "evil" not in result.stdout


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_a_missing_root_is_refused_and_not_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    typo = tmp_path / "projetc" / "deep"
    if how == "environment":
        monkeypatch.setenv("PYPODS_ROOT", str(typo))
    with pytest.raises(pypods.PodConfigError, match="does not exist") as caught:
        pypods.load("mypod", progress=False, **({"root": typo} if how == "argument" else {}))
    assert str(typo) in str(caught.value)
    assert not (tmp_path / "projetc").exists()


def test_pypods_commands_refuse_another_users_pod_folder(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "pods" / "mine").mkdir(parents=True)
    (project / "pods" / "mine" / "pod.py").write_text("")
    theirs = project / "pods" / "theirs"
    theirs.mkdir()
    os.chown(theirs, OTHER, OTHER)
    result = subprocess.run(
        [sys.executable, "-m", "pypods", "new", "theirs", "--no-build"], cwd=project, capture_output=True, text=True,
        env=clean_env(), timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert f"uid {OTHER}" in result.stderr
    assert not (theirs / "pod.py").exists()


def run_pypods(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pypods", *args], cwd=cwd, capture_output=True, text=True, env=clean_env(),
        timeout=300, check=False,
    )  # fmt: skip


def test_commands_over_all_pods_refuse_another_users_pod_folder(tmp_path: Path) -> None:
    """`pypods sync` (no names) would build theirs: its requirements are code (a local path runs its build backend)."""
    project = tmp_path / "project"
    (project / "pods" / "mine").mkdir(parents=True)
    (project / "pods" / "mine" / "pod.py").write_text("")
    theirs = project / "pods" / "theirs"
    theirs.mkdir()
    (theirs / "pod.py").write_text("def f():\n    return 1\n")
    (theirs / "requirements.txt").write_text("./not-a-package\n")
    os.chown(theirs, OTHER, OTHER)
    result = run_pypods(project, "sync")
    assert result.returncode == 1, result.stderr
    assert f"{theirs}" in result.stderr
    assert f"uid {OTHER}" in result.stderr
    assert not (theirs / "venv").exists()
    assert not (project / "pods" / "mine" / "venv").exists()  # refused before anything is built
    listed = run_pypods(project, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    states = {record["name"]: record["state"] for record in json.loads(listed.stdout)}
    assert states["theirs"] == "untrusted"
    doctor = run_pypods(project, "doctor")
    assert doctor.returncode == 1
    assert "pods/theirs/ is owned by" in doctor.stdout
    assert "--root" in doctor.stdout
    gone = project / "pods" / "gone"  # another user's folder without pod.py: not ours to clean
    (gone / "venv").mkdir(parents=True)
    os.chown(gone, OTHER, OTHER)
    collected = run_pypods(project, "gc", "--json")
    assert collected.returncode == 0, collected.stderr
    assert json.loads(collected.stdout)["removed"] == []
    assert (gone / "venv").is_dir()


def test_a_private_group_with_another_member_is_not_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import grp

    folder = tmp_path / "group"
    folder.mkdir()
    folder.chmod(0o775)
    assert layout.trusted(folder)
    real = grp.getgrgid

    def with_bob(gid: int) -> grp.struct_group:
        entry = real(gid)
        return grp.struct_group((entry.gr_name, entry.gr_passwd, entry.gr_gid, [*entry.gr_mem, "bob"]))

    monkeypatch.setattr(grp, "getgrgid", with_bob)  # `usermod -aG root bob`: bob may write there too
    assert not layout.trusted(folder)


def test_a_project_swapped_after_the_load_is_refused_at_the_next_worker_start(
    make_pod: PodFactory, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The load checks paths, it does not bind them: a worker started later must not run another user's pod.

    Swapping is possible when a folder above the project is writable by others (then anyone may
    rename the project away and put their own in its place); chown stands in for the swap.
    """
    from pypods._env.layout import open_layout

    pod_dir = make_pod("geo", "def f():\n    return 1\n")
    monkeypatch.chdir(root)
    assert open_layout("geo", None, create=False).found
    assert not open_layout("geo", root, create=False).found  # root= is the user's choice: never re-checked
    with pypods.load("geo", progress=False, workers=1) as pod:
        assert pod.f() == 1
    try:
        for swapped in (pod_dir, root):
            with pypods.load("geo", progress=False, workers=1, start="lazy") as pod:
                os.chown(swapped, OTHER, OTHER)  # after the load's check, before the first worker starts
                with pytest.raises(pypods.PodError, match=f"{swapped}.*uid {OTHER}"):
                    pod.f()
            os.chown(swapped, 0, 0)
    finally:
        os.chown(root, 0, 0)
        os.chown(pod_dir, 0, 0)


def test_under_sudo_the_users_umask_002_folders_stay_the_users(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`sudo pypods sync` in alice's project: her folders are group-writable by her private group, not root's."""
    import grp
    import pwd

    folder = tmp_path / "alices"
    folder.mkdir()
    folder.chmod(0o775)
    os.chown(folder, OTHER, OTHER)
    real_user, real_group = pwd.getpwuid, grp.getgrgid
    members: list[str] = []

    def user(uid: int) -> pwd.struct_passwd:
        if uid == OTHER:
            return pwd.struct_passwd(("alice", "x", OTHER, OTHER, "", "/home/alice", "/bin/sh"))
        return real_user(uid)

    def group(gid: int) -> grp.struct_group:
        return grp.struct_group(("alice", "x", OTHER, members)) if gid == OTHER else real_group(gid)

    monkeypatch.setattr(pwd, "getpwuid", user)
    monkeypatch.setattr(grp, "getgrgid", group)
    assert not layout.trusted(folder)  # not root's, and no sudo: another user's
    monkeypatch.setenv("SUDO_UID", str(OTHER))
    assert layout.trusted(folder)  # was refused: the group was compared with root's egid
    members.append("bob")
    assert not layout.trusted(folder)


def test_a_crowded_pods_folder_above_does_not_stall_the_search(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Anyone can fill /tmp/pods; the search from /tmp/project looks at a bounded number of its entries."""
    monkeypatch.setattr(layout, "MAX_LOOKED_AT", 50)
    parent = shared(tmp_path, 0o1777)
    crowd = parent / "pods"
    crowd.mkdir()
    for index in range(200):
        (crowd / f"d{index:03}").mkdir()
    (crowd / "zzz").mkdir()
    (crowd / "zzz" / "pod.py").write_text("")  # past the bound (scandir order is the file system's)
    os.chown(crowd, OTHER, OTHER)
    work = parent / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    calls: list[str] = []
    real = os.path.isfile
    monkeypatch.setattr(os.path, "isfile", lambda path: calls.append(path) or real(path))
    try:
        resolve_root()
    except pypods.PodError:
        pass  # the pod was among the first 50 looked at: refused, as before
    assert len([c for c in calls if str(crowd) in str(c)]) <= 50
