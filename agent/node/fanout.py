"""The fan-out of newly stored observations to the node's stream subscribers.

One ledger subscription feeds every subscriber (``Node.subscribe``; the stream,
agent/api/stream.py, is its consumer):

- The ledger's commit puts each new observation once into the fan-out's own
  subscription, whatever the number of subscribers; a *pump* task copies it, as one
  :class:`SharedEvent`, into each subscriber's :class:`ObservationFeed`, outside the
  commit. So the stream's fan-out never runs inside the ingest's store.
- A :class:`SharedEvent` is decorated (``origin_name``) and JSON-encoded at most once,
  lazily, by the first subscriber that sends it; every other subscriber writes the same
  bytes. Filters read its plain fields, never the encoding.
- Every feed is bounded: ``maxsize`` events. One that would overflow stops receiving,
  keeps what it already holds and then ends with ``overflowed`` set (its consumer
  resumes from its last position; the ledger's Subscription behaves the same).
- Events reach every feed in commit order. The pump's subscription holds at most
  ``PUMP_QUEUE`` events; if the pump falls that far behind, every feed overflows.
- Waiting has a backstop that a cancellation always ends (agent/node/wakeup.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from agent.errors import StorageError
from agent.jsoncodec import dumps_bytes
from agent.node.wakeup import wait_event
from agent.storage.ledger import Ledger, ObservationEvent, Subscription
from agent.storage.queries import decode_cursor

__all__ = ["MAX_FEEDS", "PUMP_QUEUE", "ObservationFanout", "ObservationFeed", "SharedEvent"]

log = logging.getLogger(__name__)

MAX_FEEDS = 256
"""Feeds at once (the ledger's own limit of subscribers)."""
PUMP_QUEUE = 65536
"""Events the pump's ledger subscription holds (the ledger's largest queue)."""

Decorate = Callable[[dict[str, Any]], Any]


class SharedEvent:
    """One new observation, shared by every feed: read it, never change it.

    Attributes:
        cursor: its position (an SSE ``id:``, a Last-Event-ID).
        number: the row number inside ``cursor``.
        observation: the ledger's fields (no ``origin_name``); what filters read.
        committed: ``time.monotonic()`` when its commit was installed.
        frame: the consumer's whole encoding of the event (the stream's SSE block),
            set by the first consumer that sends it, reused by the others (None before).
    """

    __slots__ = ("_decorate", "_json", "committed", "cursor", "frame", "number",
                 "observation")

    def __init__(self, event: ObservationEvent, decorate: Decorate) -> None:
        self.cursor = event.cursor
        self.number = decode_cursor("observation", event.cursor)
        self.observation = event.observation
        self.committed = event.committed
        self._decorate = decorate
        self._json: bytes | None = None
        self.frame: bytes | None = None

    def json(self) -> bytes:
        """The observation as the API shows it (decorated), compact UTF-8 JSON; computed
        on the first call, the same bytes afterwards."""
        if self._json is None:
            shown = dict(self.observation)
            self._decorate(shown)
            self._json = dumps_bytes(shown)
        return self._json


class ObservationFeed:
    """One subscriber's bounded queue of :class:`SharedEvent`, in commit order.

    Take what is queued with :meth:`take` (never blocks), wait for more with
    :meth:`wait`. Once :attr:`ended` the feed gets nothing more: ``overflowed`` says
    whether it fell ``maxsize`` events behind (else it was closed).
    """

    def __init__(self, maxsize: int, on_close: Callable[[ObservationFeed], None]) -> None:
        self.maxsize = max(1, maxsize)
        self._queue: deque[SharedEvent] = deque()
        self._wake = asyncio.Event()
        self._on_close = on_close
        self.closed = False
        self.overflowed = False

    @property
    def ended(self) -> bool:
        """Closed and every queued event taken."""
        return self.closed and not self._queue

    def offer(self, events: list[SharedEvent]) -> None:
        """Queue ``events`` (the pump calls this); what does not fit ends the feed."""
        if self.closed or not events:
            return
        room = self.maxsize - len(self._queue)
        if len(events) > room:
            self._queue.extend(events[:room])
            self.overflowed = True
            self.close()
            return
        self._queue.extend(events)
        self._wake.set()

    def take(self, limit: int) -> list[SharedEvent]:
        """Up to ``limit`` queued events, oldest first (possibly none)."""
        queue = self._queue
        if len(queue) <= limit:
            out = list(queue)
            queue.clear()
            return out
        return [queue.popleft() for _ in range(limit)]

    async def wait(self, timeout: float) -> bool:
        """Wait until events are queued or the feed ends: False after ``timeout`` s.

        Raises:
            asyncio.CancelledError: cancelled (always raised, agent/node/wakeup.py).
        """
        if self._queue or self.closed:
            return True
        self._wake.clear()
        return await wait_event(self._wake, timeout)

    def close(self) -> None:
        """Stop receiving; a waiting consumer wakes, takes what is left, then sees
        :attr:`ended`. Idempotent."""
        if self.closed:
            return
        self.closed = True
        self._wake.set()
        self._on_close(self)


class ObservationFanout:
    """Feeds new readable observations to every subscriber (see the module docstring).

    Args:
        ledger: where the observations come from (read when a feed is opened).
        decorate: adds ``origin_name`` (and the like) to an observation dict in place.
    """

    def __init__(self, ledger: Callable[[], Ledger], decorate: Decorate) -> None:
        self._ledger = ledger
        self._decorate = decorate
        self._feeds: set[ObservationFeed] = set()
        self._source: Subscription | None = None
        self._pumps: set[asyncio.Task[None]] = set()
        self._closed = False

    def __len__(self) -> int:
        """Open feeds."""
        return len(self._feeds)

    @property
    def pumping(self) -> bool:
        """Whether the fan-out follows the ledger now (it does while a feed is open)."""
        return self._source is not None

    def subscribe(self, maxsize: int = 16_384) -> ObservationFeed:
        """A new feed of every observation committed from now on (and possibly some
        committed just before: a consumer that caught up from the ledger skips those).
        Close it when done; the last feed closed stops the pump (a later subscribe
        starts a new one).

        Raises:
            StorageError: too many feeds, the fan-out is closed or the ledger is.
        """
        if self._closed:
            raise StorageError("the node is stopping")
        if len(self._feeds) >= MAX_FEEDS:
            raise StorageError(f"at most {MAX_FEEDS} stream subscribers")
        if self._source is None:
            source = self._ledger().subscribe(PUMP_QUEUE)
            self._source = source
            task = asyncio.create_task(self._pump(source), name="entraide-stream-fanout")
            self._pumps.add(task)
            task.add_done_callback(self._pumps.discard)
        feed = ObservationFeed(maxsize, self._forget)
        self._feeds.add(feed)
        return feed

    def _forget(self, feed: ObservationFeed) -> None:
        self._feeds.discard(feed)
        if not self._feeds and self._source is not None:
            self._source.close()  # the pump ends; the ledger stops making events
            self._source = None

    async def _pump(self, source: Subscription) -> None:
        """Copy the events of ``source`` into every feed, one call per feed for all the
        events available at once, until ``source`` ends (no feed left, overflow, the
        ledger or the fan-out closed); then end the feeds it was feeding."""
        loop = asyncio.get_running_loop()
        pending: list[SharedEvent] = []
        flush_due = False

        def flush() -> None:
            nonlocal flush_due, pending
            flush_due = False
            batch, pending = pending, []
            if self._source is source:  # else these feeds are a later pump's
                for feed in list(self._feeds):
                    feed.offer(batch)

        try:
            async for event in source:
                # __anext__ returns at once while events are queued: every event of a
                # commit is gathered before the flush runs (the next loop iteration).
                pending.append(SharedEvent(event, self._decorate))
                if not flush_due:
                    flush_due = True
                    loop.call_soon(flush)
        finally:
            source.close()
            if self._source is source:
                flush()
                self._source = None
                if source.overflowed:
                    log.warning("the stream fan-out fell %d events behind: every stream "
                                "subscriber resumes from its last position", PUMP_QUEUE)
                for feed in list(self._feeds):
                    feed.overflowed = feed.overflowed or source.overflowed
                    feed.close()

    async def close(self) -> None:
        """End every feed and the pump (node shutdown); idempotent."""
        self._closed = True
        if self._source is not None:
            self._source.close()
            self._source = None
        for feed in list(self._feeds):
            feed.close()
        for task in list(self._pumps):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._pumps, return_exceptions=True)
