"""The one HTTP request a read-lane process answers itself: a keep-alive indicator lookup.

A reader (agent/workers/read_lane.py) owns a client's connection and answers its lookups
without the node's main process. It parses only a narrow, exact form of one request:

    GET /api/v1/indicators/{type}/{value} HTTP/1.1   (no query, no body)
    Authorization: Bearer <token>                      (exactly once)

Anything else, or anything it is unsure of, is not an error here: :func:`next_request`
says :data:`HAND_BACK`, and the connection goes back to the node's aiohttp server with
the request's bytes unread. Every other route, every error answer (401, 403, 404, 422)
and every corner of HTTP therefore keeps one implementation; this module only has to
recognise the happy path exactly, and refuse the rest.

What is refused, so that aiohttp decides: another method, target or version; percent
escapes, a query or a fragment; a value outside ``[A-Za-z0-9._:@-]`` (URLs, for one);
a body or its announcement (``Content-Length``, ``Transfer-Encoding``, ``Expect``),
``Upgrade``, ``Connection`` other than ``keep-alive``; a header line that is not
``token: visible-ASCII``; a head over :data:`MAX_HEAD` bytes; a missing, repeated or
non-Bearer ``Authorization``.

Sans-I/O: bytes in, a decision out.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Final

__all__ = ["HAND_BACK", "LOOKUP_ROUTE", "MAX_HEAD", "PREFIX", "HandBack", "Lookup", "next_request",
           "ok_response"]

PREFIX: Final = b"GET /api/v1/indicators/"
LOOKUP_ROUTE: Final = "/api/v1/indicators/{type}/{value}"
"""The route's label in the node's HTTP metrics (aiohttp's canonical form)."""
MAX_HEAD: Final = 8190
"""Bytes of a request head (request line and headers) a reader parses; aiohttp's own
line limit, so a longer head is aiohttp's to refuse."""

_REQUEST_LINE = re.compile(
    rb"GET /api/v1/indicators/([a-z0-9-]{1,64})/([A-Za-z0-9._:@-]{1,4096}) HTTP/1\.1")
_HEADER = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([\x21-\x7e](?:[\x20-\x7e]*"
                     rb"[\x21-\x7e])?)?[ \t]*")
# Headers that announce a body or change the connection: aiohttp's to handle.
_REFUSED = frozenset({b"content-length", b"transfer-encoding", b"expect", b"upgrade"})


class HandBack(enum.Enum):
    """The request is not one a reader answers: the node's server gets the bytes."""

    HAND_BACK = "hand back"


HAND_BACK: Final = HandBack.HAND_BACK


@dataclass(frozen=True, slots=True)
class Lookup:
    """A lookup request as sent (``type`` and ``value`` not yet canonical); ``size``
    is its bytes, head and final CRLF CRLF included (it has no body)."""

    type: str
    value: str
    token: str
    size: int


def next_request(buf: bytes | bytearray) -> Lookup | HandBack | None:
    """The first request in ``buf``: a :class:`Lookup`, :data:`HAND_BACK`, or None when
    more bytes are needed to decide."""
    start = bytes(buf[:len(PREFIX)])
    if not PREFIX.startswith(start):
        return HAND_BACK
    end = buf.find(b"\r\n\r\n", 0, MAX_HEAD + 4)
    if end < 0:
        return None if len(buf) < MAX_HEAD + 4 else HAND_BACK
    lines = bytes(buf[:end]).split(b"\r\n")
    first = _REQUEST_LINE.fullmatch(lines[0])
    if first is None:
        return HAND_BACK
    type, value = first.group(1), first.group(2)
    if value in (b".", b".."):  # a dot segment: the URL parser would remove it
        return HAND_BACK
    authorization: bytes | None = None
    for line in lines[1:]:
        header = _HEADER.fullmatch(line)
        if header is None:
            return HAND_BACK
        name = header.group(1).lower()
        field = header.group(2) or b""
        if name in _REFUSED:
            return HAND_BACK
        if name == b"connection":
            if field.lower() != b"keep-alive":
                return HAND_BACK
        elif name == b"authorization":
            if authorization is not None:
                return HAND_BACK
            authorization = field
    if authorization is None:
        return HAND_BACK
    scheme, _, token = authorization.partition(b" ")
    token = token.strip()
    if scheme.lower() != b"bearer" or not token:
        return HAND_BACK
    return Lookup(type.decode("ascii"), value.decode("ascii"), token.decode("ascii"),
                  end + 4)


def ok_response(body: bytes, date: bytes, server: bytes) -> bytes:
    """A 200 answer with a JSON ``body``, byte for byte as the node's aiohttp server
    writes it (``date`` in IMF-fixdate, ``server`` its Server header)."""
    return b"".join((
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
        b"Content-Length: ", str(len(body)).encode("ascii"), b"\r\nDate: ", date,
        b"\r\nServer: ", server, b"\r\n\r\n", body))
