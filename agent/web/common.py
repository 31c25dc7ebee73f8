"""Shared pieces of the local API: app keys, the HTTP error type, bounded body reading,
query parsing and JSON responses.

Invariants:
- A request body is never read past ``MAX_BODY_BYTES``: a larger declared length is
  refused before reading, and the read itself stops at the cap (aiohttp's
  ``client_max_size`` is set to the same value).
- JSON that does not parse is a 400; JSON that parses but is not the expected shape
  is a 422 (raised by the models).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel

from agent import SERVER
from agent.jsoncodec import JSONDecodeError, dumps_bytes, loads
from agent.metrics import PIPELINE_BUCKETS, Counter, Gauge, Histogram, Registry
from agent.node.node import Node
from protocol.errors import EntraideError

__all__ = [
    "API_SETTINGS",
    "MAX_BODY_BYTES",
    "NODE",
    "STATE",
    "ApiError",
    "ApiSettings",
    "ApiState",
    "json_response",
    "parse_json",
    "parse_query",
    "read_body",
    "read_json",
    "server_header",
]

MAX_BODY_BYTES = 1024 * 1024

M = TypeVar("M", bound=BaseModel)


class ApiError(EntraideError):
    """An HTTP error with the API's error body: ``{"error": {"code", "message"}}``.

    Raised by the API's own request checks (body size, JSON, query); the app's error
    middleware answers it with ``status``, ``headers`` and that body, before any other
    :class:`~protocol.errors.EntraideError` is mapped by its class.
    """

    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


@dataclass(frozen=True)
class ApiSettings:
    """Tuning of the local API (tests shorten the stream's timers).

    Attributes:
        stream_heartbeat: seconds of silence before a ``: ping`` comment.
        stream_queue: events buffered per stream client before it is disconnected;
            above the largest commit (10,000 entries per ingest, 2,048 per replicated
            transaction), so that one commit never cuts off a client that keeps up.
            Events are shared by every client (agent/node/fanout.py): a client's
            queue holds references, 128 KiB at most.
        stream_write_timeout: seconds one write to a stream client may block.
        max_streams: concurrent stream clients.
        stream_page: rows per catch-up query of a resumed stream.
    """

    stream_heartbeat: float = 15.0
    stream_queue: int = 16_384
    stream_write_timeout: float = 30.0
    max_streams: int = 128
    stream_page: int = 500


@dataclass
class ApiState:
    """Per-app mutable state: metrics and the open streams."""

    requests: Counter
    latency: Histogram
    streams_open: Gauge
    stream_events: Counter
    stream_drops: Counter
    stream_delay: Histogram
    streams: set[Any] = field(default_factory=set)
    closing: bool = False

    @classmethod
    def create(cls, registry: Registry) -> ApiState:
        return cls(
            requests=registry.counter(
                "entraide_http_requests_total", "Local API requests, by route and status.",
                ("method", "route", "status")),
            latency=registry.histogram(
                "entraide_http_request_duration_seconds",
                "Local API request latency (the stream is left out).", ("method", "route")),
            streams_open=registry.gauge("entraide_stream_clients", "Open stream clients."),
            stream_events=registry.counter(
                "entraide_stream_events_total", "Observations sent to stream clients."),
            stream_drops=registry.counter(
                "entraide_stream_disconnects_total",
                "Stream clients disconnected by the node, by reason.", ("reason",)),
            stream_delay=registry.histogram(
                "entraide_stream_delay_seconds",
                "Per live stream write: from the commit of its oldest observation to the "
                "end of the write.", buckets=PIPELINE_BUCKETS),
        )


NODE = web.AppKey("node", Node)
STATE = web.AppKey("api_state", ApiState)
API_SETTINGS = web.AppKey("api_settings", ApiSettings)


async def server_header(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: the node's own Server header (:data:`agent.SERVER`) on every
    answer, the one the read-lane readers send too, instead of aiohttp's, which names
    the Python and aiohttp versions."""
    response.headers["Server"] = SERVER


def json_response(value: Any, status: int = 200,
                  headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=dumps_bytes(value), status=status, headers=headers,
                        content_type="application/json", charset="utf-8")


async def read_json(request: web.Request, *, allow_empty: bool = False) -> Any:
    """The request's JSON body, read with a cap.

    Raises:
        ApiError: 413 over ``MAX_BODY_BYTES``; 400 not UTF-8 or not JSON (or empty,
            unless ``allow_empty``, which then returns None).
    """
    return parse_json(await read_body(request), allow_empty=allow_empty)


async def read_body(request: web.Request) -> bytes:
    """The request's body bytes, read with a cap.

    Raises:
        ApiError: 413 over ``MAX_BODY_BYTES``.
    """
    declared = request.content_length
    if declared is not None and declared > MAX_BODY_BYTES:
        raise ApiError(413, "body_too_large", f"the body is over {MAX_BODY_BYTES} bytes")
    data = bytearray()
    while True:
        chunk = await request.content.readany()
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_BODY_BYTES:
            raise ApiError(413, "body_too_large", f"the body is over {MAX_BODY_BYTES} bytes")
    return bytes(data)


def parse_json(data: bytes, *, allow_empty: bool = False) -> Any:
    """A body read by :func:`read_body` as JSON (see :func:`read_json`)."""
    if not data.strip():
        if allow_empty:
            return None
        raise ApiError(400, "bad_json", "the body is empty; a JSON object is expected")
    try:
        return loads(data)
    except JSONDecodeError as exc:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as bad:
            raise ApiError(400, "bad_json", f"the body is not UTF-8: {bad.reason}") from exc
        raise ApiError(400, "bad_json", f"the body is not valid JSON: {exc}") from exc


def parse_query(request: web.Request, model: type[M],
                rename: Callable[[str], str] | None = None) -> M:
    """Validate the query string against ``model`` (a repeated name is refused).

    Raises:
        ApiError: 422 for a repeated parameter.
        pydantic.ValidationError: an unknown parameter or a bad value (422).
    """
    values: dict[str, str] = {}
    for name, value in request.query.items():
        if name in values:
            raise ApiError(422, "invalid", f"query parameter {name!r} is given twice")
        values[rename(name) if rename else name] = value
    return model.model_validate(values)
