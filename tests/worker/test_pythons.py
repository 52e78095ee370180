"""The worker alone, under each installed Python 3.8-3.13 (``python -I``, no venv, no pypods installed)."""

from __future__ import annotations

import datetime
import decimal
import textwrap
import uuid
from typing import TYPE_CHECKING

import pytest

from conftest import pythons
from pypods._client.connection import ProcessConnection
from pypods._client.process import WorkerProcess

if TYPE_CHECKING:
    from pathlib import Path

POD = '''
import datetime, os, sys

def echo(value):
    """Give it back."""
    return value

def version():
    return list(sys.version_info[:2])

def noisy():
    print("printed")
    os.write(1, b"fd one\\n")
    return "clean"

def count(n):
    for i in range(n):
        yield i

def fails():
    raise KeyError("k")
'''

VALUES = [
    None,
    (1, [2, {3}], frozenset({"a"})),
    {1: "int key", (2, 3): b"bytes"},
    2**100,
    decimal.Decimal("3.14"),
    datetime.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=datetime.timezone(datetime.timedelta(hours=2))),
    uuid.UUID(int=5),
    range(3),
    1 + 2j,
    bytearray(b"x"),
]


@pytest.fixture(params=sorted(pythons()), ids=lambda v: f"py{v}")
def conn(request: pytest.FixtureRequest, tmp_path: Path):
    python = pythons()[request.param]
    pod_dir = tmp_path / "pods" / "w"
    pod_dir.mkdir(parents=True)
    (pod_dir / "pod.py").write_text(textwrap.dedent(POD))
    connection = ProcessConnection(WorkerProcess(python, "w", str(pod_dir), str(tmp_path)))
    yield request.param, connection
    connection.close()


def test_worker_serves_on_each_python(conn) -> None:
    version, connection = conn
    assert connection.call("version", (), {}, 30) == [int(part) for part in version.split(".")]
    for value in VALUES:
        assert connection.call("echo", (value,), {}, 30) == value
        assert type(connection.call("echo", (value,), {}, 30)) is type(value)
    assert connection.call("noisy", (), {}, 30) == "clean"
    assert list(connection.call("count", (5,), {}, 30)) == [0, 1, 2, 3, 4]
    with pytest.raises(KeyError):
        connection.call("fails", (), {}, 30)
    names = {info["name"]: info for info in connection.description}
    assert names["echo"]["doc"] == "Give it back."
    assert names["count"]["generator"] is True


@pytest.mark.parametrize("version", sorted(pythons()), ids=lambda v: f"py{v}")
def test_template_forks_workers_on_each_python(version: str, tmp_path: Path) -> None:
    from pypods._client.templates import Template

    pod_dir = tmp_path / "pods" / "w"
    pod_dir.mkdir(parents=True)
    (pod_dir / "pod.py").write_text(
        textwrap.dedent(POD) + "\nimport os\nTEMPLATE = os.getpid()\n\ndef who():\n    return [os.getpid(), TEMPLATE]\n"
    )
    template = Template(pythons()[version], "w", str(pod_dir), str(tmp_path), {}, "stderr", 30)
    try:
        connection = ProcessConnection(template.fork("bson", True, "stderr", None))
        try:
            pid, imported = connection.call("who", (), {}, 30)
            assert imported == template.pid != pid
            assert connection.call("version", (), {}, 30) == [int(part) for part in version.split(".")]
            assert list(connection.call("count", (3,), {}, 30)) == [0, 1, 2]
        finally:
            connection.close()
    finally:
        template.close()
