"""Settings from the client's environment: a typo is refused by name, never a silent change of behaviour."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

import pypods
from pypods._client.core import CallProtocol
from pypods._env.settings import encoding_from_environ

if TYPE_CHECKING:
    from pathlib import Path

HELLO = {"encodings": ["bson", "fast1"]}


@pytest.mark.parametrize(
    ("value", "chosen"), [("FAST1", "fast1"), ("fast1 ", "fast1"), (" Bson", "bson"), ("", "fast1")]
)
def test_documented_encodings_are_accepted_in_any_case(
    monkeypatch: pytest.MonkeyPatch, value: str, chosen: str
) -> None:
    monkeypatch.setenv("PYPODS_ENCODING", value)
    assert encoding_from_environ() == chosen
    message = CallProtocol("p").choose_encoding(HELLO)
    assert (message is not None) == (chosen == "fast1")  # FAST1 used to select BSON silently


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
