"""Where a pod lives on disk (``<root>/pods/<name>/``): finding the root, the template files, creating a pod.

The root is found the way git finds ``.git``: the nearest ``pods/`` folder at or above the current
directory, else one next to the ``__main__`` script, unless ``root=`` or ``$PYPODS_ROOT`` says otherwise.
As git does since CVE-2022-24765, the search trusts only folders that are the user's own (see
``trusted``): it never adopts a ``pods/`` that another user could have planted or can swap.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import sys
from pathlib import Path

from .._errors import PodConfigError, PodError, PodNotFoundError
from .names import check_pod_name
from .settings import PodSettings, toml_string

__all__ = [
    "PodLayout",
    "PodSettings",
    "check_pods",
    "chosen_root",
    "distrust",
    "find_root",
    "ignored_folders",
    "list_pods",
    "open_layout",
    "resolve_root",
    "trusted",
]

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
# template = false       # true: import pod.py once, fork each worker from it (fast starts)
# memory = "2GB"         # the most one worker may use; past it the worker is killed (Linux)
# (codec = "pickle" can only be chosen in the client's code: pypods.load(name, codec="pickle"))
# log = "stderr"         # where the pod's output goes: "stderr" or "logging" (the pypods logger)
# backend = "local"      # "ray": run the workers as Ray actors (pip install 'pypods[ray]')
# address = "ray://..."  # the Ray cluster to join (default: $RAY_ADDRESS, else a local Ray)
# ship = ["data/*.csv"]  # backend "ray": data files sent with the pod's Python modules (only those go)
#
# [env]                  # extra environment variables for the worker
# MY_SETTING = "value"
"""

GITIGNORE = "venv/\n.pypods/\n__pycache__/\n"


@dataclasses.dataclass(frozen=True)
class PodLayout:
    """The paths of one pod; computing them touches no disk.

    *found*: the root was found by the search (not ``root=`` / ``$PYPODS_ROOT``), so its folders
    were checked to be the user's own, and are checked again before each worker starts (``recheck``).
    """

    name: str
    root: Path
    found: bool = dataclasses.field(default=False, compare=False)

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

    def recheck(self) -> None:
        """For a found root: check again that the root, ``pods/`` and the pod's folder are the user's own.

        Called before each worker start: the check at load does not bind the path, so a folder
        above the root that others can write to lets them swap the whole project for theirs later
        (a worker restarted after a crash or an idle stop would then run their ``pod.py``).

        Raises:
            PodError: one of them is no longer the user's own (see ``distrust``).
        """
        if self.found:
            why = distrust(self.root)
            if why is not None:
                raise _refuse(self.root, why)
            check_pods(self.root, self.name)

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


def _owners() -> set[int]:
    """The uids whose folders count as the user's own: the effective uid, and for root also ``$SUDO_UID``.

    As git: ``sudo make install`` in a user's checkout is the user's own project, not another user's.
    """
    uid = os.geteuid()
    owners = {uid}
    sudo = os.environ.get("SUDO_UID", "")
    if uid == 0 and sudo.isdigit():
        owners.add(int(sudo))
    return owners


def _private_group(gid: int, owner: int) -> bool:
    """Whether *gid* is the private group of *owner* (the folder's owner, one of ``_owners``).

    A user-private group, as Debian makes them: *owner*'s primary group, named after *owner*, and
    no other user a member of it (``usermod -aG alice bob`` makes alice's group-writable folders
    bob's to write too). The owner's, not the process's: under ``sudo`` the user's umask-002
    folders stay the user's own.
    """
    try:
        import grp
        import pwd

        user = pwd.getpwuid(owner)
        group = grp.getgrgid(gid)
        return gid == user.pw_gid and group.gr_name == user.pw_name and set(group.gr_mem) <= {user.pw_name}
    except (ImportError, KeyError):  # pragma: no cover - no such group or user entry
        return False


def distrust(folder: Path) -> str | None:
    """Why *folder* is not the user's own (``None`` if it is): its owner, or who else may write to it.

    A folder is trusted when it is owned by the user (see ``_owners``) and nobody else can write to it:
    not writable by others, and writable by its group only if that is its owner's private group. A
    folder others can write to is still trusted when it is the user's own and sticky: there the others
    may add entries but not rename or delete the user's. Symlinks are followed (the folder is what counts).
    """
    try:
        info = folder.stat()
    except OSError as exc:
        return f"cannot be checked ({exc.strerror})"
    if info.st_uid not in _owners():
        return f"is owned by {_user(info.st_uid)}, not by you ({_user(os.geteuid())})"
    others = info.st_mode & stat.S_IWOTH or (
        info.st_mode & stat.S_IWGRP and not _private_group(info.st_gid, info.st_uid)
    )
    if others and not info.st_mode & stat.S_ISVTX:
        return f"is writable by other users and not sticky (owner: {_user(info.st_uid)})"
    return None


def trusted(folder: Path) -> bool:
    """Whether *folder* passes the ownership check of ``distrust``."""
    return distrust(folder) is None


def _user(uid: int) -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def _refuse(folder: Path, why: str, root: Path | None = None) -> PodError:
    root = folder if root is None else root
    return PodError(
        f"pypods will not use {folder}: it {why}, so another user may have put it there or may swap it "
        "(pypods trusts only folders of your own when it looks for pods/, as git does since CVE-2022-24765). "
        f"If you trust it, choose the project root explicitly: root={str(root)!r} or PYPODS_ROOT={root}; "
        "otherwise run from a folder of your own."
    )


def check_pods(folder: Path, name: str | None = None) -> None:
    """Refuse a discovered root whose ``pods/`` (or pod folder *name*) is not the user's own.

    Checked for roots pypods found by itself, never for ``root=`` or ``$PYPODS_ROOT``.

    Raises:
        PodError: the folder fails ``distrust``; the message names it, its owner and ``root=``.
    """
    for path in (folder / PODS_DIR, *((folder / PODS_DIR / name,) if name else ())):
        if path.is_dir():
            why = distrust(path)
            if why:
                raise _refuse(path, why, folder)


def find_root(start: Path) -> Path | None:
    """The nearest folder at or above *start* that holds a ``pods/`` folder, as git finds ``.git``.

    Above *start*, a ``pods/`` folder counts only if it holds a pod (a folder with ``pod.py``), so an
    unrelated ``~/pods/`` (Kubernetes manifests, podcasts) does not capture every project below it.
    The walk goes up only through trusted folders (``distrust``) and stops at the first other one.

    Raises:
        PodError: the ``pods/`` found is in, or is, a folder that is not the user's own (the folder
            where the walk stopped holds one, or the ``pods/`` of a trusted folder is another user's).
    """
    for folder in (start, *start.parents):
        pods = folder / PODS_DIR
        found = pods.is_dir() if folder == start else _holds_a_pod(pods)
        why = distrust(folder)
        if why is not None:
            if found:
                raise _refuse(folder, why)
            return None  # the walk stops here: nothing above an untrusted folder is the user's
        if found:
            check_pods(folder)
            return folder
    return None


MAX_LOOKED_AT = 1000  # entries of a pods/ above the current folder looked at for a pod


def _holds_a_pod(pods: Path) -> bool:
    """Whether *pods* holds a pod, among its first ``MAX_LOOKED_AT`` entries.

    Bounded: this runs on every load from below it, also for a ``/tmp/pods`` any user can fill
    with a million folders; a pod folder of one's own is not that far down its ``pods/``.
    """
    try:
        with os.scandir(pods) as listing:
            for index, entry in enumerate(listing):
                if index >= MAX_LOOKED_AT:
                    return False
                if entry.is_dir() and os.path.isfile(os.path.join(entry.path, POD_FILE)):
                    return True
    except OSError:
        pass
    return False


def _script_root() -> Path | None:
    """The folder of the ``__main__`` script if it holds ``pods/`` (``python examples/client.py``) and is trusted."""
    folder = _script_folder()
    if folder is None or not (folder / PODS_DIR).is_dir():
        return None
    why = distrust(folder)
    if why is not None:
        raise _refuse(folder, why)
    check_pods(folder)
    return folder


def _script_folder() -> Path | None:
    main = sys.modules.get("__main__")
    script = getattr(main, "__file__", None)
    if not isinstance(script, str) or getattr(main, "__spec__", None) is not None:
        return None  # interactive, or ``python -m module``: no script of the user's
    return Path(script).resolve().parent


def chosen_root() -> str | None:
    """``$PYPODS_ROOT`` if set and not empty."""
    return os.environ.get("PYPODS_ROOT") or None


def resolve_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The project root holding ``pods/``.

    In order: *root*; ``$PYPODS_ROOT``; the nearest folder at or above the current directory that
    holds ``pods/``; the ``__main__`` script's folder if it holds ``pods/``; else the current directory
    (or, if that is not the user's own, the script's folder). A chosen root (the first two) must
    exist; a found one must be the user's own (``find_root``).

    Raises:
        PodConfigError: the chosen root is not an existing folder (nothing is created for a typo).
        PodError: the root found is not the user's own (see ``find_root``), or no ``pods/`` was found
            and the current directory, where pods would be created, is not the user's own.
    """
    chosen = root if root is not None else chosen_root()
    if chosen:
        path = Path(chosen).expanduser().resolve()
        if not path.is_dir():
            where = "root=" if root is not None else "$PYPODS_ROOT"
            what = "is not a folder" if path.exists() else "does not exist"
            raise PodConfigError(
                f"{where} {os.fspath(chosen)!r}: the project folder {path} {what}; "
                "give the folder that holds (or is to hold) pods/, after creating it"
            )
        return path
    here = Path.cwd().resolve()
    found = find_root(here) or _script_root()
    if found is not None:
        return found
    why = distrust(here)
    if why is None:
        return here
    script = _script_folder()
    if script is not None and trusted(script):
        return script  # new pods go next to the user's script, not into a folder others control
    raise _refuse(here, why)


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
    if root is None and chosen_root() is None:
        layout = dataclasses.replace(layout, found=True)
        check_pods(layout.root, name)  # a found root: its pods/ and this pod's folder must be the user's own
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
