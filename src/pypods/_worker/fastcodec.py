"""``fast1``: the value encoding a client and its worker negotiate for speed (stdlib only, Python 3.8+).

The two directions trust different things, so they use different encodings (``docs/encoding.md``):

- Requests (client -> worker) carry ``(args, kwargs)`` as restricted pickle (protocol 5) in field
  ``a``. The worker trusts its client (the client owns it and could run anything there), and the
  pickle never names a class: the pickler sends only exact builtin containers and scalars itself
  and hands every other value to the BSON encoder (``bson_value``), so a request decodes to exactly
  what BSON would give, and the worker's unpickler resolves one allow-listed function, nothing else.
- Replies (worker -> client) are hostile input for the client, so they never carry pickle: a value
  that JSON carries exactly (``json_exact``) goes as JSON text in field ``j``, decoded by the C
  ``json`` module (bounded, runs no code, string keys only so their hashing is randomized);
  anything else falls back to the BSON value encoding for that reply.
"""

from __future__ import annotations

import array
import io
import json
import pickle
import struct
import sys
from itertools import chain, compress, repeat
from operator import is_
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple, Union

from . import columns
from .codec import Encoder
from .decoding import DecodeError, Decoder
from .exttypes import MissingLibrary

if TYPE_CHECKING:
    from .exttypes import OutOfBand

NAME = "fast1"
COLUMNS = "fast2"  # fast1 plus typed columns in replies (columns.py)
NAMES = (NAME, COLUMNS)  # the encodings that use this module's requests and replies
ENCODINGS = ["bson", NAME, COLUMNS]  # what a worker offers in its hello, in order of preference
INT_LIMIT = 2**63  # ints in JSON stay within int64 (bigger: BSON, as two's-complement bytes)
MAX_LEVELS = 100  # nesting a JSON reply may have; deeper values go as BSON (which refuses past the stack)
MAX_ITEMS = 1 << 22  # containers and scalars the exactness check visits before giving up on JSON
# Python refuses to read ints of more than 4300 digits as text (3.11+ and security releases); where it
# sets no such limit, the JSON decoder bounds them itself. The encoder never relies on either side's
# limit (a pod may lift its own: sys.set_int_max_str_digits(0)): the value alone decides (int64 or BSON).
_UNLIMITED_TEXT_INTS = not (0 < getattr(sys, "get_int_max_str_digits", lambda: 0)() <= 4300)
VECTOR_MIN = 16  # floats in a list or dict before they are sent packed as float64
_BIG_ENDIAN = sys.byteorder == "big"
_MODULES = ("pypods._worker.fastcodec", "_pypods_worker.fastcodec")  # this module, client and pod side
_pack_i32 = struct.Struct("<i").pack
_pack_i32_into = struct.Struct("<i").pack_into
_FLOATS = {float}
_STR = {str}
_BUFFERS = (bytes, bytearray)
_SCALARS = frozenset({str, float, bool, type(None)})
_JSON_TYPES = _SCALARS | {int, list, dict}
MAX_JSON_DIGITS = 4300  # an int in a JSON reply, where this Python itself sets no limit (before 3.9.14)


def _bounded_int(text: str) -> int:
    # Text-to-int conversion is quadratic in the digits: a few MB of them would hold the client for minutes.
    if len(text) > MAX_JSON_DIGITS + 1:  # + 1: a minus sign
        raise ValueError("an int of more than %d digits" % MAX_JSON_DIGITS)
    return int(text)


def _json_decoder(bounded: bool) -> Callable[[str], Any]:
    """The C JSON decoder; with *bounded*, ints go through ``_bounded_int`` (only where Python has no limit)."""
    return (json.JSONDecoder(parse_int=_bounded_int) if bounded else json.JSONDecoder()).decode


def _accelerated(decode: Callable[[str], Any]) -> Callable[[str], Any]:
    """msgspec's C JSON decoder first, where the *client* has it (``pip install pypods[msgspec]``).

    It reads every JSON text our encoder writes to the same values as ``json.loads`` (key order,
    ints within int64 and beyond, floats correctly rounded), and refuses what it reads otherwise
    (NaN and the infinities, lone surrogates, ints past 4300 digits, nesting past its own limit):
    on any error the standard decoder reads the text again, so the value, or the error, is
    ``json``'s own. Never in a pod: there this module stays standard library only.
    """
    if __package__ != "pypods._worker":  # the worker loads this folder as _pypods_worker
        return decode
    try:
        from msgspec.json import Decoder as MsgspecDecoder
    except ImportError:
        return decode
    fast = MsgspecDecoder().decode

    def decode_json(text: str) -> Any:
        try:
            return fast(text)
        except Exception:
            return decode(text)

    return decode_json


_json_decode = _accelerated(_json_decoder(_UNLIMITED_TEXT_INTS))


def _refuse(value: Any) -> Any:
    raise TypeError("not JSON")


def _json_encoder() -> Callable[[Any], str]:
    """The C encoder made once (``JSONEncoder.encode`` makes one per call); the same text either way."""
    # Not ensure_ascii: "\\ud83d\\ude00" escapes are one character to every JSON decoder, even when the
    # str held those two surrogates as two code points. Raw, they stay two (UTF-8 with surrogatepass).
    slow = json.JSONEncoder(check_circular=False, ensure_ascii=False, separators=(",", ":"), default=_refuse).encode
    try:
        from json.encoder import c_encode_basestring, c_make_encoder  # type: ignore[attr-defined]

        chunks = c_make_encoder(None, _refuse, c_encode_basestring, None, ":", ",", False, False, True)
        probe = [{"a": 1.5, "b": [None, True, "\u00e9\ud83d\ude00\x00"]}, float("nan"), -(2**70)]
        if "".join(chunks(probe, 0)) == slow(probe):
            return lambda value: "".join(chunks(value, 0))
    except Exception:  # no C accelerator, or another signature: the documented API
        pass
    return slow


_json_encode = _json_encoder()


def bson_value(data: bytes) -> Any:  # pragma: no cover - never called: the worker maps it to its decoder
    """The allow-listed pickle global: a value the pickler handed to the BSON encoder."""
    raise pickle.UnpicklingError("bson_value is resolved by the worker's unpickler")


class _Pickler(pickle.Pickler):
    """Pickle exact builtin values natively; every other value becomes ``bson_value(<BSON bytes>)``."""

    def __init__(self, file: Any, big: Optional[OutOfBand]) -> None:
        super().__init__(file, protocol=5)
        self.big = big
        # No memo: a cycle raises ValueError (then BSON refuses it, naming where it closes, as it does a
        # reply's), and a value shared twice arrives as two copies, as with BSON: one outcome either way.
        self.fast = True

    def reducer_override(self, obj: Any) -> Any:
        # Called for every value but None, bools and exact int/float/str/bytes/bytearray/containers,
        # and for bson_value itself when it is saved as the global of a reduction: that one is a global.
        if obj is bson_value:
            return NotImplemented
        return bson_value, (bytes(Encoder(self.big).document({"v": obj})),)


class _Unpickler(pickle.Unpickler):
    """Resolve ``bson_value`` only (to this worker's BSON decoder); every other global is refused."""

    def __init__(self, data: bytes, decoder: Decoder) -> None:
        super().__init__(io.BytesIO(data))
        self.decoder = decoder

    def find_class(self, module: str, name: str) -> Any:
        if name == "bson_value" and module in _MODULES:
            return self._bson_value
        raise pickle.UnpicklingError("global %s.%s is not allowed in a request" % (module, name))

    def _bson_value(self, data: bytes) -> Any:
        return self.decoder.document(data)["v"]


def _str_keys(keys: Any) -> bool:
    """Every key is a ``str`` (subclasses too: BSON sends them as ``str``), checked by type at C speed."""
    return all(issubclass(kind, str) for kind in set(map(type, keys)))


def _big_buffer(items: Any, big: Optional[OutOfBand]) -> bool:
    """A top-level argument that BSON would move out of band (pickle would copy it into the frame)."""
    if big is None:
        return False
    threshold = big.threshold
    for item in items:  # a plain loop: a generator costs more than the test for the usual few arguments
        if type(item) in _BUFFERS and len(item) >= threshold:
            return True
    return False


def encode_request(
    big: Optional[OutOfBand], call_id: int, name: str, args: Tuple[Any, ...], kwargs: Dict[str, Any]
) -> bytearray:
    """``{"id", "op": "call", "name", "a": <pickle of (args, kwargs)>}``, or the BSON request.

    Raises EncodeError exactly when the BSON encoder would (it encodes every non-builtin value).
    """
    if _big_buffer(args, big) or _big_buffer(kwargs.values(), big):
        return Encoder(big).request(call_id, name, args, kwargs)
    sink = io.BytesIO()
    try:
        _Pickler(sink, big).dump((args, kwargs))
    except Exception:
        # BSON raises the same EncodeError, with the path to the value that failed (or sends it).
        if big is not None:
            big.discard()
        return Encoder(big).request(call_id, name, args, kwargs)
    encoder = Encoder(big)
    out = encoder.call_head(call_id, name)
    encoder._binary(out, b"a\x00", sink.getbuffer(), "bytes")  # a big pickle (nested buffers) goes out of band
    out += b"\x00"
    _pack_i32_into(out, 0, len(out))
    return out


def decode_request(request: Dict[str, Any], decoder: Decoder) -> Tuple[Any, Dict[str, Any]]:
    """The ``(args, kwargs)`` of a request: field ``a`` (fast1) or ``args``/``kwargs`` (BSON)."""
    data = request.get("a")
    if data is None:
        return request.get("args", ()), request.get("kwargs", {})
    if not isinstance(data, bytes):
        raise DecodeError("field 'a' is not binary")
    try:
        args, kwargs = _Unpickler(data, decoder).load()
    except (DecodeError, MissingLibrary):
        raise
    except Exception as exc:
        raise DecodeError("bad fast1 arguments: %s: %s" % (type(exc).__name__, exc)) from exc
    if type(args) is not tuple or type(kwargs) is not dict:
        raise DecodeError("fast1 arguments are not (tuple, dict)")
    return args, kwargs


def json_exact(value: Any) -> bool:
    """True when JSON carries *value* exactly: exact dict (str keys), list, str, float, bool, None, int.

    Checks one nesting level of the value at a time with C-speed builtins (``map``, ``set``,
    ``chain``), so a list of records costs a few passes, not a Python call per item.
    """
    kind = type(value)
    if kind in _SCALARS:
        return True
    if kind is int:
        return bool(-INT_LIMIT <= value < INT_LIMIT)
    level: List[Any] = [value]
    visited = 0
    for _ in range(MAX_LEVELS):
        visited += len(level)
        if visited > MAX_ITEMS:
            return False
        types = list(map(type, level))
        kinds = set(types)
        if not kinds <= _JSON_TYPES:
            return False
        single = len(kinds) == 1
        if int in kinds:
            ints = level if single else list(compress(level, map(is_, types, repeat(int))))
            if max(ints) >= INT_LIMIT or min(ints) < -INT_LIMIT:
                return False
        below: List[Any] = []
        if list in kinds:
            below = list(chain.from_iterable(level if single else compress(level, map(is_, types, repeat(list)))))
        if dict in kinds:
            dicts = level if single else list(compress(level, map(is_, types, repeat(dict))))
            # Distinct keys only (records share theirs); str subclasses are fine (BSON sends them as str too).
            if not _str_keys(set().union(*dicts)):
                return False
            below.extend(chain.from_iterable(map(dict.values, dicts)))
        if not below:
            return True
        level = below
    return False


def choose(wanted: str, offered: Any) -> Optional[str]:
    """The encoding a client asks for: *wanted* (``PYPODS_ENCODING``) if offered, fast1 for fast2 if only
    fast1 is offered (an older worker), None for BSON (nothing to send)."""
    if wanted not in NAMES or not isinstance(offered, list):
        return None
    if wanted in offered:
        return wanted
    return NAME if NAME in offered else None


def chosen(name: Any) -> str:
    """What the worker replies in after the client's ``encoding`` message: fast1, fast2 or "" (BSON)."""
    return name if name in NAMES else ""


def _json_column(values: Any) -> Optional[bytes]:
    """A fast2 column no typed column carries: JSON text, under fast1's exactness rules, or None."""
    values = list(values)
    if not json_exact(values):
        return None
    try:
        return _json_encode(values).encode("utf-8", "surrogatepass")
    except Exception:  # recursion in the C encoder: not this way
        return None


def encode_reply(
    big: Optional[OutOfBand], call_id: int, value: Any, key: str = "value", encoding: str = NAME
) -> bytearray:
    """A result (``key="value"``) or stream item (``"yield"``): JSON text in ``j`` when exact, else BSON.

    With ``encoding="fast2"``, a list of records, a list or a dict that typed columns carry exactly
    goes as field ``c`` (``columns.py``) first.
    Raises EncodeError (only) when the value cannot be sent at all.
    """
    kind = type(value)
    if kind in _SCALARS or kind is int:  # BSON writes a scalar faster than JSON and reads it as fast
        return _bson_reply(big, call_id, value, key)
    if encoding == COLUMNS and (kind is list or kind is dict):
        try:
            carrier = columns.encode(value, _json_column)
        except Exception:  # e.g. memory: fast1's path decides, and BSON explains
            carrier = None
        if carrier is not None:
            out = bytearray()
            Encoder(big)._binary(out, b"c\x00", carrier, "bytes")  # out of band from 1 MiB
            return _frame(call_id, key, out)
    vector = _float_vector(value, big)
    if vector is not None:
        return _frame(call_id, key, vector)
    if json_exact(value):
        try:
            text = _json_encode(value).encode("utf-8", "surrogatepass")
        except Exception:  # e.g. recursion in the C encoder: let BSON decide and explain
            text = b""
        if text:
            return _frame(call_id, key, b"\x02j\x00" + _pack_i32(len(text) + 1) + text + b"\x00")
    return _bson_reply(big, call_id, value, key)


def _bson_reply(big: Optional[OutOfBand], call_id: int, value: Any, key: str) -> bytearray:
    if key == "value":
        return Encoder(big).reply(call_id, value)
    return Encoder(big).document({"id": call_id, key: value})


def _frame(call_id: int, key: str, fields: Union[bytes, bytearray]) -> bytearray:
    """``{"id", "ok": true, "value": null, ...fields}`` (or ``"yield": null`` for a stream item)."""
    out = bytearray(b"\x00\x00\x00\x00")
    Encoder().value(out, b"id\x00", call_id)
    out += b"\x08ok\x00\x01\x0avalue\x00" if key == "value" else b"\x0ayield\x00"
    out += fields
    out += b"\x00"
    _pack_i32_into(out, 0, len(out))
    return out


def _float_vector(value: Any, big: Optional[OutOfBand]) -> Optional[bytearray]:
    """Fields ``f`` (float64 binary) and, for a dict, ``k`` (its str keys as JSON): a list of floats or a
    str-keyed dict of floats, packed (JSON would spend most of its time writing and parsing floats)."""
    kind = type(value)
    if kind is list:
        if len(value) < VECTOR_MIN or set(map(type, value)) != _FLOATS:
            return None
        keys = b""
        floats = array.array("d", value)
    elif kind is dict:
        if len(value) < VECTOR_MIN or set(map(type, value.values())) != _FLOATS:
            return None
        if not _str_keys(value):
            return None
        text = _json_encode(list(value)).encode("utf-8", "surrogatepass")
        keys = b"\x02k\x00" + _pack_i32(len(text) + 1) + text + b"\x00"
        floats = array.array("d", value.values())
    else:
        return None
    if _BIG_ENDIAN:
        floats.byteswap()
    out = bytearray(keys)
    Encoder(big)._binary(out, b"f\x00", memoryview(floats).cast("B"), "bytes")  # out of band when big
    return out


def _unpack_vector(reply: Dict[str, Any], data: Any) -> Any:
    if not isinstance(data, bytes) or len(data) % 8:
        raise DecodeError("field 'f' is not float64 binary")
    floats = array.array("d")
    floats.frombytes(data)
    if _BIG_ENDIAN:
        floats.byteswap()
    values = floats.tolist()
    text = reply.get("k")
    if text is None:
        return values
    keys = _decode_json(text)
    if type(keys) is not list or len(keys) != len(values) or not set(map(type, keys)) <= _STR:
        raise DecodeError("field 'k' is not an array of one str key per float")
    result = dict(zip(keys, values))
    if len(result) != len(values):  # our encoder sends a dict's keys, which are distinct
        raise DecodeError("field 'k' repeats a key")
    return result


def _decode_json(text: Any) -> Any:
    if type(text) is not str:
        raise DecodeError("JSON field is not a string")
    try:
        return _json_decode(text)
    except Exception as exc:  # ValueError, RecursionError, an int past the digit limit
        raise DecodeError("bad JSON value: %s: %s" % (type(exc).__name__, exc)) from exc


def _decode_json_bytes(data: Any) -> Any:
    """A fast2 JSON column: UTF-8 bytes (surrogates passed) read as fast1's ``j`` text is."""
    try:
        text = str(data, "utf-8", "surrogatepass")
    except UnicodeDecodeError as exc:
        raise DecodeError("JSON column is not UTF-8: %s" % exc) from exc
    return _decode_json(text)


def reply_value(reply: Dict[str, Any], key: str, encoding: str = NAME) -> Any:
    """The value of a reply: JSON text in ``j`` (fast1), columns in ``c`` (fast2), else the BSON field
    *key*. Raises DecodeError (also for a ``c`` field on a connection that chose fast1)."""
    text = reply.get("j")
    vector = reply.get("f")
    carrier = reply.get("c")
    if carrier is not None or "c" in reply:
        if encoding != COLUMNS:
            raise DecodeError("fast2 columns on a connection that chose %s" % encoding)
        if reply.get(key) is not None or text is not None or vector is not None or "k" in reply:
            raise DecodeError(
                "a reply mixes its value fields (%s)" % ", ".join(sorted({key, "j", "f", "k", "c"} & set(reply)))
            )
        if not isinstance(carrier, bytes):
            raise DecodeError("field 'c' is not binary")
        return columns.decode(carrier, _decode_json_bytes)
    if text is None and vector is None:
        if "k" in reply:
            raise DecodeError("field 'k' without 'f'")
        return reply.get(key)
    # One carrier per reply: a value beside 'j', or 'j' beside 'f', would leave it to us to pick one.
    if reply.get(key) is not None or (text is not None and (vector is not None or "k" in reply)):
        raise DecodeError("a reply mixes its value fields (%s)" % ", ".join(sorted({key, "j", "f", "k"} & set(reply))))
    if text is not None:
        return _decode_json(text)
    return _unpack_vector(reply, vector)
