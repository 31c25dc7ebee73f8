"""The one canonical encoding: a strict subset of msgpack (docs/protocol.md §2).

Allowed values: nil, booleans, unsigned and negative integers that fit in 64 bits,
UTF-8 strings, byte strings, arrays, and maps whose keys are strings sorted by their
UTF-8 bytes. No floats, no extension types. Every value has exactly one encoding:
msgpack's shortest form for each integer, string, binary, array and map header.

Invariant: ``decode(data)`` succeeds only when ``encode(decode(data)) == data``, so
one byte string stands for one value and signatures and hashes over encodings
cannot be malleated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from protocol.errors import EncodingError, OversizeError

__all__ = ["Limits", "decode", "encode", "pack_trusted"]


@dataclass(frozen=True)
class Limits:
    """Caps applied while decoding, before any large allocation."""

    max_bytes: int = 1 << 20
    max_str: int = 64 * 1024
    max_bin: int = 1 << 20
    max_array: int = 10_000
    max_map: int = 256
    max_depth: int = 16


DEFAULT_LIMITS = Limits()


def encode(value: Any) -> bytes:
    """Encode ``value`` canonically.

    Maps are written with their keys sorted by UTF-8 bytes; tuples as arrays.

    Raises:
        EncodingError: a value outside the canonical subset (float, non-string map
            key, integer out of 64-bit range, unknown type).
    """
    try:
        return msgpack.packb(_canonical(value, 0), use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise EncodingError(f"cannot encode: {exc}") from exc


def decode(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Any:
    """Decode exactly one canonical value, with size caps.

    Arrays come back as lists, maps as dicts, binaries as bytes.

    Raises:
        OversizeError: the input, or any string, binary, array or map, is over its cap.
        EncodingError: anything else: truncated input, trailing bytes, floats,
            extension types, non-string or unsorted or duplicate map keys, and any
            non-shortest form.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise EncodingError("expected bytes")
    if len(data) > limits.max_bytes:
        raise OversizeError(f"{len(data)} bytes is over the {limits.max_bytes}-byte cap")
    try:
        value = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_str_len=limits.max_str,
            max_bin_len=limits.max_bin,
            max_array_len=limits.max_array,
            max_map_len=limits.max_map,
            max_ext_len=0,
            ext_hook=_no_extension,
            object_pairs_hook=_no_duplicate_keys,
        )
    except EncodingError:
        raise
    except msgpack.ExtraData as exc:
        raise EncodingError("trailing bytes after the value") from exc
    except ValueError as exc:
        # msgpack reports caps as ValueError("... exceeds max_..._len(...)").
        if "exceeds max" in str(exc):
            raise OversizeError(f"field over its cap: {exc}") from exc
        raise EncodingError(f"not msgpack: {exc}") from exc
    except (msgpack.UnpackException, TypeError, RecursionError, UnicodeDecodeError) as exc:
        raise EncodingError(f"not msgpack: {exc}") from exc
    except Exception as exc:  # msgpack raises a few odd types on hostile input
        raise EncodingError(f"not msgpack: {type(exc).__name__}") from exc
    _check_depth_and_types(value, 0, limits.max_depth)
    if _packb(value) != bytes(data):
        raise EncodingError("not the canonical encoding of its value")
    return value


def _no_extension(code: int, data: bytes) -> Any:
    # max_ext_len=0 still lets an empty extension through (ext 8 of length 0); without
    # this hook it came back as an ExtType and re-packed to the same bytes, so decode
    # accepted it (found by the property test on random bytes).
    raise EncodingError("extension types are not allowed")


def _no_duplicate_keys(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise EncodingError("duplicate map key")
    return result


def _check_depth_and_types(value: Any, depth: int, max_depth: int) -> None:
    """Reject what msgpack can decode but the canonical subset forbids.

    With floats gone and map keys strictly sorted here, re-packing the decoded value
    as is reproduces the input exactly when (and only when) every header and integer
    used its shortest form: that is the final check in :func:`decode`.

    A value is nested at ``depth``; anything at a depth over ``max_depth`` is refused.
    msgpack builds exactly ``list``, ``dict``, ``float`` and scalar types, so items are
    told apart by ``type()`` and only containers recurse: an entry header (an array of
    eleven scalars and one small array) costs two calls, not twelve.
    """
    if depth > max_depth:
        raise EncodingError("nested too deeply")
    kind = type(value)
    if kind is float:
        raise EncodingError("floats are not allowed")
    if kind is dict:
        previous: bytes | None = None
        for key in value:
            # msgpack's strict_map_key lets binary keys through: refused here (a binary
            # key raised AttributeError out of decode; found by the fuzzer).
            if type(key) is not str:
                raise EncodingError("map keys must be strings")
            encoded = key.encode("utf-8")
            if previous is not None and encoded <= previous:
                raise EncodingError("map keys are not sorted")
            previous = encoded
        items = value.values()
    elif kind is list:
        items = value
    else:
        return
    if items and depth >= max_depth:
        raise EncodingError("nested too deeply")  # its items are deeper than allowed
    for item in items:
        inner = type(item)
        if inner is list or inner is dict:
            _check_depth_and_types(item, depth + 1, max_depth)
        elif inner is float:
            raise EncodingError("floats are not allowed")


def _packb(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def pack_trusted(value: Any) -> bytes:
    """Encode a value the caller built from canonical parts only: no maps, no floats,
    no out-of-range integers (e.g. the fixed-order arrays of an entry).

    Skips :func:`encode`'s walk, which dominates the cost of signing an entry; the
    bytes are identical to ``encode(value)`` for such values.
    """
    return msgpack.packb(value, use_bin_type=True)


_INT_MIN = -(1 << 63)
_INT_MAX = (1 << 64) - 1


def _canonical(value: Any, depth: int) -> Any:
    if depth > DEFAULT_LIMITS.max_depth:
        raise ValueError("nested too deeply")
    if value is None or isinstance(value, bool | str | bytes):
        return value
    if isinstance(value, int):
        if not _INT_MIN <= value <= _INT_MAX:
            raise ValueError("integer out of 64-bit range")
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise TypeError("map keys must be strings")
        keys = sorted(value, key=lambda k: k.encode("utf-8"))
        return {k: _canonical(value[k], depth + 1) for k in keys}
    if isinstance(value, Sequence):
        return [_canonical(v, depth + 1) for v in value]
    raise TypeError(f"{type(value).__name__} is not in the canonical subset")
