"""The one HTTP request a read-lane process answers itself: a keep-alive indicator lookup.

A reader (agent/workers/read_lane.py) owns a client's connection and answers its lookups
without the node's main process. It parses only a narrow, exact form of one request:

    GET /api/v1/indicators/{type}/{value} HTTP/1.1   (no query, no body)
    Host: <host>                                       (exactly once)
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
non-Bearer ``Authorization``; a missing or repeated ``Host``; any ``Origin`` (a browser:
the node's middleware judges it).

The head is parsed by httptools (llhttp, the parser family of aiohttp's own C parser),
strictly (no leniency); this module then only checks what the parser reports against
the narrow form above, and takes the token out of ``Authorization`` with the node's one
header reading (:func:`agent.config.tokens.token_of`). Sans-I/O: bytes in, a decision out.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Final

from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser

from agent.config.tokens import token_of

__all__ = ["HAND_BACK", "LOOKUP_ROUTE", "MAX_HEAD", "PREFIX", "HandBack", "Lookup", "next_request",
           "ok_response"]

PREFIX: Final = b"GET /api/v1/indicators/"
LOOKUP_ROUTE: Final = "/api/v1/indicators/{type}/{value}"
"""The route's label in the node's HTTP metrics (aiohttp's canonical form)."""
MAX_HEAD: Final = 8190
"""Bytes of a request head (request line and headers) a reader parses; aiohttp's own
line limit, so a longer head is aiohttp's to refuse."""

_TARGET = re.compile(rb"/api/v1/indicators/([a-z0-9-]{1,64})/([A-Za-z0-9._:@-]{1,4096})")
# A field value as llhttp hands it over (leading blanks dropped, trailing ones kept):
# visible ASCII and inner spaces only, no tab or obs-text inside.
_FIELD = re.compile(rb"[\x20-\x7e]*[ \t]*")
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
    host: str
    """The ``Host`` header (the reader holds it to agent/config/hosts.py's policy)."""


class _Head:
    """httptools' callbacks for one head: its target, its one Authorization value, and
    whether a header rules the request out."""

    __slots__ = ("authorization", "complete", "host", "refused", "target")

    def __init__(self) -> None:
        self.target = b""
        self.authorization: bytes | None = None
        self.host: bytes | None = None
        self.refused = False
        self.complete = 0

    def on_url(self, url: bytes) -> None:
        self.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name in _REFUSED or _FIELD.fullmatch(value) is None:
            self.refused = True
        elif name == b"connection":
            self.refused |= value.rstrip(b" \t").lower() != b"keep-alive"
        elif name == b"authorization":
            self.refused |= self.authorization is not None
            self.authorization = value
        elif name == b"host":
            self.refused |= self.host is not None
            self.host = value.rstrip(b" \t")
        elif name == b"origin":  # a browser: the node's middleware judges its Origin
            self.refused = True

    def on_body(self, body: bytes) -> None:
        self.refused = True

    def on_message_complete(self) -> None:
        self.complete += 1


def next_request(buf: bytes | bytearray) -> Lookup | HandBack | None:
    """The first request in ``buf``: a :class:`Lookup`, :data:`HAND_BACK`, or None when
    more bytes are needed to decide."""
    start = bytes(buf[:len(PREFIX)])
    if not PREFIX.startswith(start):
        return HAND_BACK
    end = buf.find(b"\r\n\r\n", 0, MAX_HEAD + 4)
    if end < 0:
        return None if len(buf) < MAX_HEAD + 4 else HAND_BACK
    size = end + 4
    data = bytes(buf[:size])
    head = _Head()
    parser = HttpRequestParser(head)
    try:
        parser.feed_data(data)
    except (HttpParserError, HttpParserUpgrade):
        return HAND_BACK
    # One whole message, exactly these bytes; the request line exactly as the node's
    # router would read it (llhttp lets a doubled space through).
    if (head.complete != 1 or head.refused or parser.get_method() != b"GET"
            or parser.get_http_version() != "1.1"
            or not data.startswith(b"GET %s HTTP/1.1\r\n" % head.target)):
        return HAND_BACK
    target = _TARGET.fullmatch(head.target)
    if target is None or head.authorization is None or head.host is None:
        return HAND_BACK
    type, value = target.group(1), target.group(2)
    if value in (b".", b".."):  # a dot segment: the URL parser would remove it
        return HAND_BACK
    token = token_of(head.authorization.decode("ascii"))
    if token is None:
        return HAND_BACK
    return Lookup(type.decode("ascii"), value.decode("ascii"), token, size,
                  head.host.decode("ascii"))


def ok_response(body: bytes, date: bytes, server: bytes) -> bytes:
    """A 200 answer with a JSON ``body``, byte for byte as the node's aiohttp server
    writes it (``date`` in IMF-fixdate, ``server`` its Server header)."""
    return b"".join((
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
        b"Content-Length: ", str(len(body)).encode("ascii"), b"\r\nDate: ", date,
        b"\r\nServer: ", server, b"\r\n\r\n", body))
