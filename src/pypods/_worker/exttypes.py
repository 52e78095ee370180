"""Optional wire types (numpy, pandas) and out-of-band buffers in shared memory (stdlib only to import).

Nothing here imports numpy, pandas or pyarrow until a value of theirs is sent or received, so a pod
without them pays nothing. Large buffers go through files in ``/dev/shm`` (a tmpfs: memory, not
disk), named ``pypods-<pid>-<n>`` so that whoever outlives a crash can sweep what the dead side left.
"""

from __future__ import annotations

import mmap
import os
import re
import sys
from typing import Any, Callable, Dict, List, Optional

SHM_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else os.environ.get("TMPDIR", "/tmp")
_SHM_NAME = re.compile(r"\Apypods-[0-9]+-[0-9]+\Z")
DEFAULT_THRESHOLD = 1 << 20


class MissingLibrary(ModuleNotFoundError):
    """A value needs a library this side does not have (e.g. numpy in a pod without it)."""


class RawBuffer:
    """A byte view the receiver may map in place (arrays), rather than copy out."""

    __slots__ = ("view",)

    def __init__(self, view: memoryview) -> None:
        self.view = view


class OutOfBand:
    """Move buffers of ``threshold`` bytes or more through shared memory instead of the pipe.

    The sender creates a segment per buffer and records it; the receiver reads it and unlinks it at
    once. ``discard()`` (called by the sender when the call ends, however it ends) unlinks whatever
    the receiver did not take, so nothing outlives the call.
    """

    __slots__ = ("_counter", "created", "threshold")

    def __init__(self, threshold: int = DEFAULT_THRESHOLD) -> None:
        self.threshold = threshold
        self.created: List[str] = []
        self._counter = 0

    def put(self, data: Any) -> str:
        """Copy *data* (a bytes-like object) into a new segment and return its name."""
        self._counter += 1
        name = "pypods-%d-%d" % (os.getpid(), self._counter)
        path = os.path.join(SHM_DIR, name)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        self.created.append(path)
        try:
            view = memoryview(data).cast("B")
            written = 0
            while written < len(view):
                written += os.write(fd, view[written:])
        finally:
            os.close(fd)
        return name

    def get(self, name: Any, kind: Any) -> Any:
        """Take a segment: ``bytes``/``bytearray`` copy it out, ``raw`` maps it (private, writable)."""
        if not isinstance(name, str) or not _SHM_NAME.match(name):
            raise ValueError("bad shared-memory segment name %r" % (name,))
        path = os.path.join(SHM_DIR, name)
        fd = os.open(path, os.O_RDWR)
        try:
            os.unlink(path)
            size = os.fstat(fd).st_size
            if kind == "raw":
                if size == 0:
                    return bytearray()
                return memoryview(mmap.mmap(fd, size, access=mmap.ACCESS_COPY))
            with os.fdopen(os.dup(fd), "rb", buffering=0) as handle:
                data = handle.readall()
            return bytearray(data) if kind == "bytearray" else data
        finally:
            os.close(fd)

    def discard(self) -> None:
        """Unlink every segment this side created that is still there."""
        for path in self.created:
            try:
                os.unlink(path)
            except OSError:
                pass
        del self.created[:]


def sweep(pid: int) -> int:
    """Remove segments left by process *pid* (it died mid-call); return how many."""
    prefix = "pypods-%d-" % pid
    removed = 0
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return 0
    for name in names:
        if name.startswith(prefix):
            try:
                os.unlink(os.path.join(SHM_DIR, name))
                removed += 1
            except OSError:
                pass
    return removed


def is_stdlib(module: str) -> bool:
    """True when *module* belongs to the standard library (importing it runs no user code)."""
    top = module.split(".", 1)[0]
    names = getattr(sys, "stdlib_module_names", None)
    if names is not None:
        return top in names
    import importlib.util
    import sysconfig

    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return False
    if spec is None:
        return False
    if spec.origin in ("built-in", "frozen"):
        return True
    stdlib = sysconfig.get_paths()["stdlib"]
    origin = spec.origin or ""
    return origin.startswith(stdlib) and "site-packages" not in origin


def _require(name: str, what: str) -> Any:
    module = sys.modules.get(name)
    if module is not None:
        return module
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise MissingLibrary(
            "cannot receive a %s: %s is not installed on this side (add it to the pod's "
            "requirements.txt, or to the client's environment)" % (what, name),
            name=name,
        ) from exc


# --- numpy ----------------------------------------------------------------------------------


def _encode_ndarray(enc: Any, out: bytearray, key: bytes, obj: Any) -> None:
    np = sys.modules["numpy"]
    scalar = isinstance(obj, np.generic)
    array = np.asarray(obj)
    if array.dtype.hasobject:
        from .codec import EncodeError

        raise EncodeError("cannot send a numpy array of dtype object (it holds Python objects)")
    order = "F" if array.ndim > 1 and array.flags.f_contiguous and not array.flags.c_contiguous else "C"
    if not (array.flags.c_contiguous or array.flags.f_contiguous):
        array = np.ascontiguousarray(array)
    descr = np.lib.format.dtype_to_descr(array.dtype)
    flat = array.ravel(order="K") if array.ndim else array.reshape(1)
    data = memoryview(flat.view(np.uint8))  # raw bytes, whatever the dtype (datetime64 has no buffer format)
    enc.ext(out, key, "ndarray", RawBuffer(data), d=descr, s=list(array.shape), o=order, x=scalar)


def _decode_ndarray(payload: Any, fields: Dict[str, Any], dec: Any) -> Any:
    np = _require("numpy", "numpy array")
    dtype = np.lib.format.descr_to_dtype(_lists_to_tuples(fields["d"]))
    if dtype.hasobject:
        raise ValueError("numpy dtype %s holds Python objects: refused" % dtype)
    if isinstance(payload, (bytes, bytearray)):
        payload = bytearray(payload)  # a writable buffer, as a locally made array would be
    flat = np.frombuffer(payload, dtype=dtype)
    array = flat.reshape(fields["s"], order=fields.get("o", "C"))
    return array[()] if fields.get("x") else array


def _lists_to_tuples(descr: Any) -> Any:
    if isinstance(descr, list):
        return [tuple(_lists_to_tuples(part) for part in field) for field in descr]
    return descr


# --- pandas (Arrow IPC) ---------------------------------------------------------------------


def _encode_pandas(enc: Any, out: bytearray, key: bytes, obj: Any) -> None:
    pd = sys.modules["pandas"]
    series = isinstance(obj, pd.Series)
    try:
        pa = _require("pyarrow", "pandas object")
    except MissingLibrary as exc:
        from .codec import EncodeError

        raise EncodeError("sending a pandas object needs pyarrow installed on both sides") from exc
    frame = obj.to_frame(name=obj.name if obj.name is not None else "__series__") if series else obj
    table = pa.Table.from_pandas(frame, preserve_index=True)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    enc.ext(out, key, "pandas", memoryview(sink.getvalue()), series=series)


def _decode_pandas(payload: Any, fields: Dict[str, Any], dec: Any) -> Any:
    from . import arrowguard

    _require("pandas", "pandas object")
    pa = _require("pyarrow", "pandas object")
    if not arrowguard.pyarrow_ok(pa.__version__):
        raise MissingLibrary(
            "cannot receive a pandas object: pyarrow %s is older than %s (CVE-2023-47248)"
            % (pa.__version__, ".".join(map(str, arrowguard.MIN_PYARROW))),
            name="pyarrow",
        )
    if not isinstance(payload, (bytes, bytearray)):
        raise ValueError("pandas payload is not binary")
    arrowguard.check_stream(payload)
    table = pa.ipc.open_stream(pa.py_buffer(bytes(payload))).read_all()
    arrowguard.check_table(pa, table, len(payload))
    frame = table.to_pandas()
    if fields.get("series"):
        series = frame.iloc[:, 0]
        return series.rename(None) if series.name == "__series__" else series
    return frame


def encoder_for(obj: Any) -> Optional[Callable[..., None]]:
    """Return the encoder for a value of an optional library, without importing the library."""
    module = type(obj).__module__.split(".", 1)[0]
    if module == "numpy":
        np = sys.modules.get("numpy")
        if np is not None and isinstance(obj, (np.ndarray, np.generic)):
            return _encode_ndarray
    elif module == "pandas":
        pd = sys.modules.get("pandas")
        if pd is not None and isinstance(obj, (pd.DataFrame, pd.Series)):
            return _encode_pandas
    return None


_SPECIAL: Dict[str, Callable[[Any, Dict[str, Any], Any], Any]] = {
    "ndarray": _decode_ndarray,
    "pandas": _decode_pandas,
}


def decoder_for(tag: str) -> Optional[Callable[[Any, Dict[str, Any], Any], Any]]:
    """Return the decoder of an optional-library tag, or None if the tag is unknown."""
    return _SPECIAL.get(tag)
