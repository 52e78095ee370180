"""What a Ray pod ships (and what it never does), and the actor's staging and replies: no Ray needed."""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING

import pytest

import pypods
from pypods._client import rayactor, rayship
from pypods._client.core import CallProtocol, Outcome
from pypods._env.layout import PodLayout, PodSettings
from pypods._worker import messages
from pypods._worker.codec import Encoder, decode

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture
def pod(tmp_path: Path) -> PodLayout:
    layout = PodLayout("shipped", tmp_path / "project")
    layout.pod_dir.mkdir(parents=True)
    layout.pod_py.write_text("def f():\n    return 1\n")
    return layout


def _write(base: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = base / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_secrets_state_and_environments_never_ship(pod: PodLayout) -> None:
    _write(
        pod.pod_dir,
        {
            "helpers.py": "x = 1\n",
            "sub/__init__.py": "",
            "sub/mod.py": "y = 2\n",
            "requirements.txt": "six\n",
            ".env": "TOKEN=secret\n",
            ".env.local": "TOKEN=secret\n",
            "sub/.env": "TOKEN=secret\n",
            ".git/config": "[remote]\n",
            "venv/bin/python": "",
            ".venv/lib/x.py": "",
            ".pypods/description.bson": "",
            "__pycache__/pod.cpython-311.pyc": "",
            "sub/mod.pyc": "",
        },
    )
    assert sorted(rayship.pod_files(pod)) == [  # requirements go as the runtime_env, not as a file
        "helpers.py",
        "pod.py",
        "sub/__init__.py",
        "sub/mod.py",
    ]
    assert rayship.pod_files(pod)["sub/mod.py"] == b"y = 2\n"


def test_symlinks_ship_only_their_targets_inside_the_pod(pod: PodLayout, tmp_path: Path) -> None:
    outside = tmp_path / "client_secret.txt"
    outside.write_text("the client's own file")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "lib.py").write_text("z = 3\n")
    _write(pod.pod_dir, {"real.py": "r = 1\n"})
    (pod.pod_dir / "leak.txt").symlink_to(outside)
    (pod.pod_dir / "leak_dir").symlink_to(tmp_path / "elsewhere")
    (pod.pod_dir / "alias.py").symlink_to(pod.pod_dir / "real.py")
    (pod.pod_dir / "dangling.py").symlink_to(tmp_path / "missing.py")
    (pod.pod_dir / "loop").symlink_to(pod.pod_dir / "loop")
    files = rayship.pod_files(pod)
    assert sorted(files) == ["alias.py", "pod.py", "real.py"]
    assert files["alias.py"] == b"r = 1\n"
    assert not any(b"client's own" in data for data in files.values())


def test_a_fifo_in_the_pod_is_skipped_without_blocking(pod: PodLayout) -> None:
    os.mkfifo(pod.pod_dir / "pipe")
    began = time.monotonic()
    assert sorted(rayship.pod_files(pod)) == ["pod.py"]
    assert time.monotonic() - began < 5


def test_gitignore_subset(pod: PodLayout) -> None:
    _write(
        pod.pod_dir,
        {
            ".gitignore": "# data, build output\n*.csv\n!keep.csv\ndata/\n/build\ndocs/*.md\nsecret?.txt\n**/tmp/\n",
            "pod.toml": 'ship = ["*.csv", "*.md", "*.txt"]\n',  # named, then filtered by .gitignore
            "a.csv": "",
            "keep.csv": "",
            "sub/b.csv": "",
            "data/x.py": "",
            "sub/data/y.py": "",
            "build/out.py": "",
            "sub/build/kept.py": "",
            "docs/guide.md": "",
            "docs/deep/kept.md": "",
            "secret1.txt": "",
            "secret12.txt": "",
        },
    )
    assert sorted(rayship.pod_files(pod)) == [
        "docs/deep/kept.md",
        "keep.csv",
        "pod.py",
        "secret12.txt",
        "sub/build/kept.py",
    ]


def test_gitignore_rules_parse() -> None:
    rules = rayship.parse_gitignore("#c\n\n/a/b/\n!c\n*.log\n")
    assert rules == [
        rayship.Rule("a/b", negate=False, dir_only=True, anchored=True),
        rayship.Rule("c", negate=True, dir_only=False, anchored=False),
        rayship.Rule("*.log", negate=False, dir_only=False, anchored=False),
    ]
    assert rayship.ignored(rules, "x/y.log", False)
    assert not rayship.ignored(rules, "a/b", False)  # a folder rule does not match a file
    assert rayship.ignored(rules, "a/b", True)


def test_total_size_is_bounded_with_a_clear_error(pod: PodLayout, monkeypatch: pytest.MonkeyPatch) -> None:
    (pod.pod_dir / "model.bin").write_bytes(b"\0" * 5000)
    pod.settings.write_text('ship = ["model.bin"]\n')
    with pytest.raises(pypods.PodBuildError, match=r"model\.bin \(5,000 B\).*PYPODS_RAY_MAX_BYTES") as info:
        rayship.pod_files(pod, limit=4096)
    assert "'shipped'" in str(info.value)
    assert "'ray'" in str(info.value)
    monkeypatch.setenv("PYPODS_RAY_MAX_BYTES", "4096")
    with pytest.raises(pypods.PodBuildError):
        rayship.pod_files(pod)
    monkeypatch.setenv("PYPODS_RAY_MAX_BYTES", "100000")
    assert "model.bin" in rayship.pod_files(pod)


def test_runtime_env_carries_requirements_through_uv_and_env_vars(pod: PodLayout) -> None:
    (pod.pod_dir / "wheels").mkdir()
    pod.requirements.write_text("# pins\n--no-index\n--find-links wheels\nsix==1.16\n")
    env = rayship.runtime_env(pod, PodSettings(env={"MODE": "fast"}))
    assert env == {
        "env_vars": {"MODE": "fast"},
        "uv": {
            "packages": ["six==1.16"],
            "uv_pip_install_options": ["--no-index", "--find-links", str((pod.pod_dir / "wheels").resolve())],
        },
    }
    pod.requirements.write_text("# nothing\n")
    assert rayship.runtime_env(pod, PodSettings()) == {"env_vars": {}}


def test_staging_writes_only_inside_the_pod_and_sweeps_what_dead_actors_left(tmp_path: Path) -> None:
    project = rayactor.stage("staged", {"pod.py": b"x = 1\n", "../../escape.py": b"", "/abs.py": b""})
    try:
        assert os.listdir(os.path.join(project, "pods", "staged")) == ["pod.py"]
        assert not os.path.exists(os.path.join(project, "escape.py"))
    finally:
        import shutil

        shutil.rmtree(project)
    dead = tmp_path / f"{rayactor.STAGE_PREFIX}999999999-abc"
    live = tmp_path / f"{rayactor.STAGE_PREFIX}{os.getpid()}-abc"
    other = tmp_path / "unrelated-999999999"
    for folder in (dead, live, other):
        folder.mkdir()
    rayactor.sweep_stale(str(tmp_path))
    assert not dead.exists()
    assert live.exists()
    assert other.exists()


# -- the actor's replies, run in this process (Ray is only the transport) --------------------------------


@pytest.fixture
def actor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[rayactor.PodActor]:
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    source = (
        "import os\n"
        "def add(a, b):\n    return a + b\n"
        "def boom():\n    raise KeyError('gone')\n"
        "def leave():\n    raise SystemExit(3)\n"
        "class Evil:\n    def __reduce__(self):\n        return (os.system, ('true',))\n"
        "def evil():\n    return Evil()\n"
        "def deep():\n    x = []\n    for _ in range(5000):\n        x = [x]\n    return x\n"
        "def count(n):\n    yield from range(n)\n"
        "import functools\n"
        "def _logged(f):\n    @functools.wraps(f)\n    def w(*a):\n        return f(*a)\n    return w\n"
        "@_logged\ndef wrapped(n):\n    yield from range(n)\n"
        "def where():\n    return os.path.dirname(os.path.abspath(__file__))\n"
    )
    made = rayactor.PodActor("actorpod", {"pod.py": source.encode()})
    project = made.project
    yield made
    made.stop()
    for name in [m for m in sys.modules if m == "pods" or m.startswith("pods.")]:
        del sys.modules[name]
    sys.path.remove(project)


def _call(actor: rayactor.PodActor, name: str, *args: object) -> dict[str, object]:
    return _call_raw(actor, bytes(Encoder().request(7, name, list(args), {})))


def _call_raw(actor: rayactor.PodActor, request: bytes) -> dict[str, object]:
    reply = actor.call(request)
    assert isinstance(reply, bytes)
    return decode(reply)


def test_the_actor_answers_in_bytes_of_our_codec_and_never_raises(actor: rayactor.PodActor) -> None:
    hello = decode(actor.hello())
    assert hello["op"] == "hello"
    assert hello["pid"] == os.getpid()
    assert {f["name"] for f in hello["functions"]} >= {"add", "count", "evil"}  # type: ignore[union-attr]
    assert _call(actor, "add", 2, 3) == {"id": 7, "ok": True, "value": 5}
    error = _call(actor, "boom")["error"]
    assert error["kind"] == "remote"  # type: ignore[index]
    assert error["type"] == "KeyError"  # type: ignore[index]
    assert _call(actor, "leave")["error"]["type"] == "SystemExit"  # type: ignore[index]
    assert _call(actor, "nothing")["error"]["type"] == "AttributeError"  # type: ignore[index]
    assert _call(actor, "evil")["error"]["kind"] == "serialization"  # type: ignore[index]
    assert _call(actor, "deep")["error"]["kind"] == "serialization"  # type: ignore[index]
    assert decode(actor.call(b"\x05\x00\x00\x00"))["ok"] is False  # a malformed request is an answer too
    pickled = Encoder().document({"id": 9, "op": "call", "name": "add", **messages.pack_pickle(((1, 2), {}))})
    assert _call_raw(actor, bytes(pickled))["error"]["type"] == "PermissionError"  # type: ignore[index]
    # A generator is found by what the call returns (as in the local worker); stream() then sends its items.
    assert _call_raw(actor, bytes(Encoder().request(8, "count", [3], {}))) == {"id": 8, "ok": True, "stream": True}
    items = [decode(b) for b in actor.stream(8)]
    assert items == [{"id": 8, "yield": 0}, {"id": 8, "yield": 1}, {"id": 8, "yield": 2}, {"id": 8, "end": True}]
    assert decode(next(actor.stream(8)))["error"]["type"] == "LookupError"  # type: ignore[index]  # taken once


def test_the_actor_speaks_the_core_protocol_and_the_encoding_the_client_chose(actor: rayactor.PodActor) -> None:
    proto = CallProtocol("actorpod")
    encoding = proto.choose_encoding(decode(actor.hello()))
    assert proto.encoding == "fast2"
    assert encoding is not None
    assert proto.outcome("(start)", proto.decode(actor.setup(bytes(encoding)))).value is None
    frame, attachments = proto.encode_call(3, "add", ([0.5, 2.0],), {"b": [0.25]})
    assert attachments == []
    reply = proto.decode(actor.call(bytes(frame)))
    assert {"f", "j", "c"} & set(reply)  # fast1/fast2 fields (here JSON text), not a BSON value
    assert proto.outcome("add", reply).value == [0.5, 2.0, 0.25]
    frame, _ = proto.encode_call(4, "count", (2,), {})
    assert proto.outcome("count", proto.decode(actor.call(bytes(frame)))).kind == Outcome.STREAM
    items = [proto.stream_item("count", proto.decode(data)) for data in actor.stream(4)]
    assert [(item.kind, item.value) for item in items] == [("item", 0), ("item", 1), ("end", None)]
    frame, _ = proto.encode_call(5, "wrapped", (1,), {})  # functools.wraps: still found at run time
    assert proto.outcome("wrapped", proto.decode(actor.call(bytes(frame)))).kind == Outcome.STREAM
    assert [proto.stream_item("wrapped", proto.decode(data)).value for data in actor.stream(5)] == [0, None]


def test_the_actor_closes_the_oldest_stream_that_never_began(
    actor: rayactor.PodActor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rayactor, "MAX_WAITING_STREAMS", 2)
    for call_id in (1, 2, 3):
        assert _call_raw(actor, bytes(Encoder().request(call_id, "count", [2], {})))["stream"] is True
    assert sorted(actor.generators) == [2, 3]


def test_the_actor_removes_its_staged_code(actor: rayactor.PodActor) -> None:
    where = _call(actor, "where")["value"]
    assert isinstance(where, str)
    assert os.path.isfile(os.path.join(where, "pod.py"))
    actor.stop()
    actor.stop()  # idempotent
    assert not os.path.exists(where)


def test_a_data_file_left_behind_is_a_visible_warning_naming_the_ship_setting(
    pod: PodLayout, caplog: pytest.LogCaptureFixture
) -> None:
    """Before the allow-list the pod's data.json shipped; now the pod's open() fails on the cluster only.

    The warning (the default logging level shows it; INFO did not) names the file and the setting.
    """
    _write(pod.pod_dir, {"data.json": "{}"})
    with caplog.at_level("WARNING", logger="pypods"):
        files = rayship.pod_files(pod)
    assert "data.json" not in files
    warned = [record for record in caplog.records if record.levelname == "WARNING"]
    assert warned, caplog.records
    assert "'data.json'" in warned[0].getMessage()
    assert 'ship = ["data.json"]' in warned[0].getMessage()
    fresh = pod.pod_dir.parent / "fresh"
    fresh.mkdir()
    (fresh / "pod.py").write_text("")
    for name in ("requirements.txt", "pod.toml", ".gitignore"):
        (fresh / name).write_text("")
    caplog.clear()
    with caplog.at_level("WARNING", logger="pypods"):
        rayship.pod_files(PodLayout("fresh", pod.root))
    assert not caplog.records  # a pod made by `pypods new` leaves nothing behind: no warning


def test_hostile_globs_in_ship_or_gitignore_take_linear_time(pod: PodLayout) -> None:
    """Both are the pod's to write; as a regex, ``*a*a*a*a*a*a*b`` took 1.2 s on one 60-letter name."""
    stars = "*a" * 500 + "*b"
    _write(pod.pod_dir, {"a" * 200 + ".txt": "x", ".gitignore": stars + "\n"})
    (pod.pod_dir / "pod.toml").write_text(f'ship = ["{stars}", "{"*a" * 8}*b/**"]\n')
    started = time.perf_counter()
    rayship.pod_files(pod)
    assert time.perf_counter() - started < 5
    assert rayship.glob_match("*a*a*b", "xaya.b")
    assert not rayship.glob_match("*a*a*b", "xa/ab")  # a star stays inside one path part
    assert rayship.glob_match("**/x/*.csv", "d/e/x/f.csv")
    assert rayship.glob_match("**/x/*.csv", "x/f.csv")
    assert not rayship.glob_match("[!a]", "/")  # nor does a class (the regex's [^a] matched "/")
