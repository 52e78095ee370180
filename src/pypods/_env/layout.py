"""Where a pod lives on disk (``<root>/pods/<name>/``), its template files, and its ``pod.toml`` settings."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

from .names import check_pod_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.9/3.10 clients
    import tomli as tomllib

PODS_DIR = "pods"
POD_FILE = "pod.py"
REQUIREMENTS = "requirements.txt"
LOCK = "requirements.lock"
SETTINGS = "pod.toml"
VENV = "venv"
STATE = ".pypods"

POD_TEMPLATE = '''\
# Template pod.py file inside the {name} pod.
"""
Write your module's functions in this area.

pypods runs this file in the pod's own environment (venv/, built from requirements.txt) and offers
every public function defined here, or in a module of this folder, to the client; set __all__ to
choose exactly which. Example:

    def foo(x, y):
        return x + y
"""


# Kept from the original pypods template. pypods itself never runs this file as a script.
if __name__ == "__main__":
    from pypods.pods import PodListener

    pl = PodListener()
    msg = pl.read_stdin()
    if msg:
        function_name, args, kwargs = msg["name"], msg["args"], msg["kwargs"]
        try:
            if function_name in globals():
                pl.write_stdout(globals()[function_name](*args, **kwargs))
            else:
                pl.write_stderr(f"Function {{function_name}} does not exist in pod")
        except Exception as e:
            pl.write_stderr(str(e))
'''

REQUIREMENTS_TEMPLATE = """\
# Requirements of the {name} pod, one per line, as for pip: e.g. requests>=2.31
# Options such as --find-links, --index-url and local paths (-e ../mylib, ./wheels/x.whl) work too.
# After a build, requirements.lock pins exactly what was installed; delete it to re-resolve.
"""

SETTINGS_TEMPLATE = """\
# Settings of the {name} pod. Arguments given to PodLoader(...) or pypods.load(...) override these.
# python = "3.11"        # a version found on this machine, or a path to an interpreter
# workers = 1            # worker processes serving this pod
# timeout = 30.0         # seconds a call may take before its worker is replaced
# start = "auto"         # "eager": start workers on load; "lazy": on the first call;
#                        # "auto": lazy when the cached description is valid, else eager
# idle_timeout = 300.0   # stop an idle worker after this many seconds
# codec = "bson"         # "pickle" trades safety (runs code on decode) for any picklable value
# log = "stderr"         # where the pod's output goes: "stderr" or "logging" (the pypods logger)
# backend = "local"      # "ray": run the workers as Ray actors (pip install 'pypods[ray]')
# address = "ray://..."  # the Ray cluster to join (default: $RAY_ADDRESS, else a local Ray)
#
# [env]                  # extra environment variables for the worker
# MY_SETTING = "value"
"""

GITIGNORE = "venv/\n.pypods/\n__pycache__/\n"


@dataclasses.dataclass(frozen=True)
class PodLayout:
    """The paths of one pod; computing them touches no disk."""

    name: str
    root: Path

    @classmethod
    def at(cls, name: str, root: str | os.PathLike[str] | None = None) -> PodLayout:
        """Locate pod *name* under *root*, ``$PYPODS_ROOT`` or the current directory (in that order).

        Raises:
            ValueError: *name* is not a valid pod name (checked before any path is made).
        """
        check_pod_name(name)
        return cls(name, resolve_root(root))

    @property
    def pod_dir(self) -> Path:
        return self.root / PODS_DIR / self.name

    @property
    def pod_py(self) -> Path:
        return self.pod_dir / POD_FILE

    @property
    def requirements(self) -> Path:
        return self.pod_dir / REQUIREMENTS

    @property
    def lock(self) -> Path:
        return self.pod_dir / LOCK

    @property
    def settings(self) -> Path:
        return self.pod_dir / SETTINGS

    @property
    def venv(self) -> Path:
        return self.pod_dir / VENV

    @property
    def state(self) -> Path:
        """Private files of pypods for this pod (build lock, cached description); git-ignored."""
        return self.pod_dir / STATE

    @property
    def venv_python(self) -> Path:
        if os.name == "nt":  # pragma: no cover
            return self.venv / "Scripts" / "python.exe"
        return self.venv / "bin" / "python"

    def exists(self) -> bool:
        return self.pod_py.is_file()

    def create(self) -> bool:
        """Write the template files that are missing; return True if ``pod.py`` was new."""
        self.pod_dir.mkdir(parents=True, exist_ok=True)
        created = False
        for path, text in (
            (self.pod_py, POD_TEMPLATE),
            (self.requirements, REQUIREMENTS_TEMPLATE),
            (self.settings, SETTINGS_TEMPLATE),
            (self.pod_dir / ".gitignore", GITIGNORE),
        ):
            try:
                with open(path, "x", encoding="utf-8") as handle:
                    handle.write(text.format(name=self.name))
                created = created or path == self.pod_py
            except FileExistsError:
                pass
        return created


def resolve_root(root: str | os.PathLike[str] | None) -> Path:
    """The project root holding ``pods/``: *root*, else ``$PYPODS_ROOT``, else the current directory."""
    chosen = root if root is not None else os.environ.get("PYPODS_ROOT") or os.getcwd()
    return Path(chosen).expanduser().resolve()


def list_pods(root: Path) -> list[str]:
    """Names of the pods under *root* (folders of ``pods/`` that hold a ``pod.py``)."""
    pods = root / PODS_DIR
    if not pods.is_dir():
        return []
    return sorted(p.name for p in pods.iterdir() if p.name.isidentifier() and (p / POD_FILE).is_file())


@dataclasses.dataclass(frozen=True)
class PodSettings:
    """A pod's settings: defaults, then ``pod.toml``, then the caller's arguments."""

    python: str | None = None
    workers: int = 1
    timeout: float | None = None
    start: str = "auto"
    idle_timeout: float | None = None
    codec: str = "bson"
    log: str = "stderr"
    backend: str = "local"
    address: str | None = None
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    start_timeout: float | None = None  # seconds a worker may take to start (None: the default, 60 s)

    @classmethod
    def load(cls, layout: PodLayout, overrides: dict[str, Any]) -> PodSettings:
        """Read ``pod.toml`` (if any) and apply *overrides* (None means "not given").

        Raises:
            ValueError: ``pod.toml`` is not valid TOML, names an unknown setting, or a value has
                the wrong type; the message names the file and the key.
        """
        values: dict[str, Any] = {}
        if layout.settings.is_file():
            try:
                values = tomllib.loads(layout.settings.read_text(encoding="utf-8"))
            except tomllib.TOMLDecodeError as exc:
                raise ValueError(f"{layout.settings}: not valid TOML: {exc}") from exc
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls.from_mapping(values, str(layout.settings))

    @classmethod
    def from_mapping(cls, values: dict[str, Any], source: str) -> PodSettings:
        known = {field.name: field for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"{source}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(known)}")
        checked: dict[str, Any] = {}
        for key, value in values.items():
            checked[key] = _check(key, value, source)
        return cls(**checked)


def _check(key: str, value: Any, source: str) -> Any:
    def bad(expected: str) -> ValueError:
        return ValueError(f"{source}: setting {key!r} must be {expected}, not {value!r}")

    if key in ("python", "address"):
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if key == "workers":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise bad("a whole number of at least 1")
        return value
    if key in ("timeout", "idle_timeout", "start_timeout"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise bad("a positive number of seconds")
        return float(value)
    choices = {
        "start": ("auto", "eager", "lazy"),
        "codec": ("bson", "pickle"),
        "log": ("stderr", "logging"),
        "backend": ("local", "ray"),
    }
    if key in choices:
        if value not in choices[key]:
            raise bad("one of " + ", ".join(repr(c) for c in choices[key]))
        return value
    if key == "env":
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise bad("a table of strings")
        return {k: str(v) for k, v in value.items()}
    raise bad("known")  # pragma: no cover - guarded by from_mapping
