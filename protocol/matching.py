"""What indicator values are matched by, and defanged input refanged (docs/protocol.md
§6, "Matching" and "Refang"). Nothing here is on the wire: entries carry the canonical
value of protocol/indicators.py; these keys are what the query tables index and lookups
compare, and refanging is an input option of the API.

Invariants:
- ``indicator_key(t, v)`` is idempotent and, for a URL, ASCII; for every type but
  ``url`` it is the canonical value itself.
- ``containment_keys`` gives exact canonical keys only, its first the value itself, so
  each is one probe of the (type, value) index.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable

from protocol.indicators import IndicatorType

__all__ = ["MAX_CONTAINED_ADDRESSES", "containment_keys", "indicator_key", "refang"]


# --- defanged values ---------------------------------------------------------------

# How reports and feeds "defang" indicators so nobody clicks them: hxxp://, evil[.]com,
# 203.0.113(.)7, evil[dot]com, http[:]//, fxp://, user[@]example.com. Each pattern is
# fixed text (no nested quantifier), so refanging is linear in the value's length.
_DEFANGED_SCHEMES = re.compile(r"^(?:hxxp(s?)|fxp)(?=://)", re.ASCII | re.IGNORECASE)
_DEFANGED = re.compile(r"\[\.\]|\(\.\)|\{\.\}|\[dot\]|\(dot\)|\[://\]|\[:\]//|\[:\]|"
                       r"\[@\]|\[at\]|\(at\)", re.ASCII | re.IGNORECASE)
_REFANGED = {"[.]": ".", "(.)": ".", "{.}": ".", "[dot]": ".", "(dot)": ".", "[://]": "://",
             "[:]//": "://", "[:]": ":", "[@]": "@", "[at]": "@", "(at)": "@"}


def refang(value: str) -> str:
    """``value`` with the usual defanging undone: ``hxxp://`` and ``hxxps://`` (any
    case) as ``http://`` and ``https://``, ``fxp://`` as ``ftp://``; ``[.]``, ``(.)``,
    ``{.}``, ``[dot]``, ``(dot)`` as ``.``; ``[:]//``, ``[://]`` as ``://``, ``[:]`` as
    ``:``; ``[@]``, ``[at]``, ``(at)`` as ``@``. Anything else is left as it is, for
    ``normalise_indicator`` to accept or refuse: refanging never makes a value valid
    that would not be once written plainly. One pass: a value defanged twice
    (``[[.]]``) is refanged once. The caller compares the result with ``value``
    (stripped) to say that it refanged.
    """
    text = value.strip()
    text = _DEFANGED.sub(lambda m: _REFANGED[m.group(0).lower()], text)
    match = _DEFANGED_SCHEMES.match(text)
    if match is not None:
        scheme = "ftp" if match.group(0).lower() == "fxp" else "http" + match.group(1).lower()
        text = scheme + text[match.end():]
    return text


# --- URLs: RFC 3986 normal form -----------------------------------------------------

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_KEPT = _UNRESERVED | frozenset(b":/?#[]@!$&'()*+,;=")  # unreserved and reserved (§2.2)
_HEX = frozenset(b"0123456789ABCDEFabcdef")


def _percent_normal(text: str) -> str:
    """RFC 3986 §6.2.2.1-2: an encoded unreserved octet decoded, every other octet
    encoded in upper-case hex; a character that is neither reserved nor unreserved
    (non-ASCII as UTF-8, RFC 3987 §3.1) encoded; a '%' that starts no octet is '%25'."""
    data = text.encode("utf-8", "surrogatepass")
    out: list[str] = []
    i, n = 0, len(data)
    while i < n:
        byte = data[i]
        if byte == 0x25 and i + 2 < n and data[i + 1] in _HEX and data[i + 2] in _HEX:
            octet = int(data[i + 1 : i + 3], 16)
            out.append(chr(octet) if octet in _UNRESERVED else f"%{octet:02X}")
            i += 3
            continue
        out.append(chr(byte) if byte in _KEPT else f"%{byte:02X}")
        i += 1
    return "".join(out)


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 (``/a/./b/../c`` is ``/a/c``)."""
    output: list[str] = []
    segments = path.split("/")[1:]
    for index, segment in enumerate(segments):
        if segment in (".", ".."):
            if segment == ".." and output:
                output.pop()
            if index == len(segments) - 1:
                output.append("")  # "/a/b/.." is "/a/"
        else:
            output.append(segment)
    return "/" + "/".join(output)


def _url_key(url: str) -> str:
    scheme, _, rest = url.partition("://")
    slash = rest.find("/")
    authority, rest = rest[:slash], rest[slash:]
    rest, hash_mark, fragment = rest.partition("#")
    path, question, query = rest.partition("?")
    userinfo, at, hostport = authority.rpartition("@")
    path = _remove_dot_segments(_percent_normal(path))
    return (f"{scheme}://{_percent_normal(userinfo)}{at}{hostport}{path}"
            f"{question}{_percent_normal(query)}{hash_mark}{_percent_normal(fragment)}")


def indicator_key(type: IndicatorType | str, value: str) -> str:
    """What a canonical indicator value is matched by (lookups, filters, the query
    tables' index): for ``url`` the URL with its userinfo, path, query and fragment in
    RFC 3986 normal form (§6.2.2: percent-encoded unreserved characters decoded, other
    octets in upper-case hex, non-ASCII characters encoded as UTF-8, dot segments
    removed), so ``/%7Euser``, ``/~user`` and ``/a/../~user`` match, and so do a
    Unicode path and its percent-encoded form; for every other type ``value`` itself.

    ``value`` must be canonical (``normalise_indicator``'s result); the key is at most
    nine times as long (every character of a non-ASCII path encoded).
    """
    if type == IndicatorType.URL:
        return _url_key(value)
    return value


MAX_CONTAINED_ADDRESSES = 256
"""The largest block (in addresses: an IPv4 /24, an IPv6 /120) whose addresses and
smaller blocks a lookup of it also finds (:func:`containment_keys`)."""


def containment_keys(type: IndicatorType | str, value: str,
                     lengths: frozenset[int] | None = None) -> tuple[str, ...]:
    """The keys an IP lookup matches, the indicator's own first: for an ``ipv4-addr``
    or ``ipv6-addr`` value (an address or a CIDR block, canonical), every block that
    contains it (``203.0.113.0/24``, ``203.0.112.0/23``, … ``0.0.0.0/0``) and, for a
    block of at most :data:`MAX_CONTAINED_ADDRESSES` addresses, every address and
    smaller block inside it; for every other type, ``(value,)``.

    ``lengths``: the prefix lengths of the CIDR blocks that may be stored (None: any);
    blocks of other lengths are left out, so that a ledger without CIDR blocks pays one
    key per address lookup. Addresses inside a block are always included.

    Exact keys, so that the query tables' (type, value) index answers each with one
    probe: at most 33 (IPv4) or 129 (IPv6) for an address, plus 511 for a /24.
    """
    if type not in (IndicatorType.IPV4_ADDR, IndicatorType.IPV6_ADDR) or (
            lengths is not None and not lengths and "/" not in value):
        # An address where no block is stored matches itself only: the common lookup,
        # answered without parsing the address.
        return (value,)
    return _ip_containment_keys(type, value, lengths)


@functools.lru_cache(maxsize=4096)
def _ip_containment_keys(type: IndicatorType | str, value: str,
                         lengths: frozenset[int] | None) -> tuple[str, ...]:
    address_text, _, prefix_text = value.partition("/")
    v4 = type == IndicatorType.IPV4_ADDR
    address_class: Callable[[int | str], ipaddress.IPv4Address | ipaddress.IPv6Address] = (
        ipaddress.IPv4Address if v4 else ipaddress.IPv6Address)
    bits = 32 if v4 else 128
    prefix = int(prefix_text) if prefix_text else bits
    number = int(address_class(address_text))

    texts: dict[int, str] = {}  # many lengths give one network: format it once

    def key(network: int, length: int) -> str:
        text = texts.get(network)
        if text is None:
            text = texts[network] = str(address_class(network))
        return text if length == bits else f"{text}/{length}"

    keys = [value]
    for length in range(prefix - 1, -1, -1):
        if lengths is None or length in lengths:
            keys.append(key(number & ~((1 << (bits - length)) - 1), length))
    if 1 < (1 << (bits - prefix)) <= MAX_CONTAINED_ADDRESSES:
        for length in range(prefix + 1, bits + 1):
            if lengths is not None and length != bits and length not in lengths:
                continue
            step = 1 << (bits - length)
            keys += [key(network, length)
                     for network in range(number, number + (1 << (bits - prefix)), step)]
    return tuple(keys)
