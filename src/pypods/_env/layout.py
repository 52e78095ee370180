"""Where a pod lives on disk (``<root>/pods/<name>/``): finding the root, the template files, creating a pod.

The root is found the way git finds ``.git``: the nearest ``pods/`` folder at or above the current
directory, else one next to the ``__main__`` script, unless ``root=`` or ``$PYPODS_ROOT`` says otherwise.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

from .._errors import PodError, PodNotFoundError
from .names import check_pod_name
from .settings import PodSettings, toml_string

__all__ = ["PodLayout", "PodSettings", "find_root", "ignored_folders", "list_pods", "open_layout", "resolve_root"]

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
{python_line}
# workers = 1            # worker processes serving this pod
# timeout = 30.0         # seconds a call may take before its worker is replaced
# start = "auto"         # "eager": start workers on load; "lazy": on the first call;
#                        # "auto": lazy when the cached description is valid, else eager
# idle_timeout = 300.0   # stop an idle worker after this many seconds
# start_timeout = 60.0   # seconds a worker may take to start
# (codec = "pickle" can only be chosen in the client's code: pypods.load(name, codec="pickle"))
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

    def create(self, python: str | None = None) -> bool:
        """Write the template files that are missing; return True if ``pod.py`` was new.

        ``pod.toml`` pins *python* (default: this interpreter's ``major.minor``), so every client and
        the ``pypods`` command build the pod with the same Python.
        """
        pinned = python or "{}.{}".format(*sys.version_info[:2])
        python_line = f"python = {toml_string(pinned)}  # pinned when the pod was created; a version or a path"
        self.pod_dir.mkdir(parents=True, exist_ok=True)
        created = False
        for path, text in (
            (self.pod_py, POD_TEMPLATE.format(name=self.name)),
            (self.requirements, REQUIREMENTS_TEMPLATE.format(name=self.name)),
            (self.settings, SETTINGS_TEMPLATE.format(name=self.name, python_line="{python_line}")),
            (self.pod_dir / ".gitignore", GITIGNORE),
        ):
            try:
                with open(path, "x", encoding="utf-8") as handle:
                    handle.write(text.replace("{python_line}", python_line) if path == self.settings else text)
                created = created or path == self.pod_py
            except FileExistsError:
                pass
        return created


def check_platform() -> None:
    """Refuse Windows clearly: workers rely on POSIX fds, process groups and ``fork``-safe pipes.

    Raises:
        PodError: on Windows (use WSL).
    """
    if os.name == "nt":  # pragma: no cover - not run on Windows in CI
        raise PodError("pypods runs on Linux and macOS; on Windows, use it inside WSL (Windows Subsystem for Linux)")


def find_root(start: Path) -> Path | None:
    """The nearest folder at or above *start* that holds a ``pods/`` folder, as git finds ``.git``.

    Above *start*, a ``pods/`` folder counts only if it holds a pod (a folder with ``pod.py``), so an
    unrelated ``~/pods/`` (Kubernetes manifests, podcasts) does not capture every project below it.
    """
    if (start / PODS_DIR).is_dir():
        return start
    for folder in start.parents:
        if _holds_a_pod(folder / PODS_DIR):
            return folder
    return None


def _holds_a_pod(pods: Path) -> bool:
    try:
        return any((child / POD_FILE).is_file() for child in pods.iterdir())
    except OSError:
        return False


def _script_root() -> Path | None:
    """The folder of the ``__main__`` script if it holds ``pods/`` (``python examples/client.py``)."""
    main = sys.modules.get("__main__")
    script = getattr(main, "__file__", None)
    if not isinstance(script, str) or getattr(main, "__spec__", None) is not None:
        return None  # interactive, or ``python -m module``: no script of the user's
    folder = Path(script).resolve().parent
    return folder if (folder / PODS_DIR).is_dir() else None


def resolve_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The project root holding ``pods/``.

    In order: *root*; ``$PYPODS_ROOT``; the nearest folder at or above the current directory that
    holds ``pods/``; the ``__main__`` script's folder if it holds ``pods/``; else the current directory.
    """
    chosen = root if root is not None else os.environ.get("PYPODS_ROOT")
    if chosen:
        return Path(chosen).expanduser().resolve()
    here = Path.cwd().resolve()
    return find_root(here) or _script_root() or here


def list_pods(root: Path) -> list[str]:
    """Names of the pods under *root* (folders of ``pods/`` with a valid pod name that hold a ``pod.py``)."""
    pods = root / PODS_DIR
    if not pods.is_dir():
        return []
    return sorted(p.name for p in pods.iterdir() if _valid(p.name) and (p / POD_FILE).is_file())


def _valid(name: str) -> bool:
    try:
        check_pod_name(name)
    except ValueError:
        return False
    return True


def ignored_folders(root: Path) -> dict[str, str]:
    """Folders of ``pods/`` that are not pods, each with why (``pods/my-pod/``: not an identifier)."""
    pods = root / PODS_DIR
    if not pods.is_dir():
        return {}
    ignored: dict[str, str] = {}
    for folder in sorted(pods.iterdir()):
        if not folder.is_dir() or folder.name.startswith((".", "_")):
            continue  # __pycache__, .git and the like are expected
        if not _valid(folder.name):
            fixed = "".join(c if c.isalnum() or c == "_" else "_" for c in folder.name)
            ignored[folder.name] = f"not a valid pod name; rename it to a Python identifier such as {fixed!r}"
        elif not (folder / POD_FILE).is_file():
            ignored[folder.name] = f"no {POD_FILE}"
    return ignored


def open_layout(name: str, root: str | os.PathLike[str] | None, create: bool, python: str | None = None) -> PodLayout:
    """Locate pod *name*; create it from the template if it is missing and *create* (saying so on stderr).

    Raises:
        ValueError: *name* is not a valid pod name.
        PodNotFoundError: the pod does not exist and *create* is False (also a ``FileNotFoundError``).
    """
    check_platform()
    layout = PodLayout.at(name, root)
    if layout.exists():
        return layout
    existing = ", ".join(list_pods(layout.root)) or "none yet"
    if not create:
        raise PodNotFoundError(
            f"no pod {name!r} in {layout.root / PODS_DIR} (pods there: {existing}); "
            f"create it with `pypods new {name}` or load it with create=True"
        )
    if layout.create(python):
        sys.stderr.write(f"pypods: created new pod {name!r} in {layout.pod_dir} (existing pods: {existing})\n")
        sys.stderr.flush()
    return layout
