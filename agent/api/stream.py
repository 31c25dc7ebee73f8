"""``GET /api/v1/stream``: new observations as Server-Sent Events, resumable.

Each event is::

    event: observation
    id: <position>
    data: <observation JSON, as GET /api/v1/observations/{id} lists it>

A client that reconnects with ``Last-Event-ID: <position>`` (browsers' EventSource do
it by themselves) gets every matching observation committed after that position,
then the live ones. Without it, the stream starts at "now".

How (docs/operations.md, "The stream"):
- *Catch-up* pages through the ledger in commit order from the position, one write
  per page; *live* events come from a bounded feed of the node's fan-out
  (agent/node/fanout.py) taken before the last catch-up page, and events already sent
  by the catch-up are skipped, so nothing is lost or repeated between the two.
- Live events are shared by every client: each is decorated and JSON-encoded once
  (filters read its fields); what is queued for a client when it wakes goes out in
  one write (at most ``STREAM_BATCH`` events), in commit order.
- A position is the list cursor of an observation (exact), or ``<cursor>.<n>``: the
  n-th row after that cursor in the catch-up's order (the ledger gives exact cursors
  only at page ends). Rows are never deleted and the catch-up counts retracted rows
  too, so ``n`` stays valid for the same filters.
- Memory per client is bounded: its feed holds at most ``stream_queue`` events, one
  write may block at most ``stream_write_timeout`` seconds; a client too slow for
  either is disconnected (it resumes with Last-Event-ID).
- ``entraide_stream_delay_seconds``: per live write, from the commit of its oldest
  event to the end of the write (what the node adds to a replicated or submitted
  observation's way to a client, past its store).
- Comment lines (``: ping``) keep idle connections alive through proxies.
- A stream not filtered by indicator also carries ``event: aid`` (``data.kind``:
  request, offer, withdraw, accept, update, close; live only, no ``id:``), sent by
  a side task (``forward_aid_events``, agent/api/aid.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from aiohttp import web

from agent.api.aid import forward_aid_events
from agent.api.models import MAX_PAGE, StreamQuery
from agent.api.observations import filters_of
from agent.errors import InvalidCursorError
from agent.jsoncodec import dumps_bytes
from agent.node.fanout import ObservationFeed
from agent.storage.queries import decode_cursor
from agent.web.common import API_SETTINGS, NODE, STATE, ApiError, parse_query
from protocol.errors import EntraideError
from protocol.indicators import normalise_indicator
from protocol.matching import indicator_key

__all__ = ["parse_position", "stream"]

log = logging.getLogger(__name__)


class _Disconnect(EntraideError):
    """End this stream (the reason goes to the metrics). Raised and caught inside
    :func:`stream` only: it never reaches the error middleware."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse_position(text: str) -> tuple[str, int]:
    """``(cursor, n)`` of a stream position (``<cursor>`` or ``<cursor>.<n>``).

    Raises:
        ApiError: 400 ``bad_cursor`` for anything this node did not issue.
    """
    base, dot, skip_text = text.strip().partition(".")
    skip = 0
    if dot:
        if not skip_text.isdigit() or not skip_text.isascii() or len(skip_text) > 4:
            raise ApiError(400, "bad_cursor", "invalid stream position (Last-Event-ID)")
        skip = int(skip_text)
        if not 1 <= skip <= MAX_PAGE:
            raise ApiError(400, "bad_cursor", "invalid stream position (Last-Event-ID)")
    try:
        decode_cursor("observation", base)
    except InvalidCursorError as exc:
        raise ApiError(400, "bad_cursor", "invalid stream position (Last-Event-ID)") from exc
    return base, skip


STREAM_BATCH = 256
"""Live events written at most per write (one write carries every event queued for the
client when it wakes, up to this many)."""


class _Stream:
    def __init__(self, request: web.Request, response: web.StreamResponse,
                 filters: dict[str, Any]) -> None:
        self.request = request
        self.response = response
        self.node = request.app[NODE]
        self.settings = request.app[API_SETTINGS]
        self.state = request.app[STATE]
        self.filters = filters
        self.include_retracted = bool(filters["include_retracted"])
        self.unfiltered = all(filters[k] is None for k in _FILTERS)
        self.subscription: ObservationFeed | None = None

    async def write(self, data: str | bytes) -> None:
        """Write ``data`` (text as UTF-8), within ``stream_write_timeout`` seconds.

        Raises:
            _Disconnect: the client did not take it in time.
        """
        if isinstance(data, str):
            data = data.encode("utf-8")
        try:
            async with asyncio.timeout(self.settings.stream_write_timeout):
                await self.response.write(data)
        except TimeoutError as exc:
            raise _Disconnect("write_timeout") from exc

    async def catch_up(self, base: str, skip: int) -> tuple[str, int, set[str]]:
        """Send every matching row after (base, skip), one write per page; return the
        new position and the ids of the last, partial page (which live events may
        repeat)."""
        query = {**self.filters, "include_retracted": True}
        while True:
            if self.state.closing:
                raise _Disconnect("shutdown")
            limit = min(MAX_PAGE, max(self.settings.stream_page, skip))
            page = await self.node.list_observations(**query, cursor=base, limit=limit,
                                                     newest_first=False)
            items = page.items
            parts: list[bytes] = []
            for index in range(skip, len(items)):
                row = items[index]
                if page.next is not None and index == len(items) - 1:
                    position = page.next
                else:
                    position = f"{base}.{index + 1}"
                if row["retracted"] and not self.include_retracted:
                    continue
                parts += (_EVENT, position.encode("ascii"), _DATA, dumps_bytes(row), _END)
            await self._send(parts, len(parts) // 5)
            if page.next is None:
                return base, len(items), {row["id"] for row in items}
            base, skip = page.next, 0

    async def _send(self, parts: list[bytes], events: int) -> None:
        """Write ``parts`` (``events`` events) at once, and count the events."""
        if parts:
            await self.write(b"".join(parts))
            self.state.stream_events.inc(events)

    def matches(self, observation: dict[str, Any]) -> bool:
        f = self.filters
        if f["type"] is not None and observation.get("type") != f["type"]:
            return False
        if f["value"] is not None and indicator_key(
                observation.get("type", ""), observation.get("value", "")) != f["value"]:
            return False
        if f["origin"] is not None and observation.get("origin") != f["origin"].text:
            return False
        if f["tlp"] is not None and observation.get("tlp") != f["tlp"]:
            return False
        ts = observation.get("ts", 0)
        if f["since"] is not None and ts < f["since"]:
            return False
        return f["until"] is None or ts < f["until"]

    async def live(self, feed: ObservationFeed, base: str, recent: set[str]) -> None:
        """Send the feed's events after ``base`` (and not in ``recent``) that match the
        filters: what is queued when the client wakes goes in one write (at most
        STREAM_BATCH events), each event's SSE block encoded once for every client
        (agent/node/fanout.py SharedEvent.frame); ``: ping`` after
        ``stream_heartbeat`` s of silence.

        Raises:
            _Disconnect: the feed ended (slow_client, shutdown), or a write timed out.
        """
        boundary = decode_cursor("observation", base)
        while True:
            events = feed.take(STREAM_BATCH)
            if not events:
                if feed.ended:
                    raise _Disconnect("slow_client" if feed.overflowed else "shutdown")
                if not await feed.wait(self.settings.stream_heartbeat):
                    await self.write(b": ping\n\n")
                continue
            parts: list[bytes] = []
            oldest: float | None = None
            for event in events:
                observation = event.observation
                if event.number <= boundary or observation["id"] in recent:
                    continue
                if not self.unfiltered and not self.matches(observation):
                    continue
                frame = event.frame
                if frame is None:  # the first client to send it encodes it for all
                    frame = event.frame = b"".join(
                        (_EVENT, event.cursor.encode("ascii"), _DATA, event.json(), _END))
                parts.append(frame)
                if oldest is None:
                    oldest = event.committed
            await self._send(parts, len(parts))
            if oldest is not None:
                self.state.stream_delay.observe(time.monotonic() - oldest)


_FILTERS = ("type", "value", "origin", "tlp", "since", "until")
_EVENT = b"event: observation\nid: "
_DATA = b"\ndata: "
_END = b"\n\n"


async def stream(request: web.Request) -> web.StreamResponse:
    """GET /api/v1/stream (see the module docstring)."""
    node = request.app[NODE]
    settings = request.app[API_SETTINGS]
    state = request.app[STATE]
    query = parse_query(request, StreamQuery)
    filters = filters_of(node, query)
    if filters["type"] is not None and filters["value"] is not None:
        filters["value"] = indicator_key(
            filters["type"], normalise_indicator(filters["type"], filters["value"]))
    elif filters["value"] is not None:
        filters["value"] = filters["value"].strip()
    last = request.headers.get("Last-Event-ID") or query.last_event_id
    if last:
        base, skip = parse_position(last)
    else:
        base, skip = await node.ledger.stream_position(), 0
    if state.closing:
        raise ApiError(503, "unavailable", "the node is shutting down")
    if len(state.streams) >= settings.max_streams:
        raise ApiError(503, "too_many_streams",
                       f"at most {settings.max_streams} stream clients at once")
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream; charset=utf-8",
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
    })
    await response.prepare(request)
    client = _Stream(request, response, filters)
    sub: ObservationFeed | None = None
    state.streams.add(client)
    state.streams_open.inc()
    reason = "client_gone"
    aid_task: asyncio.Task[None] | None = None
    try:
        await client.write("retry: 2000\n: entraide stream\n\n")
        base, skip, _ = await client.catch_up(base, skip)
        sub = node.subscribe(settings.stream_queue)
        client.subscription = sub
        if filters["type"] is None and filters["value"] is None:  # event: aid (api/aid.py)
            aid_task = asyncio.create_task(forward_aid_events(node.aid, client.write))
        if state.closing:
            raise _Disconnect("shutdown")
        base, skip, recent = await client.catch_up(base, skip)
        await client.live(sub, base, recent)
    except _Disconnect as exc:
        reason = exc.reason
    except ConnectionError:
        reason = "client_gone"
    except Exception as exc:
        # Headers are sent: the error middleware cannot answer any more; end the stream.
        reason = "error"
        log.exception("stream ended by an error: %s", exc)
    finally:
        if aid_task is not None:
            aid_task.cancel()
        if sub is not None:
            sub.close()
        state.streams.discard(client)
        state.streams_open.dec()
        state.stream_drops.inc(labels=(reason,))
    with contextlib.suppress(ConnectionError, RuntimeError):
        await response.write_eof()
    return response


def stream_shutdown(streams: set[Any]) -> None:
    """End every open stream (app shutdown)."""
    for client in list(streams):
        if client.subscription is not None:
            client.subscription.close()
