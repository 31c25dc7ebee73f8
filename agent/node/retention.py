"""The node's expiry sweeper: drops every stored body whose signed expiry has passed.

An entry's ``expires_ms`` was resolved by its origin and signed (docs/protocol.md §3;
protocol/retention.py), so every node drops the same body at the same instant. The
sweeper drops the bodies :func:`agent.storage.retention.due` lists, in batches, with
their derived rows (:meth:`Ledger.drop_bodies`, state EXPIRED) and their TAXII index
rows (a separate file): from then on the body is not served, listed, looked up,
streamed, exported, nor sent in catch-up (headers only).

Invariants:
- Runs on start (a node that was down catches up on what expired meanwhile), then
  wakes at the next expiry or every ``interval`` seconds, whichever comes first; a
  ledger commit (:meth:`Ledger.on_commit`) makes it look at the next expiry again, so
  an entry stored with an earlier expiry, or already expired, is not served past it.
- Its one task is the node's (spawned and awaited on stop); a failed sweep is logged
  and retried at the next wake, never fatal.
- Logs counts and never a value (docs/privacy.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from agent.metrics import Counter, Gauge, Registry
from agent.node.wakeup import wait_event
from agent.storage.ledger import BodyState, Ledger
from agent.storage.retention import MAX_DUE, due, next_expiry
from agent.storage.taxii_index import forget_entries, index_path

__all__ = ["SWEEP_INTERVAL_S", "Sweeper"]

log = logging.getLogger("entraide.retention")

SWEEP_INTERVAL_S = 60.0
"""Longest sleep between two sweeps (a body received already expired waits this long)."""
_MIN_SLEEP_S = 0.05


class Sweeper:
    """Drops expired bodies on a timer.

    Args:
        ledger: the open ledger, as a callable (the node's is set on start).
        ledger_path: where the ledger lives (the TAXII index is beside it).
        clock: seconds since the epoch (the node's injectable clock).
        registry: where ``entraide_bodies_expired_total`` lives.
        interval: longest sleep between sweeps, seconds.
    """

    def __init__(self, ledger: Callable[[], Ledger], ledger_path: Callable[[], Path],
                 clock: Callable[[], float], registry: Registry, *,
                 interval: float = SWEEP_INTERVAL_S) -> None:
        self._ledger = ledger
        self._ledger_path = ledger_path
        self._clock = clock
        self._interval = interval
        self._lock = asyncio.Lock()
        self.expired: Counter = registry.counter(
            "entraide_bodies_expired_total",
            "Entry bodies dropped here because their signed expiry passed")
        self.next_expiry: Gauge = registry.gauge(
            "entraide_retention_next_expiry_seconds",
            "Unix time of the next body to expire here (0: none)")

    async def sweep(self, now_ms: int | None = None) -> int:
        """Drop every body expired at ``now_ms`` (default: the clock); return how many.

        Raises:
            StorageError: the ledger or the TAXII index could not be written (what was
                dropped before stays dropped; the rest is retried at the next sweep).
        """
        now = int(self._clock() * 1000) if now_ms is None else now_ms
        ledger = self._ledger()
        total = 0
        async with self._lock:
            while True:
                ids = await due(ledger, now, MAX_DUE)
                if not ids:
                    break
                dropped = await ledger.drop_bodies(ids, BodyState.EXPIRED)
                if dropped.entries:
                    await asyncio.to_thread(forget_entries, index_path(self._ledger_path()),
                                            dropped.entries)
                total += len(dropped.entries)
                if len(ids) < MAX_DUE:
                    break
            upcoming = await next_expiry(ledger)
        self.next_expiry.set(0 if upcoming is None else upcoming / 1000)
        if total:
            self.expired.inc(total)
            log.info("retention: %d expired bodies dropped", total)
        return total

    async def run(self) -> None:
        """Sweep now, then at each next expiry (at most ``interval`` apart), until
        cancelled. Each ledger commit wakes it to look again at the next expiry: an
        entry just stored may expire before the one it was sleeping for (or may have
        arrived expired), and waiting for the old wake-up would serve it meanwhile."""
        wake = asyncio.Event()
        remove = self._ledger().on_commit(wake.set)
        try:
            while True:
                try:
                    await self.sweep()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("retention sweep failed; retried in %.0f s", self._interval)
                    await asyncio.sleep(self._interval)
                    continue
                await self._sleep_until_due(wake)
        finally:
            remove()

    async def _sleep_until_due(self, wake: asyncio.Event) -> None:
        """Return when the next expiry is due or ``interval`` has passed."""
        deadline = self._clock() + self._interval
        while True:
            wake.clear()
            delay = deadline - self._clock()
            try:
                upcoming = await next_expiry(self._ledger())
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("retention: the next expiry could not be read")
                upcoming = None
            if upcoming is not None:
                delay = min(delay, upcoming / 1000 - self._clock())
            if delay <= _MIN_SLEEP_S:  # due now: at least _MIN_SLEEP_S between sweeps
                await asyncio.sleep(_MIN_SLEEP_S)
                return
            if not await wait_event(wake, delay):
                return
            # Woken by a commit: look at the next expiry again, at most every
            # _MIN_SLEEP_S under a stream of commits (one cheap indexed query).
            await asyncio.sleep(_MIN_SLEEP_S)
