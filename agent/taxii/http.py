"""TAXII 2.1 HTTP plumbing: media types, authentication, error bodies, query filters.

Used by the TAXII sub-application (agent/taxii/app.py). TAXII answers differently from
the rest of the local API: its own media type on every response and its own error
body (TAXII 2.1 §3.6.1), HTTP Basic as well as bearer tokens, and 406/415 for media
types it does not speak. Everything here raises :class:`TaxiiError`, which the
sub-application's middleware turns into that error body.

Invariants:
- Every request is authenticated with one of the node's API tokens, by the node's one
  check (:func:`agent.config.tokens.authenticate` with ``basic=True``): ``Bearer
  <token>``, ``Token <token>`` (taxii2-client's TokenAuth) or ``Basic`` with the token
  as password (any user name; the token alone as user name works too). GET needs the
  read scope, POST the write scope; a failure is answered by :func:`auth_error`.
- Filters are parsed strictly: a malformed or repeated parameter is a 400 (§3.4),
  an unknown ``match[...]`` field is ignored (§3.4 allows it).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from agent.errors import AuthError, ScopeError
from agent.i18n import N_, localize, negotiate
from agent.storage.taxii_index import VersionFilter
from protocol.errors import EntraideError, PayloadError
from protocol.stix import format_us, parse_timestamp

__all__ = [
    "DEFAULT_PAGE",
    "MAX_PAGE",
    "MEDIA_STIX",
    "MEDIA_TAXII",
    "Filters",
    "TaxiiError",
    "accepts_taxii",
    "auth_error",
    "check_accept",
    "check_content_type",
    "error_response",
    "next_token",
    "parse_filters",
    "request_lang",
    "taxii_response",
]

MEDIA_TAXII = "application/taxii+json;version=2.1"
MEDIA_STIX = "application/stix+json;version=2.1"
DEFAULT_PAGE = 1000
MAX_PAGE = 5000
_CHALLENGE = 'Basic realm="entraide-taxii", Bearer realm="entraide"'
_NEXT = re.compile(r"n[0-9a-f]{1,15}", re.ASCII)
_MATCH = re.compile(r"match\[([a-z_]{1,32})\]", re.ASCII)
_MAX_MATCH_VALUES = 100


_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
          405: "method_not_allowed", 406: "not_acceptable", 413: "body_too_large",
          415: "unsupported_media_type", 422: "invalid", 500: "internal"}


class TaxiiError(EntraideError):
    """An HTTP error, answered as a TAXII error message (or the API's error body to a
    client that does not accept TAXII; see :func:`error_response`)."""

    def __init__(self, status: int, title: str, description: str,
                 headers: dict[str, str] | None = None, code: str | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.title = title
        self.description = description
        self.headers = headers or {}
        self.code = code or _CODES.get(status, "http_error")


def taxii_response(body: bytes | str | Any, status: int = 200,
                   headers: dict[str, str] | None = None) -> web.Response:
    """A response with the TAXII 2.1 media type; ``body`` is JSON text or a value."""
    if isinstance(body, str):
        data = body.encode("utf-8")
    elif isinstance(body, bytes):
        data = body
    else:
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return web.Response(body=data, status=status,
                        headers={**(headers or {}), "Content-Type": MEDIA_TAXII})


def request_lang(request: web.Request) -> str:
    """The reader's language, from ``Accept-Language`` (English by default), as the
    REST API chooses it (:func:`agent.i18n.negotiate`)."""
    return negotiate(request.headers.get("Accept-Language"))


def error_response(request: web.Request, error: TaxiiError) -> web.Response:
    """The error for ``request``: a TAXII error message (§3.6.1) when its Accept header
    names TAXII, else the local API's ``{"error": {"code", "message"}}`` as JSON (a
    client that did not ask for TAXII gets the answer every other route gives).

    The title and description are in the reader's language (``Accept-Language``,
    English by default), translated where shown by :func:`agent.i18n.localize` as the
    REST API's messages are; ``error_code`` and ``http_status`` never change."""
    lang = request_lang(request)
    headers = {**error.headers, "Content-Language": lang}
    description = localize(error.description, lang)
    if accepts_taxii(request):
        return taxii_response({"title": localize(error.title, lang),
                               "description": description,
                               "error_code": error.code, "http_status": str(error.status)},
                              error.status, headers)
    body = json.dumps({"error": {"code": error.code, "message": description}},
                      ensure_ascii=False)
    return web.Response(text=body, status=error.status, headers=headers,
                        content_type="application/json")


# The titles of TAXII error messages (HTTP reason phrases), for the catalog.
TITLES = (N_("Bad Request"), N_("Unauthorized"), N_("Forbidden"), N_("Not Found"),
          N_("Method Not Allowed"), N_("Not Acceptable"), N_("Request Entity Too Large"),
          N_("Unsupported Media Type"), N_("Unprocessable Entity"),
          N_("Internal Server Error"), N_("Insufficient Storage"))


# --- media types ------------------------------------------------------------------------


def _media_types(header: str) -> list[tuple[str, dict[str, str]]]:
    out = []
    for item in header.split(","):
        kind, *params = [p.strip() for p in item.split(";")]
        values = {}
        for param in params:
            name, _, value = param.partition("=")
            values[name.strip().lower()] = value.strip().strip('"')
        out.append((kind.lower(), values))
    return out


def _is_taxii21(kind: str, params: dict[str, str]) -> bool:
    return kind == "application/taxii+json" and params.get("version", "2.1") == "2.1"


def accepts_taxii(request: web.Request) -> bool:
    """True when the Accept header names TAXII 2.1 (with or without the version)."""
    return any(_is_taxii21(k, p) for k, p in _media_types(request.headers.get("Accept", "")))


def check_accept(request: web.Request) -> None:
    """406 unless the Accept header names TAXII 2.1 (with or without the version)."""
    header = request.headers.get("Accept", "")
    if not accepts_taxii(request):
        raise TaxiiError(406, "Not Acceptable",
                         N_("this server answers {media} only; the Accept header was "
                            "{header}").format(media=MEDIA_TAXII, header=repr(header[:100])))


def check_content_type(request: web.Request) -> None:
    """415 unless the body is declared as TAXII 2.1."""
    header = request.headers.get("Content-Type", "")
    media = _media_types(header)
    if len(media) != 1 or not _is_taxii21(*media[0]):
        raise TaxiiError(415, "Unsupported Media Type",
                         N_("post a TAXII envelope as {media}; the Content-Type was "
                            "{header}").format(media=MEDIA_TAXII, header=repr(header[:100])))


# --- authentication ---------------------------------------------------------------------


def auth_error(exc: AuthError) -> TaxiiError:
    """TAXII's answer to a failed :func:`agent.config.tokens.authenticate` (the node's one
    authentication, called with ``basic=True`` for TAXII's schemes): 401 with a
    WWW-Authenticate challenge naming Basic and Bearer, or 403 for a
    :class:`~agent.errors.ScopeError`; the message is the check's own."""
    if isinstance(exc, ScopeError):
        return TaxiiError(403, "Forbidden", str(exc), code="insufficient_scope")
    return TaxiiError(401, "Unauthorized", str(exc), {"WWW-Authenticate": _CHALLENGE})


# --- filters ----------------------------------------------------------------------------


_LAST = VersionFilter()


@dataclass(frozen=True)
class Filters:
    """The URL parameters of a TAXII GET (§3.4)."""

    limit: int = DEFAULT_PAGE
    after_row: int = 0
    added_after_us: int | None = None
    ids: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    versions: VersionFilter = _LAST
    spec_versions: tuple[str, ...] = ()


def _bad(message: str) -> TaxiiError:
    return TaxiiError(400, "Bad Request", message)


def next_token(row: int) -> str:
    """The opaque ``next`` value after ``row`` (a keyset position)."""
    return f"n{row:x}"


def parse_filters(request: web.Request, allowed: frozenset[str]) -> Filters:
    """The filters of a request; ``allowed`` names the ``match[...]`` fields this endpoint
    takes (others are ignored, as §3.4 permits).

    Raises:
        TaxiiError: 400 for a malformed or repeated parameter.
    """
    seen: set[str] = set()
    values: dict[str, Any] = {}
    for name, value in request.query.items():
        if name in seen:
            raise _bad(N_("the parameter {name} is given more than once").format(
                name=repr(name)))
        seen.add(name)
        if name == "limit":
            if not re.fullmatch(r"[0-9]{1,9}", value) or int(value) < 1:
                raise _bad(N_("limit must be a positive integer"))
            values["limit"] = min(int(value), MAX_PAGE)
        elif name == "next":
            if not _NEXT.fullmatch(value):
                raise _bad(N_("next is not a value this server gave"))
            values["after_row"] = int(value[1:], 16)
        elif name == "added_after":
            try:
                values["added_after_us"] = parse_timestamp(value, "added_after")
            except PayloadError as exc:
                raise _bad(str(exc)) from None
        elif (match := _MATCH.fullmatch(name)) is not None and match.group(1) in allowed:
            field = match.group(1)
            items = value.split(",")
            if not value or len(items) > _MAX_MATCH_VALUES or not all(items):
                raise _bad(N_("{name} needs 1 to {n} comma-separated values").format(
                    name=name, n=_MAX_MATCH_VALUES))
            if len(set(items)) != len(items):
                raise _bad(N_("{name} repeats a value").format(name=name))
            if field == "version":
                values["versions"] = _versions(items)
            else:
                values[{"id": "ids", "type": "types", "spec_version": "spec_versions"}[field]] \
                    = tuple(items)
    return Filters(**values)


def _versions(items: list[str]) -> VersionFilter:
    keywords = {i for i in items if i in ("first", "last", "all")}
    if "all" in keywords and len(items) > 1:
        raise _bad(N_("match[version]=all cannot be combined with other versions"))
    exact = []
    for item in items:
        if item not in keywords:
            try:
                exact.append(parse_timestamp(item, "match[version]"))
            except PayloadError as exc:
                raise _bad(N_("{error}, or one of first, last, all").format(error=exc)) from None
    return VersionFilter(last="last" in keywords, first="first" in keywords,
                         all="all" in keywords, exact=tuple(exact))


def date_headers(first_us: int, last_us: int) -> dict[str, str]:
    """The X-TAXII-Date-Added-First/Last headers (§3.2), microsecond precision."""
    return {"X-TAXII-Date-Added-First": format_us(first_us, taxii=True),
            "X-TAXII-Date-Added-Last": format_us(last_us, taxii=True)}
