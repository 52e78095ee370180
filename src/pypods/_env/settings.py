"""A pod's settings (``pod.toml``, then the caller's arguments), validated as hostile input, and TOML written safely.

``pod.toml`` lives in the pod's folder, so it is treated like anything else a pod leaves on disk: every
value is type-checked and bounded, and it may not choose the pickle codec (which runs code in the
client on decode); only the client's own code can, with an argument to ``load``/``PodLoader``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import sys
from typing import TYPE_CHECKING, Any

from .._errors import PodConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.9/3.10 clients
    import tomli as tomllib

if TYPE_CHECKING:
    from .layout import PodLayout

ENCODINGS = ("fast2", "fast1", "bson")  # the values of $PYPODS_ENCODING (docs/encoding.md); fast2 is the default
MAX_WORKERS = 64
MAX_SHIP = 1000  # patterns in ``ship``
MAX_SECONDS = 10_000_000.0  # about four months; larger values overflow some platforms' wait calls
ARGUMENTS = "arguments"
CHOICES = {
    "start": ("auto", "eager", "lazy"),
    "codec": ("bson", "pickle"),
    "log": ("stderr", "logging"),
    "backend": ("local", "ray"),
}


@dataclasses.dataclass(frozen=True)
class PodSettings:
    """A pod's settings: defaults, then ``pod.toml``, then the caller's arguments."""

    python: str | None = None
    workers: int = 1
    timeout: float | None = None
    start: str = "auto"
    start_timeout: float | None = None
    idle_timeout: float | None = None
    codec: str = "bson"
    log: str = "stderr"
    backend: str = "local"
    address: str | None = None
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    ship: tuple[str, ...] = ()  # backend "ray": data files to send besides the Python modules (rayship.py)
    debug: bool | None = None  # None: a pdb prompt for breakpoint() when the client is at a terminal
    template: bool = False  # fork workers from a process that imported pod.py once (docs/heavy-pods.md)
    memory: int | None = None  # bytes one worker (with all it started) may use; killed past it (limits.py)

    @classmethod
    def load(cls, layout: PodLayout, overrides: dict[str, Any]) -> PodSettings:
        """Read ``pod.toml`` (if any) and apply *overrides* (None means "not given").

        Raises:
            PodConfigError: ``pod.toml`` is not valid TOML, names an unknown setting (with a "did you
                mean"), a value has the wrong type or is out of range, or it sets ``codec = "pickle"``;
                the message names the file and the key. Also a ``ValueError``. Also when
                ``$PYPODS_ENCODING`` is set to an unknown encoding (see ``encoding_from_environ``).
        """
        values: dict[str, Any] = {}
        if layout.settings.is_file():
            source = str(layout.settings)
            try:
                raw = tomllib.loads(layout.settings.read_text(encoding="utf-8"))
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                raise PodConfigError(f"{source}: not valid TOML: {exc}") from exc
            values = _checked(raw, source, from_file=True)
        given = {key: value for key, value in overrides.items() if value is not None}
        values.update(_checked(given, ARGUMENTS, from_file=False))
        encoding_from_environ()  # a typo in $PYPODS_ENCODING fails the load, not silently the encoding
        return cls(**values)

    @classmethod
    def from_mapping(cls, values: dict[str, Any], source: str) -> PodSettings:
        """Settings from *values* as the client's own code gives them (pickle allowed)."""
        return cls(**_checked(values, source, from_file=False))


KNOWN = tuple(field.name for field in dataclasses.fields(PodSettings))


def encoding_from_environ() -> str:
    """The encoding ``$PYPODS_ENCODING`` asks for: ``fast2`` (the default, also unset or empty), ``fast1``, ``bson``.

    Case and surrounding blanks do not matter (``" BSON "`` is ``bson``).

    Raises:
        PodConfigError: any other value (``fast``, ``json`` ...): the message names the variable.
    """
    raw = os.environ.get("PYPODS_ENCODING", "")
    wanted = raw.strip().lower()
    if not wanted:
        return ENCODINGS[0]
    if wanted not in ENCODINGS:
        close = difflib.get_close_matches(wanted, ENCODINGS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise PodConfigError(
            f"environment variable PYPODS_ENCODING={raw!r} is not an encoding{hint} "
            f"(one of {', '.join(ENCODINGS)}, or unset for {ENCODINGS[0]})"
        )
    return wanted


def _checked(values: dict[str, Any], source: str, *, from_file: bool) -> dict[str, Any]:
    unknown = sorted(set(values) - set(KNOWN))
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, KNOWN, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise PodConfigError(f"{source}: unknown setting {key!r}{hint} (known: {', '.join(KNOWN)})")
    checked = {key: _check(key, value, source) for key, value in values.items()}
    if from_file and checked.get("debug") is True:
        raise PodConfigError(
            f"{source}: debug = true is not allowed in pod.toml: it lets the pod read lines typed at your terminal "
            "(only false is: never a prompt). It is on by default when your program runs at a terminal; "
            "pypods.load(name, debug=False) turns it off"
        )
    if from_file and checked.get("codec") == "pickle":
        raise PodConfigError(
            f'{source}: codec = "pickle" is not allowed in pod.toml: the pickle codec runs code in the client '
            "when it decodes, and pod.toml lives in the pod's own folder. If you trust this pod, choose it in your "
            'own code: pypods.load(name, codec="pickle") or PodLoader(name, globals(), codec="pickle")'
        )
    return checked


def _where(source: str, key: str) -> str:
    return f"argument {key!r}" if source == ARGUMENTS else f"{source}: setting {key!r}"


def _check(key: str, value: Any, source: str) -> Any:
    def bad(expected: str) -> PodConfigError:
        return PodConfigError(f"{_where(source, key)} must be {expected}, not {value!r}")

    if key in ("python", "address"):
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if not isinstance(value, str) or not value.strip() or len(value) > 4096 or _has_control(value):
            raise bad("a non-empty string without control characters")
        return value
    if key == "workers":
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WORKERS:
            raise bad(f"a whole number from 1 to {MAX_WORKERS}")
        return value
    if key in ("timeout", "idle_timeout", "start_timeout"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number of seconds")
        if not math.isfinite(value) or not 0 < value <= MAX_SECONDS:
            raise bad(f"a finite number of seconds above 0 and at most {MAX_SECONDS:,.0f}")
        return float(value)
    if key in CHOICES:
        if not isinstance(value, str) or value not in CHOICES[key]:
            raise bad("one of " + ", ".join(repr(c) for c in CHOICES[key]))
        return value
    if key in ("template", "debug"):
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if key == "memory":
        return _check_memory(value, _where(source, key))
    if key == "env":
        return _check_env(value, _where(source, key))
    if key == "ship":
        return _check_ship(value, _where(source, key))
    raise bad("a known setting")  # pragma: no cover - guarded by _checked


def _has_control(text: str) -> bool:
    return any(ord(char) < 32 or ord(char) == 127 for char in text)


MIN_MEMORY = 16 * 1000 * 1000  # bytes; an interpreter alone needs about 10 MB
MAX_MEMORY = 1 << 60
_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}  # fmt: skip
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*")


def memory_supported() -> bool:
    """Whether this platform can cap a worker's memory at all: Linux (a cgroup, or the /proc watch)."""
    return sys.platform.startswith("linux") and os.path.exists("/proc/self/status")


def parse_size(value: Any) -> int:
    """Bytes from *value*: a whole number of bytes or a size such as ``"2GB"``, ``"512MiB"``, ``"1.5 G"``.

    KB/MB/GB/TB are powers of 1000, KiB/MiB/GiB/TiB (and K/M/G/T alone) powers of 1024.

    Raises:
        ValueError: not a size, or not from ``MIN_MEMORY`` (16 MB) to 2**60 bytes.
    """
    if isinstance(value, bool):
        raise ValueError("a size, not a bool")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        match = _SIZE.fullmatch(value)
        unit = _UNITS.get(match.group(2).lower()) if match else None
        if match is None or unit is None or len(value) > 64:
            raise ValueError("a whole number of bytes or a size such as '2GB' or '512MiB'")
        number = float(match.group(1))
        if not math.isfinite(number) or number * unit > MAX_MEMORY:
            raise ValueError("too large")
        size = int(number * unit)
    else:
        raise ValueError("a whole number of bytes or a size such as '2GB' or '512MiB'")
    if not MIN_MEMORY <= size <= MAX_MEMORY:
        raise ValueError(f"from {MIN_MEMORY // 10**6} MB to 2**60 bytes")
    return size


def _check_memory(value: Any, where: str) -> int:
    """A size in bytes (``2000000000``, ``"2GB"``, ``"512MiB"``), and only where it can be enforced."""
    try:
        size = parse_size(value)
    except ValueError as exc:
        raise PodConfigError(
            f'{where} must be a size in bytes such as 2000000000, "2GB" or "512MiB" ({exc}), not {value!r}'
        ) from exc
    if not memory_supported():
        raise PodConfigError(
            f"{where}: a memory limit needs Linux (a cgroup v2 memory.max, or a watch over /proc), "
            f"and this platform is {sys.platform}; remove the setting to run without a limit"
        )
    return size


def _check_env(table: Any, where: str) -> dict[str, str]:
    """Environment variables: names without ``=``/NUL (and not empty), string or number values without NUL."""
    if not isinstance(table, dict):
        raise PodConfigError(f'{where} must be a table of NAME = "value", not {table!r}')
    env: dict[str, str] = {}
    for name, value in table.items():
        if not isinstance(name, str) or not name or "=" in name or "\0" in name:
            raise PodConfigError(f"{where}: {name!r} is not a valid environment variable name (empty, or has = or NUL)")
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise PodConfigError(
                f'{where}: {name} must be a string or a number (quote it: {name} = "..."), not {value!r}'
            )
        text = str(value)
        if "\0" in text:
            raise PodConfigError(f"{where}: the value of {name} contains a NUL character")
        env[name] = text
    return env


def _check_ship(patterns: Any, where: str) -> tuple[str, ...]:
    """Globs of files inside the pod folder: relative, no ``..``, no control characters, at most ``MAX_SHIP``."""
    if isinstance(patterns, str) or not isinstance(patterns, (list, tuple)) or len(patterns) > MAX_SHIP:
        raise PodConfigError(
            f'{where} must be a list of at most {MAX_SHIP} globs such as ["data/*.csv"], not {patterns!r}'
        )
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern.strip() or len(pattern) > 4096 or _has_control(pattern):
            raise PodConfigError(f"{where}: {pattern!r} is not a glob (a non-empty string without control characters)")
        if pattern.startswith(("/", "~")) or ".." in pattern.replace("\\", "/").split("/"):
            raise PodConfigError(f"{where}: {pattern!r} must name files inside the pod folder (relative, no ..)")
    return tuple(patterns)


def toml_string(text: str) -> str:
    """*text* as a TOML basic string: quotes, backslashes and control characters escaped, nothing injected."""
    out = ['"']
    for char in text:
        code = ord(char)
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif code < 32 or code == 127:
            out.append(f"\\u{code:04x}")
        elif 0xD800 <= code <= 0xDFFF:
            raise ValueError(f"cannot write a lone surrogate ({code:#x}) to TOML")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)
