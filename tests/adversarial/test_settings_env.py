"""Settings from the client's environment: a typo is refused by name, never a silent change of behaviour."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

import pypods
from pypods._client.core import CallProtocol
from pypods._env import settings

if TYPE_CHECKING:
    from pathlib import Path

HELLO = {"encodings": ["bson", "fast1", "fast2"]}


@pytest.mark.parametrize(
    ("value", "chosen"),
    [("FAST1", "fast1"), ("fast1 ", "fast1"), (" Bson", "bson"), ("", "fast2"), (" Fast2", "fast2")],
)
def test_documented_encodings_are_accepted_in_any_case(
    monkeypatch: pytest.MonkeyPatch, value: str, chosen: str
) -> None:
    monkeypatch.setenv("PYPODS_ENCODING", value)
    assert settings.encoding_from_environ() == chosen
    message = CallProtocol("p").choose_encoding(HELLO)
    assert (message is not None) == (chosen != "bson")  # FAST1 used to select BSON silently


@pytest.mark.parametrize("value", ["fast", "json", "bsno", "pickle"])
def test_an_unknown_encoding_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str, make_pod, root: Path
) -> None:
    make_pod("enc", "def f():\n    return 1\n")
    monkeypatch.setenv("PYPODS_ENCODING", value)
    with pytest.raises(pypods.PodConfigError, match="PYPODS_ENCODING") as caught:
        pypods.load("enc", root=root, progress=False)
    assert repr(value) in str(caught.value)
    with pytest.raises(pypods.PodConfigError, match="PYPODS_ENCODING"):
        CallProtocol("p").choose_encoding(HELLO)


CREDENTIALS = {
    ".git-credentials": "https://user:token@github.com\n",
    ".npmrc": "//registry.npmjs.org/:_authToken=secret\n",
    ".pypirc": "[pypi]\npassword = secret\n",
    ".pgpass": "db:5432:*:user:secret\n",
    ".netrc": "machine x login y password secret\n",
    "server.pem": "-----BEGIN PRIVATE KEY-----\n",
    "id_rsa": "-----BEGIN OPENSSH PRIVATE KEY-----\n",
    "id_ed25519": "-----BEGIN OPENSSH PRIVATE KEY-----\n",
    "keys/deploy.key": "secret\n",
    ".ssh/id_ecdsa": "secret\n",
    "notes.txt": "not a module, not named\n",
}


def test_ray_ships_only_modules_and_named_files_never_credentials(tmp_path: Path) -> None:
    from pypods._client import rayship
    from pypods._env.layout import PodLayout

    layout = PodLayout("shipped", tmp_path / "project")
    layout.pod_dir.mkdir(parents=True)
    layout.pod_py.write_text("def f():\n    return 1\n")
    for relative, text in {**CREDENTIALS, "helper.py": "", "data/table.csv": "a,b\n"}.items():
        path = layout.pod_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert sorted(rayship.pod_files(layout)) == ["helper.py", "pod.py"]  # an allow-list: modules only
    # Named data files go too; credentials never, even when a glob names them.
    layout.settings.write_text('ship = ["data/"]\n')
    assert sorted(rayship.pod_files(layout)) == ["data/table.csv", "helper.py", "pod.py"]
    layout.settings.write_text('ship = ["data/*.csv", "*", "**"]\n')
    assert sorted(rayship.pod_files(layout)) == ["data/table.csv", "helper.py", "notes.txt", "pod.py", "pod.toml"]


@pytest.mark.parametrize("ship", ['"data/*.csv"', '["/etc/passwd"]', '["../../secret"]', "[1]", '[""]'])
def test_ship_globs_stay_inside_the_pod(root: Path, ship: str) -> None:
    from pypods._env.layout import PodLayout
    from pypods._env.settings import PodSettings

    pod = root / "pods" / "p"
    pod.mkdir(parents=True)
    (pod / "pod.py").write_text("")
    (pod / "pod.toml").write_text(f"ship = {ship}\n")
    with pytest.raises(pypods.PodConfigError, match="'ship'"):
        PodSettings.load(PodLayout.at("p", root), {})
