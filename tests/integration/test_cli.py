"""The `pypods` command end to end, as a subprocess, against real pods in temp folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING

import pytest

import pypods

if TYPE_CHECKING:
    from pathlib import Path

GEO = '''
def area(radius: float, *, pi: float = 3.14159) -> float:
    """Area of a circle.

    Second paragraph.
    """
    return pi * radius * radius

def countdown(n: int):
    while n > 0:
        yield n
        n -= 1

def fail(message: str) -> None:
    raise ValueError(message)
'''


def run(root: Path, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYPODS_ROOT": str(root)}
    return subprocess.run(
        [sys.executable, "-m", "pypods", *args], capture_output=True, text=True, env=env, input=input, timeout=300,
        check=False,
    )  # fmt: skip


@pytest.fixture
def geo(make_pod, root: Path) -> Path:
    make_pod("geo", GEO)
    return root


def test_help_and_version(root: Path) -> None:
    result = run(root, "--help")
    assert result.returncode == 0
    for command in ("new", "add", "remove", "run", "list", "describe", "sync", "call", "stubs", "rm", "gc", "doctor"):
        assert command in result.stdout
        assert run(root, command, "--help").returncode == 0
    assert pypods.__version__ in run(root, "--version").stdout


def test_new_builds_and_rejects_bad_names(root: Path, wheelhouse: Path) -> None:
    result = run(root, "new", "fresh", "-r", f"--find-links={wheelhouse}", "-r", "tinypkg==1.0")
    assert result.returncode == 0, result.stderr
    assert (root / "pods" / "fresh" / "venv" / ".pypods-ready").exists()
    assert "tinypkg==1.0" in (root / "pods" / "fresh" / "requirements.lock").read_text()
    again = run(root, "new", "fresh")
    assert again.returncode == 1
    assert again.stderr.startswith("pypods: error: pod 'fresh' already exists")
    assert "hint: " in again.stderr
    bad = run(root, "new", "../evil")
    assert bad.returncode == 2
    assert "pod name" in bad.stderr
    assert not (root / "evil").exists()


def test_list_plain_and_json(geo: Path) -> None:
    result = run(geo, "list")
    assert result.returncode == 0
    assert result.stdout.splitlines()[0].split("\t") == ["pod", "python", "state", "functions", "size"]
    assert "geo\t-\tmissing" in result.stdout
    assert run(geo, "sync").returncode == 0
    records = json.loads(run(geo, "list", "--json").stdout)
    assert records[0]["name"] == "geo"
    assert records[0]["state"] == "ready"
    (geo / "pods" / "geo" / "requirements.txt").write_text("# edited\nsomething-new\n")
    stale = json.loads(run(geo, "list", "--json").stdout)[0]
    assert stale["state"] == "stale"
    assert stale["why"] == "requirements changed"


def test_describe(geo: Path) -> None:
    result = run(geo, "describe", "geo")
    assert result.returncode == 0, result.stderr
    assert "area(radius: float, *, pi: float = 3.14159) -> float\tArea of a circle." in result.stdout
    records = json.loads(run(geo, "describe", "geo", "--json").stdout)
    assert [r["name"] for r in records] == ["area", "countdown", "fail"]
    missing = run(geo, "describe", "nope")
    assert missing.returncode == 1
    assert "no pod 'nope'" in missing.stderr


def test_call(geo: Path) -> None:
    assert run(geo, "call", "geo", "area", "2").stdout.strip() == "12.56636"
    assert run(geo, "call", "geo", "area", "2", "-k", "pi=3").stdout.strip() == "12"
    assert json.loads(run(geo, "call", "geo", "countdown", "3", "--json").stdout) == [3, 2, 1]
    failed = run(geo, "call", "geo", "fail", '"boom"')
    assert failed.returncode == 1
    assert "ValueError" in failed.stderr
    assert "boom" in failed.stderr
    assert "hint: run with -v for the pod's traceback" in failed.stderr
    verbose = run(geo, "call", "geo", "fail", '"boom"', "-v")
    assert "raise ValueError(message)" in verbose.stderr
    unknown = run(geo, "call", "geo", "nope")
    assert unknown.returncode == 1
    assert "has no function 'nope'" in unknown.stderr
    assert "hint: did you mean 'area'?" in run(geo, "call", "geo", "aera", "1").stderr


def test_call_and_describe_a_pod_whose_functions_are_named_like_pod_attributes(make_pod, root: Path) -> None:
    make_pod("named", "def functions():\n    return 'f'\n\ndef call(x):\n    return x + 1\n")
    assert run(root, "call", "named", "functions").stdout.strip() == "f"
    assert run(root, "call", "named", "call", "1").stdout.strip() == "2"
    described = run(root, "describe", "named")
    assert described.returncode == 0, described.stderr
    assert "functions" in described.stdout
    assert "call" in described.stdout


def test_call_takes_and_prints_ints_past_4300_digits(make_pod, root: Path) -> None:
    make_pod(
        "big",
        "def digits(n):\n    return int('7' * n) if n < 4000 else (10**n - 1) // 9 * 7\n\ndef echo(x):\n    return x\n",
    )
    printed = run(root, "call", "big", "digits", "5000")
    assert printed.returncode == 0, printed.stderr[-2000:]
    assert printed.stdout.strip() == "7" * 5000
    assert run(root, "call", "big", "digits", "5000", "--json").stdout.strip() == "7" * 5000
    assert run(root, "call", "big", "echo", "9" * 6000).stdout.strip() == "9" * 6000


def test_sync_reports_failures(make_pod, root: Path) -> None:
    make_pod("good", "def f():\n    return 1\n")
    make_pod("bad", "def f():\n    return 1\n", requirements=("tinypkg==7.7",))
    result = run(root, "sync")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "good\tready" in result.stdout
    assert "bad\tfailed" in result.stdout
    # printed once (no logger last-resort duplicate), with uv's cause lines kept
    assert result.stderr.count("failed for requirement(s) tinypkg==7.7") == 1, result.stderr
    assert "cause:" in result.stderr


def test_rm_and_gc(geo: Path) -> None:
    assert run(geo, "sync", "geo").returncode == 0
    assert run(geo, "rm", "geo").returncode == 0
    assert not (geo / "pods" / "geo" / "venv").exists()
    assert (geo / "pods" / "geo" / "pod.py").exists()
    kept = run(geo, "rm", "geo", "--all", input="n\n")
    assert kept.returncode == 0
    assert "nothing removed" in kept.stderr
    assert "error" not in kept.stderr
    assert (geo / "pods" / "geo").exists()
    no_answer = run(geo, "rm", "geo", "--all", input="")  # stdin closed, as in a script: "no", not Ctrl-C
    assert no_answer.returncode == 0, no_answer.stderr
    assert "nothing removed" in no_answer.stderr
    assert (geo / "pods" / "geo").exists()
    assert run(geo, "rm", "geo", "--all", "--yes").returncode == 0
    assert not (geo / "pods" / "geo").exists()
    orphan = geo / "pods" / "gone" / "venv"
    orphan.mkdir(parents=True)
    (orphan / "big").write_bytes(b"x" * 5000)
    dry = run(geo, "gc", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"would remove {orphan}" in dry.stdout
    assert "would free" in dry.stderr
    assert "freed" not in dry.stderr.replace("would free", "")
    assert orphan.exists()
    result = run(geo, "gc")
    assert result.returncode == 0, result.stderr
    assert f"removed {orphan}" in result.stdout
    assert "[" not in result.stderr  # uv's answer as text, not a Python list
    assert not orphan.exists()


def test_doctor(geo: Path) -> None:
    result = run(geo, "doctor")
    assert "uv" in result.stdout
    assert sys.executable in result.stdout or "interpreters" in result.stdout
    assert result.returncode == 1  # geo has no environment yet
    assert "pypods sync geo" in result.stdout
    assert run(geo, "sync").returncode == 0
    assert run(geo, "doctor").returncode == 0


def test_stubs_make_mypy_check_pod_calls(geo: Path) -> None:
    result = run(geo, "stubs")
    assert result.returncode == 0, result.stderr
    good = textwrap.dedent(
        """
        import pods_typed
        from pods_typed import geo

        a: float = geo.area(2.0)
        with pods_typed.load("geo") as pod:
            b: float = pod.area(1.0, pi=3.0)
        print(a, b)
        """
    )
    (geo / "good.py").write_text(good)
    (geo / "bad.py").write_text(good.replace("geo.area(2.0)", 'geo.area("two")'))
    mypy = [sys.executable, "-m", "mypy", "--no-incremental", "--strict"]
    ok = subprocess.run([*mypy, "good.py"], cwd=geo, capture_output=True, text=True, timeout=300, check=False)
    assert ok.returncode == 0, ok.stdout
    bad = subprocess.run([*mypy, "bad.py"], cwd=geo, capture_output=True, text=True, timeout=300, check=False)
    assert bad.returncode == 1
    assert 'Argument 1 to "area" has incompatible type "str"; expected "float"' in bad.stdout
    ran = subprocess.run([sys.executable, "good.py"], cwd=geo, capture_output=True, text=True, timeout=300, check=False)
    assert ran.stdout.split() == ["12.56636", "3.0"], ran.stderr


def test_one_broken_pod_does_not_keep_the_others_from_their_stubs(make_pod, geo: Path) -> None:
    make_pod("syntax", "def f(:\n    pass\n")
    result = run(geo, "stubs")
    assert result.returncode == 1
    assert "skipped pod 'syntax'" in result.stderr
    assert "hint:" in result.stderr
    assert (geo / "pods_typed" / "geo.pyi").exists()
    assert not (geo / "pods_typed" / "syntax.pyi").exists()
    assert run(geo, "stubs", "syntax").returncode == 1  # named: its own error


def test_global_options_anywhere_and_quiet(geo: Path, tmp_path: Path) -> None:
    elsewhere = {**os.environ}
    elsewhere.pop("PYPODS_ROOT", None)
    for args in (["list", "--root", str(geo)], ["--root", str(geo), "list"], ["list", f"--root={geo}"]):
        result = subprocess.run(
            [sys.executable, "-m", "pypods", *args], capture_output=True, text=True, env=elsewhere, cwd=tmp_path,
            timeout=120, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[1].startswith("geo\t"), args
    quiet = run(geo, "sync", "-q")
    assert quiet.returncode == 0
    assert quiet.stderr == ""
    loud = run(geo, "rm", "geo")
    assert "removed" in loud.stderr
    assert run(geo, "-q", "sync").stderr == ""
    verbose = run(geo, "call", "geo", "area", "1", "-v")
    assert f"pypods: root: {geo} ($PYPODS_ROOT)" in verbose.stderr
    assert "pypods: pod 'geo': worker " in verbose.stderr
    assert "root:" not in run(geo, "call", "geo", "area", "1").stderr


def test_usage_errors_exit_2_and_failures_exit_1_with_hints(geo: Path) -> None:
    usage = run(geo, "list", "--nope")
    assert usage.returncode == 2
    assert "pypods: error: No such option" in usage.stderr
    missing = run(geo, "describe", "gae")
    assert missing.returncode == 1
    assert missing.stderr.splitlines()[0] == f"pypods: error: no pod 'gae' in {geo / 'pods'} (pods there: geo)"
    assert missing.stderr.splitlines()[1].startswith("hint: create it with `pypods new gae`")
    assert "did you mean 'geo'?" in missing.stderr.splitlines()[1]
    assert not (geo / "pods" / "gae").exists()  # a typo creates nothing


def test_call_arguments_negative_numbers_and_malformed_json(geo: Path) -> None:
    assert run(geo, "call", "geo", "area", "-1").stdout.strip() == "3.14159"
    assert run(geo, "call", "geo", "area", "-2.5", "-k", "pi=-1").stdout.strip() == "-6.25"
    bad = run(geo, "call", "geo", "fail", "[1, 2")
    assert bad.returncode == 2
    assert "not valid JSON or a Python literal" in bad.stderr
    typo = run(geo, "call", "geo", "area", "2", "--timeot", "3")
    assert typo.returncode == 2
    assert "No such option" in typo.stderr
    assert run(geo, "call", "geo", "fail", "bare-word").stderr.count("bare-word") == 1  # a bare word is text
    assert run(geo, "call", "geo", "area", "2", "--timeout", "nan").returncode == 2


@pytest.mark.parametrize("text", ['"x', "[1,", "{bad json", '{"a": "b'])
def test_malformed_argument_hint_quotes_it_so_it_parses_back(text: str) -> None:
    import click

    from pypods._cli.calls import parse_argument

    with pytest.raises(click.BadParameter) as info:
        parse_argument(text)
    suggested = str(info.value.message).rsplit("quote it: ", 1)[1]
    assert suggested[0] == suggested[-1] == "'"
    assert parse_argument(suggested[1:-1]) == text


def test_call_on_a_bad_pod_toml_is_an_error_not_a_traceback(geo: Path) -> None:
    (geo / "pods" / "geo" / "pod.toml").write_text("timout = 3\n")
    for args in (("call", "geo", "area", "2"), ("describe", "geo"), ("sync", "geo"), ("run", "geo", "--", "true")):
        result = run(geo, *args)
        assert result.returncode == 1, args
        assert "Traceback" not in result.stderr, result.stderr
        assert "did you mean 'timeout'" in result.stderr, args


def test_failed_new_leaves_nothing_behind(root: Path, wheelhouse: Path) -> None:
    args = ("new", "broken", "-r", "--no-index", "-r", f"--find-links={wheelhouse}", "-r", "tinypkg==9.9")
    first = run(root, *args)
    assert first.returncode == 1
    assert "the pod was not created" in first.stderr
    assert first.stderr.count("hint:") == 1  # not also "fix requirements.txt and load the pod again"
    assert not (root / "pods" / "broken").exists()
    second = run(root, *args)
    assert "already exists" not in second.stderr


def test_new_pins_python_and_escapes_it(root: Path) -> None:
    assert run(root, "new", "pinned", "--no-build").returncode == 0
    text = (root / "pods" / "pinned" / "pod.toml").read_text()
    assert f'python = "{sys.version_info[0]}.{sys.version_info[1]}"' in text
    injected = run(root, "new", "evil", "--no-build", "--python", '3.11"\ncodec = "pickle')
    assert injected.returncode == 2
    assert not (root / "pods" / "evil").exists()


def test_too_old_python_and_network_failure_hints(root: Path) -> None:
    old = run(root, "new", "ancient", "--python", "3.7")
    assert old.returncode == 1
    assert "too old" in old.stderr
    assert "not found" not in old.stderr
    env_root = root / "pods" / "offline"
    env_root.mkdir(parents=True)
    (env_root / "pod.py").write_text("def f():\n    return 1\n")
    (env_root / "requirements.txt").write_text("--index-url http://127.0.0.1:9/simple\nsomething-absent\n")
    result = subprocess.run(
        [sys.executable, "-m", "pypods", "sync", "offline"], capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "PYPODS_ROOT": str(root), "UV_HTTP_RETRIES": "0"},
    )  # fmt: skip
    assert result.returncode == 1
    assert "could not be reached" in result.stderr
    assert "hint: fix" not in result.stderr


def test_list_empty_and_ignored_folders(root: Path) -> None:
    empty = run(root, "list")
    assert empty.returncode == 0
    assert empty.stdout == ""
    assert "no pods in" in empty.stderr
    assert json.loads(run(root, "list", "--json").stdout) == []
    (root / "pods" / "my-pod").mkdir(parents=True)
    (root / "pods" / "my-pod" / "pod.py").write_text("")
    listed = run(root, "list")
    assert "my-pod\t-\tignored (not a valid pod name" in listed.stdout
    assert "'my_pod'" in listed.stdout
    doctor = run(root, "doctor")
    assert "pods/my-pod/ is ignored" in doctor.stdout
    called = run(root, "call", "my-pod", "f")
    assert called.returncode == 2
    assert "hint: pods/my-pod/ is not a valid pod name; rename it" in called.stderr


def test_add_and_remove_edit_requirements_and_resync(make_pod, root: Path, wheelhouse: Path) -> None:
    make_pod("deps", "import importlib.metadata as m\n\ndef v(name):\n    return m.version(name)\n")
    reqs = root / "pods" / "deps" / "requirements.txt"
    reqs.write_text(f"--no-index\n--find-links {wheelhouse}\n")
    assert run(root, "add", "deps", "tinypkg==1.0").returncode == 0
    assert run(root, "call", "deps", "v", '"tinypkg"').stdout.strip() == "1.0"
    assert run(root, "add", "deps", "tinypkg==2.0").returncode == 0  # replaces the same project's line
    assert reqs.read_text().count("tinypkg") == 1
    assert run(root, "call", "deps", "v", '"tinypkg"').stdout.strip() == "2.0"
    before = reqs.read_text()
    failed = run(root, "add", "deps", "helperpkg==9.9")
    assert failed.returncode == 1
    assert reqs.read_text() == before  # put back, as uv add does
    assert json.loads(run(root, "list", "--json").stdout)[0]["state"] == "ready"  # and the environment too
    assert run(root, "remove", "deps", "TinyPkg").returncode == 0
    assert "tinypkg" not in reqs.read_text()
    assert "PackageNotFoundError" in run(root, "call", "deps", "v", '"tinypkg"').stderr
    absent = run(root, "remove", "deps", "nothere")
    assert absent.returncode == 1
    assert "does not require 'nothere'" in absent.stderr


def test_run_a_command_in_the_pods_environment(make_pod, root: Path) -> None:
    make_pod("shell", "def f():\n    return 1\n", toml='[env]\nGREETING = "hi"\n')
    code = "import os, sys; print(sys.prefix); print(os.environ['GREETING'])"
    result = run(root, "run", "shell", "--", "python", "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(root / "pods" / "shell" / "venv"), "hi"]
    assert run(root, "run", "shell", "--", "python", "-c", "raise SystemExit(3)").returncode == 3
    missing = run(root, "run", "shell", "--", "no-such-program-here")
    assert missing.returncode == 127
    assert "hint:" in missing.stderr
    piped = run(root, "run", "shell", "--", "python", "-i", input="print(6 * 7)\n")
    assert "42" in piped.stdout


def test_run_imports_the_pod_from_any_folder_under_the_project_or_with_root(make_pod, root: Path) -> None:
    make_pod("shell", "def f():\n    return 41\n")
    code = "from pods.shell.pod import *; print(f() + 1)"
    env = {k: v for k, v in os.environ.items() if k != "PYPODS_ROOT"}
    below = root / "src" / "deep"
    below.mkdir(parents=True)
    for cwd, extra in ((below, ()), (root.parent, ("--root", str(root)))):
        result = subprocess.run(
            [sys.executable, "-m", "pypods", *extra, "run", "shell", "--", "python", "-c", code],
            cwd=cwd, capture_output=True, text=True, env=env, timeout=300, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr  # was ModuleNotFoundError: No module named 'pods'
        assert result.stdout.split() == ["42"]


def test_json_on_every_command_that_prints_data(geo: Path) -> None:
    assert json.loads(run(geo, "sync", "--json").stdout)[0]["ready"] is True
    assert json.loads(run(geo, "list", "--json").stdout)[0]["state"] == "ready"
    assert json.loads(run(geo, "describe", "geo", "--json").stdout)[0]["name"] == "area"
    assert json.loads(run(geo, "call", "geo", "area", "1", "--json").stdout) == 3.14159
    assert json.loads(run(geo, "gc", "--dry-run", "--json").stdout)["dry_run"] is True
    assert json.loads(run(geo, "doctor", "--json").stdout)["pods"][0]["name"] == "geo"
    assert "geo" in json.loads(run(geo, "stubs", "--json").stdout)["pods"]
    kept = json.loads(run(geo, "rm", "geo", "--all", "--json", input="n\n").stdout)  # the question is on stderr
    assert kept["removed"] is False
    removed = json.loads(run(geo, "rm", "geo", "--json").stdout)
    assert removed["removed"] is True
    assert removed["bytes"] > 0
    assert removed["path"] == str(geo / "pods" / "geo" / "venv")


def test_add_and_remove_print_json(make_pod, root: Path, wheelhouse: Path) -> None:
    make_pod("deps", "def f():\n    return 1\n")
    (root / "pods" / "deps" / "requirements.txt").write_text(f"--no-index\n--find-links {wheelhouse}\n")
    added = run(root, "add", "deps", "tinypkg==1.0", "--json")
    assert added.returncode == 0, added.stderr
    assert "tinypkg==1.0" in json.loads(added.stdout)["requirements"]
    assert json.loads(added.stdout)["synced"] is True
    removed = json.loads(run(root, "remove", "deps", "tinypkg", "--no-sync", "--json").stdout)
    assert "tinypkg==1.0" not in removed["requirements"]
    assert removed["synced"] is False
    failed = run(root, "add", "deps", "tinypkg==9.9")
    assert failed.returncode == 1
    assert failed.stderr.count("hint:") == 1, failed.stderr  # "left as it was", not "fix requirements.txt"


@pytest.mark.slow  # a sync, a start and a 3 s wait: past the default 30 s on a loaded 2-core machine
def test_ctrl_c_exits_130(make_pod, root: Path) -> None:
    import signal
    import time

    make_pod("slow", "import time\n\ndef wait():\n    time.sleep(60)\n")
    assert run(root, "sync").returncode == 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "pypods", "call", "slow", "wait"], env={**os.environ, "PYPODS_ROOT": str(root)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
