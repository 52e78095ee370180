"""The source watch runs on the caller's thread at each call: a pod's folder can neither break nor stall it."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pypods
from pypods import _reload
from pypods._reload import SourceWatch, pod_sources

if TYPE_CHECKING:
    from pathlib import Path

    import pytest


def deep_folder(top: Path, levels: int) -> str:
    top.mkdir()
    path = os.fspath(top)
    for _ in range(levels):  # os.makedirs recurses once per level too
        path += "/d"
        os.mkdir(path)
    return path


def remove_deep(top: str) -> None:
    """Remove a deep tree without recursion (shutil.rmtree, and so pytest's tmp cleanup, recurse on 3.11)."""
    stack = [top]
    while stack:
        with os.scandir(stack[-1]) as listing:
            entries = list(listing)
        folders = [entry.path for entry in entries if entry.is_dir(follow_symlinks=False)]
        for entry in entries:
            if not entry.is_dir(follow_symlinks=False):
                os.unlink(entry.path)
        if folders:
            stack.extend(folders)
        else:
            os.rmdir(stack.pop())


def test_a_folder_1100_levels_deep_neither_raises_nor_stops_reloads(
    make_pod, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_reload, "CHECK_EVERY", 0.0)  # look at every call
    pod_dir = make_pod("deep", "def f():\n    return 1\n")
    try:
        with pypods.load("deep", root=root, reload=True, progress=False) as pod:
            assert pod.f() == 1
            deep = deep_folder(pod_dir / "data", 1100)  # os.walk recursed once per level: RecursionError on <= 3.11
            with open(deep + "/buried.py", "w") as handle:
                handle.write("X = 1\n")
            (pod_dir / "pod.py").write_text("def f():\n    return 22\n")
            assert pod.f() == 22  # the edit is served, on the caller's thread, without a RecursionError
            assert pod.f() == 22
        assert deep + "/buried.py" not in pod_sources(pod_dir)  # beyond MAX_DEPTH: not watched
    finally:
        if (pod_dir / "data").exists():
            remove_deep(str(pod_dir / "data"))


def test_an_error_in_the_walk_is_no_reload_and_a_log_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "pod.py").write_text("")
    watch = SourceWatch(tmp_path)
    (tmp_path / "pod.py").write_text("changed")

    def broken(pod_dir: Path) -> list[str]:
        raise OSError("cannot read \x1b]0;owned\x07 in the pod's folder")  # a name the pod chose

    monkeypatch.setattr(_reload, "pod_sources", broken)
    with caplog.at_level("WARNING", logger="pypods"):
        assert watch.changed() is False
    assert any("no reload" in record.getMessage() for record in caplog.records)
    assert not any("\x1b" in record.getMessage() for record in caplog.records)  # a log line may reach a terminal


def test_the_walk_is_bounded_in_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for index in range(50):
        (tmp_path / f"m{index}.py").write_text("")
    monkeypatch.setattr(_reload, "MAX_ENTRIES", 10)
    with caplog.at_level("WARNING", logger="pypods"):
        found = pod_sources(tmp_path)
    assert len(found) <= 10
    assert any("entries" in record.getMessage() for record in caplog.records)


def test_modules_at_a_sane_depth_and_symlinked_files_are_still_watched(tmp_path: Path) -> None:
    (tmp_path / "pod.py").write_text("")
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "sub" / "helper.py").write_text("")
    (tmp_path / "venv").mkdir()
    (tmp_path / "venv" / "site.py").write_text("")
    os.mkfifo(tmp_path / "fifo.py")
    assert pod_sources(tmp_path) == sorted([str(tmp_path / "pod.py"), str(tmp_path / "pkg" / "sub" / "helper.py")])


def test_pod_py_and_shallow_modules_are_watched_past_the_entry_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cap cut an arbitrary part: a pod with many data files at its top lost pod.py, so edits never reloaded."""
    monkeypatch.setattr(_reload, "MAX_ENTRIES", 40)
    (tmp_path / "pod.py").write_text("")
    for index in range(30):
        (tmp_path / f"data{index:02}.csv").write_text("")
    (tmp_path / "helpers").mkdir()
    (tmp_path / "helpers" / "util.py").write_text("")
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    for index in range(30):
        (deep / f"gen{index:02}.py").write_text("")
    for _ in range(5):  # scandir's order is the file system's: the result must not depend on it
        found = pod_sources(tmp_path)
        assert str(tmp_path / "pod.py") in found
        assert str(tmp_path / "helpers" / "util.py") in found  # breadth first: the deep folder is cut, not this
    many = tmp_path / "many"
    many.mkdir()
    (many / "pod.py").write_text("")
    for index in range(100):
        (many / f"m{index:03}.txt").write_text("")
    assert pod_sources(many) == [str(many / "pod.py")]


def test_one_edit_is_one_reload_when_two_threads_look_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading
    import time

    monkeypatch.setattr(_reload, "CHECK_EVERY", 0.0)
    (tmp_path / "pod.py").write_text("")
    watch = SourceWatch(tmp_path)
    walk = _reload.pod_sources

    def slow(pod_dir: Path) -> list[str]:
        time.sleep(0.2)  # the window in which a second thread saw the same edit
        return walk(pod_dir)

    monkeypatch.setattr(_reload, "pod_sources", slow)
    (tmp_path / "pod.py").write_text("edited")
    start = threading.Barrier(4)
    seen: list[bool] = []

    def look() -> None:
        start.wait()
        seen.append(watch.changed())

    threads = [threading.Thread(target=look) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen.count(True) == 1  # was 4: four reloads of one edit, four counts toward the brake
    assert watch.changed() is False
