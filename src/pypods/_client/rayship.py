"""What a Ray pod sends to the cluster: its Python modules and the data files it names, and its requirements.

A pod folder may hold things that must not leave the machine: ``.env`` files, credentials
(``.git-credentials``, ``.npmrc``, ``.pgpass``, ``*.pem``, ``id_*`` keys ...), a ``.git/`` history,
the local ``venv/``, pypods' own ``.pypods/`` state, symlinks to files elsewhere. So what ships is
an allow-list: the pod's Python modules (``*.py``) and the files matching one of the globs of
``ship = [...]`` in its ``pod.toml``; never the ``NEVER_DIRS``/``NEVER_FILES`` (even if named), and
never what the pod's ``.gitignore`` names. ``pod_files`` walks the folder without following
symlinked folders, keeps only regular files (a symlink only when its target is a regular file
inside the pod), and stops with ``PodBuildError`` before reading more than ``max_bytes`` in total.

A ``ship`` glob with a ``/`` is matched against the path from the pod folder (``data/*.csv``,
``models/**``, ``data/`` for all of ``data/``), one without against the file's name at any depth
(``*.json``); ``*``, ``?`` and ``[...]`` stay within one path part, ``**`` crosses parts.

The ``.gitignore`` support is a documented subset of git's rules, read from the pod folder's own
``.gitignore`` only (not nested ones, not the project's): blank lines and ``#`` comments are
skipped; ``*``, ``?`` and ``[...]`` match within one path part and ``**`` across parts, as in git;
a trailing ``/`` matches folders only; a pattern with a ``/`` elsewhere is anchored at the pod
folder, one without matches a name at any depth; ``!pattern`` re-includes, the last matching line
wins. A file inside an ignored folder is ignored (the folder is not entered), as in git.
"""

from __future__ import annotations

import fnmatch
import functools
import logging
import os
import re
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from .._env.builders import requirement_lines
from .._env.settings import PodSettings, toml_string
from .._errors import PodBuildError

if TYPE_CHECKING:
    from .._env.layout import PodLayout

log = logging.getLogger("pypods")
# Never shipped, whatever .gitignore or ship say: secrets, version control, environments, pypods state, caches.
NEVER_DIRS = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        "venv",
        ".venv",
        ".pypods",
        "__pycache__",
        ".mypy_cache",
        ".ssh",
        ".gnupg",
        ".aws",
        ".docker",
    }
)
NEVER_FILES = (
    ".env", ".env.*", "*.pyc", ".netrc", "_netrc", ".pypirc", ".git-credentials", ".npmrc", ".yarnrc", ".pgpass",
    ".my.cnf", "*.pem", "*.key", "*.p12", "*.pfx", "id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*",
    "credentials", "credentials.json", "*.kdbx",
)  # fmt: skip
MODULES = ("*.py",)  # shipped without being named: what a pod imports
POD_FILES = frozenset({"requirements.txt", "requirements.lock", "pod.toml", ".gitignore"})  # read on the client
MAX_BYTES = 32 * 1024 * 1024  # default bound on the code a pod ships (PYPODS_RAY_MAX_BYTES overrides)
MAX_FILES = 10_000


class Rule(NamedTuple):
    """One ``.gitignore`` line: the glob, whether it re-includes, matches folders only, is anchored."""

    pattern: str
    negate: bool
    dir_only: bool
    anchored: bool

    def matches(self, path: str) -> bool:
        return glob_match(self.pattern, path)


@functools.lru_cache(maxsize=256)
def _tokens(pattern: str) -> tuple[tuple[str, Any], ...]:
    """Git's glob as tokens: ``*``/``?``/``[...]`` stay inside one path part, ``**`` crosses parts."""
    out: list[tuple[str, Any]] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append(("**/", None))
            i += 3
        elif pattern.startswith("**", i):
            out.append(("**", None))
            i += 2
        elif pattern[i] == "*":
            if not out or out[-1][0] != "*":  # a run of stars is one star
                out.append(("*", None))
            i += 1
        elif pattern[i] == "?":
            out.append(("?", None))
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 2 :]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1 : end]
            out.append(
                ("[", re.compile("[" + ("^" + body[1:] if body[:1] in "!^" else body).replace("\\", "\\\\") + "]"))
            )
            i = end + 1
        else:
            out.append(("=", pattern[i]))
            i += 1
    return tuple(out)


def glob_match(pattern: str, path: str) -> bool:
    """Whether *path* matches the whole of git's glob *pattern* (see ``_tokens``).

    Not a backtracking regex: ``ship`` and ``.gitignore`` are the pod's to write, and a regex of
    ``*a*a*a*a*a*a*b`` takes seconds on one 60-letter name (minutes at eight stars). This runs the
    pattern as a set of positions (bits of an int) in ``O(len(pattern) * len(path))``.
    """
    n = len(path)
    full = (1 << (n + 1)) - 1
    not_slash = sum(1 << i for i, char in enumerate(path) if char != "/")
    after_slash = sum(1 << (i + 1) for i, char in enumerate(path) if char == "/")
    at: dict[str, int] = {}
    states = 1  # bit i: the tokens so far match path[:i]
    for kind, arg in _tokens(pattern):
        if kind == "=":
            mask = at.get(arg)
            if mask is None:
                mask = at[arg] = sum(1 << i for i, char in enumerate(path) if char == arg)
            states = (states & mask) << 1
        elif kind == "?":
            states = (states & not_slash) << 1
        elif kind == "[":
            states = (states & not_slash & sum(1 << i for i, char in enumerate(path) if arg.fullmatch(char))) << 1
        elif kind == "*":  # any run of characters but "/": each bit spreads up to the end of its run of them
            # Adding a bit to a run of 1s carries through the run and sets the bit past it; the XOR keeps
            # the bits that changed: from the bit up to just past the run (where a "/" or the end is).
            states |= ((states & not_slash) + not_slash) ^ not_slash
        elif states:  # "**" anything from the first match on; "**/" nothing, or anything ending in "/"
            lowest = states & -states
            states = full & ~(lowest - 1) if kind == "**" else states | (after_slash & ~((lowest << 1) - 1))
        states &= full
        if not states:
            return False
    return bool(states >> n & 1)


def parse_gitignore(text: str) -> list[Rule]:
    """The rules of a ``.gitignore`` (the subset described in the module docstring)."""
    rules = []
    for raw in text.splitlines():
        line = raw.rstrip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        if negate:
            line = line[1:]
        dir_only = line.endswith("/")
        line = line.strip("/") if dir_only else line
        anchored = "/" in line
        line = line.lstrip("/")
        if line:
            rules.append(Rule(line, negate, dir_only, anchored))
    return rules


def ignored(rules: list[Rule], relative: str, is_dir: bool) -> bool:
    """Whether *relative* (a ``/``-separated path inside the pod) is ignored; the last matching rule wins."""
    name = relative.rsplit("/", 1)[-1]
    verdict = False
    for rule in rules:
        if rule.dir_only and not is_dir:
            continue
        if rule.matches(relative if rule.anchored else name):
            verdict = not rule.negate
    return verdict


def max_bytes() -> int:
    """The shipping bound: ``$PYPODS_RAY_MAX_BYTES`` if set (bytes), else ``MAX_BYTES``."""
    text = os.environ.get("PYPODS_RAY_MAX_BYTES", "")
    try:
        return int(text) if text else MAX_BYTES
    except ValueError:
        raise ValueError(f"PYPODS_RAY_MAX_BYTES must be a whole number of bytes, not {text!r}") from None


def pod_files(layout: PodLayout, limit: int | None = None) -> dict[str, bytes]:
    """The pod's code files, by ``/``-separated path relative to its folder (what travels to a Ray actor).

    Raises:
        PodBuildError: the files together exceed *limit* bytes (default ``max_bytes()``) or
            ``MAX_FILES`` files; the message names the biggest ones and how to leave them out.
    """
    return {relative: _read(path, size) for relative, path, size in select_files(layout, limit)}


def shipped(patterns: tuple[str, ...] | list[str], relative: str) -> bool:
    """Whether *relative* is a Python module or matches a ``ship`` glob (the module docstring's rules)."""
    name = relative.rsplit("/", 1)[-1]
    if any(fnmatch.fnmatchcase(name, p) for p in MODULES):
        return True
    for pattern in patterns:
        glob = pattern.strip("/") + ("/**" if pattern.endswith("/") else "")  # "data/": everything in data/
        if glob_match(glob, relative if "/" in glob else name):
            return True
    return False


def select_files(
    layout: PodLayout, limit: int | None = None, ship: tuple[str, ...] | None = None
) -> list[tuple[str, Path, int]]:
    """What ``pod_files`` would ship, as ``(relative path, file to read, size)``, without reading it.

    *ship* is the pod's list of data-file globs (default: ``ship`` in its ``pod.toml``).

    Raises:
        PodBuildError: as ``pod_files``.
        PodConfigError: ``pod.toml`` is invalid (when *ship* is not given).
    """
    limit = max_bytes() if limit is None else limit
    patterns = PodSettings.load(layout, {}).ship if ship is None else ship
    left: list[str] = []
    top = layout.pod_dir.resolve()
    gitignore = top / ".gitignore"
    rules = parse_gitignore(gitignore.read_text("utf-8", "replace")) if _regular(gitignore) else []
    chosen: list[tuple[str, Path, int]] = []
    for folder, dirs, names in os.walk(top):  # followlinks=False: symlinked folders are not entered
        here = Path(folder)
        base = here.relative_to(top).as_posix()
        prefix = "" if base == "." else base + "/"
        dirs[:] = sorted(
            d
            for d in dirs
            if d not in NEVER_DIRS and not (here / d).is_symlink() and not ignored(rules, prefix + d, True)
        )
        for name in sorted(names):
            relative = prefix + name
            if any(fnmatch.fnmatchcase(name, p) for p in NEVER_FILES) or ignored(rules, relative, False):
                continue
            if not shipped(patterns, relative):
                if relative not in POD_FILES:
                    left.append(relative)
                continue
            found = _shippable(here / name, top)
            if found is not None:
                chosen.append((relative, *found))
    if left:  # a warning: a pod reading one of them gets only FileNotFoundError on the cluster
        log.warning(
            "pod %r: not shipping %d file(s) to Ray (%s%s): only Python modules and the files named in "
            "pod.toml's ship = [...] go; a pod that reads them needs e.g. ship = [%s]",
            layout.name,
            len(left),
            ", ".join(map(repr, left[:5])),
            ", ..." if len(left) > 5 else "",
            ", ".join(toml_string(path) for path in left[:3]),
        )
    total = sum(size for _, _, size in chosen)
    if total > limit or len(chosen) > MAX_FILES:
        biggest = ", ".join(f"{rel} ({size:,} B)" for rel, _, size in sorted(chosen, key=lambda c: -c[2])[:3])
        raise PodBuildError(
            f"pod {layout.name!r}: backend 'ray' would ship {len(chosen)} files, {total:,} bytes "
            f"(limit {limit:,} bytes, {MAX_FILES} files); biggest: {biggest}. Name fewer files in pod.toml's "
            "ship, list data and build output in the pod's .gitignore, or raise the limit with PYPODS_RAY_MAX_BYTES."
        )
    return chosen


def _regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False


def _shippable(path: Path, top: Path) -> tuple[Path, int] | None:
    """The file to read for *path* and its size, if it ships: a regular file, or a symlink to one inside the pod."""
    try:
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            path = path.resolve(strict=True)
            if not path.is_relative_to(top):
                return None  # points outside the pod: its target is not the pod's to send
            info = path.lstat()
        return (path, info.st_size) if stat.S_ISREG(info.st_mode) else None  # no FIFOs, devices, sockets
    except (OSError, RuntimeError):  # dangling or looping symlink, or a race with the filesystem
        return None


def _read(path: Path, size: int) -> bytes:
    """Read at most *size* bytes of the regular file checked before (not a symlink or FIFO swapped in since).

    Raises:
        PodBuildError: the file changed into something else between the check and the read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise PodBuildError(f"{path}: changed while the pod was being shipped: {exc}") from exc
    with open(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise PodBuildError(f"{path}: changed while the pod was being shipped: not a regular file now")
        return handle.read(size)


def runtime_env(layout: PodLayout, settings: PodSettings) -> dict[str, Any]:
    """The Ray ``runtime_env`` of a pod: its requirements (``uv``) and ``pod.toml``'s ``env`` (``env_vars``)."""
    source = layout.lock if layout.lock.exists() else layout.requirements
    lines = requirement_lines(source.read_text(encoding="utf-8")) if source.exists() else []
    packages, options = [], []
    for line in lines:
        if not line.startswith("-"):
            packages.append(line)
            continue
        flag, _, value = line.replace("=", " ", 1).partition(" ")
        value = value.strip()
        if flag in ("--find-links", "-f") and value and "://" not in value and not os.path.isabs(value):
            value = str((layout.pod_dir / value).resolve())
        options += [flag, value] if value else [flag]
    env: dict[str, Any] = {"env_vars": dict(settings.env)}
    if packages:
        # Ray's "uv" field: uv is a dependency of pypods, so it is on every node that can run a pod
        # (Ray's "pip" field needs pip in the base environment, which uv-made environments lack).
        env["uv"] = {"packages": packages, "uv_pip_install_options": options}
    return env
