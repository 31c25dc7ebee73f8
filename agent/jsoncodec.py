"""JSON for the local API and the query tables, through orjson.

The API's answers, the stored documents of the query tables and the request bodies
are JSON; the stdlib codec spent 15-30 us per lookup answer and 2 us per stored
document decoded, a tenth of a lookup's CPU (docs/benchmarks.md). orjson does the same
work in a tenth of the time and is stricter where it differs: it refuses lone
surrogates, NaN and Infinity, numbers that overflow a double, and nesting over 1,024
levels.

Output is compact (no spaces) UTF-8, non-ASCII characters as themselves, like the
stdlib with ``ensure_ascii=False, separators=(",", ":")``. ``protocol/`` keeps the
stdlib codec: it stays portable and its canonical forms do not depend on this one.
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["JSONDecodeError", "dumps", "dumps_bytes", "loads"]

JSONDecodeError = orjson.JSONDecodeError
"""Raised by :func:`loads`; a subclass of ``ValueError``."""

_OPTIONS = orjson.OPT_NON_STR_KEYS


def dumps_bytes(value: Any) -> bytes:
    """``value`` as compact UTF-8 JSON.

    Raises:
        TypeError: a value JSON cannot carry (an unknown type, an integer over 64 bits).
    """
    return orjson.dumps(value, option=_OPTIONS)


def dumps(value: Any) -> str:
    """:func:`dumps_bytes` as text."""
    return orjson.dumps(value, option=_OPTIONS).decode()


def loads(data: bytes | str) -> Any:
    """The value of one JSON text.

    Raises:
        JSONDecodeError: not JSON (see the module's note on strictness), or not UTF-8.
    """
    return orjson.loads(data)
