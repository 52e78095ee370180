"""Optional wire types (numpy, pandas), imported only when a value of theirs crosses (stdlib only to import).

Nothing here imports numpy, pandas or pyarrow until a value of theirs is sent or received, so a pod
without them pays nothing. Large buffers go out of band through ``sharedmem`` (sealed memfds).
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Dict, Optional

from .sharedmem import DEFAULT_THRESHOLD as DEFAULT_THRESHOLD, OutOfBand as OutOfBand  # re-exported


class MissingLibrary(ModuleNotFoundError):
    """A value needs a library this side does not have (e.g. numpy in a pod without it)."""


class RawBuffer:
    """A byte view the receiver may map in place (arrays), rather than copy out."""

    __slots__ = ("view",)

    def __init__(self, view: memoryview) -> None:
        self.view = view


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
    except Exception as exc:
        raise MissingLibrary("cannot receive a %s: %s" % (what, import_failure(name, exc)), name=name) from exc


def import_failure(name: str, exc: BaseException) -> str:
    """Why importing optional library *name* failed: not installed, or installed and broken (its own error).

    A pyarrow built for numpy 2 in a pod pinned to ``numpy<2`` is installed: telling the user to
    install it would send them the wrong way, so its own error is shown instead.
    """
    missing = isinstance(exc, ModuleNotFoundError) and exc.name == name
    if missing:
        return (
            "%s is not installed on this side (add it to the pod's requirements.txt, or to the client's environment)"
            % (name,)
        )
    try:
        text = str(exc)
    except Exception:
        text = "<no message>"
    return "%s is installed on this side but failed to import: %s: %s" % (name, type(exc).__name__, text)


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

        cause = exc.__cause__
        if isinstance(cause, ModuleNotFoundError) and cause.name == "pyarrow":
            raise EncodeError("sending a pandas object needs pyarrow installed on both sides") from exc
        raise EncodeError("cannot send a pandas object: %s" % import_failure("pyarrow", cause or exc)) from exc
    frame = obj.to_frame(name=obj.name if obj.name is not None else "__series__") if series else obj
    table = pa.Table.from_pandas(frame, preserve_index=None)  # a RangeIndex stays one (as metadata)
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
