"""The replicator's ingest pipeline: entries the engine hands over, checked and stored.

Two stages, in the order the engine handed the batches (docs/architecture.md, "From
socket to ledger and back"):

1. *check*: each batch is verified (signatures, encoding) and its clear payloads
   decoded into index records by the :class:`Verifier` (the node's
   :class:`agent.workers.verify.VerifyPool`: a worker process for large batches, a
   thread for small ones); up to ``verify_ahead`` batches are being checked ahead of
   the one being stored;
2. *store*: checked batches go to the ledger, which checks each entry's chain position
   and stores it in one transaction. Batches already checked when the previous
   transaction ends are stored together (up to ``store_max_entries``): a transaction
   costs less per entry the more it holds, and this only happens when the store
   stage is behind. The engine then gets one report per batch, in order.

Invariants:
- No entry reaches the ledger before ``verify_entry`` accepted its bytes; the ledger
  refuses what is out of chain order; only what the ledger stored is reported stored
  (and so relayed by the engine).
- Memory is bounded: entries handed and not yet stored are counted (entries and
  bytes); over either cap, :attr:`room` is cleared and the replicator's readers pause,
  so TCP pushes back on the senders.

Each batch's time in the node is measured by stage (:class:`IngestTimings`, the
``entraide_ingest_seconds`` histogram): *check* from handed over to checked, *wait*
from checked to its transaction's start, *store* the transaction, *total* from handed
over to stored. A replication delay is then read off the node's own metrics, by stage.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from agent.metrics import PIPELINE_BUCKETS, Registry
from agent.workers.verify import Checked
from protocol.entries import ForkProof, VerifiedEntry
from protocol.errors import EntraideError
from protocol.gossip import EntriesReceived

__all__ = ["IngestLimits", "IngestPipeline", "IngestTimings", "Report", "Verifier",
           "split_stored"]

log = logging.getLogger("agent.peering.transport")


@dataclass(frozen=True)
class IngestLimits:
    max_entries: int = 8192
    """Entries handed and not yet stored, before readers pause."""
    max_bytes: int = 32 << 20
    verify_ahead: int = 8
    """Batches being checked ahead of the one being stored."""
    store_max_entries: int = 2048
    """Most entries in one ledger transaction (batches checked meanwhile are merged)."""
    retry_initial: float = 0.05
    retry_max: float = 2.0
    """After a failed transaction (a full disk), the store stage waits this long before
    the next one, doubling from ``retry_initial`` up to ``retry_max``; a success resets
    it. Without it, a node whose disk filled retried as fast as its peers resent."""
    failure_log_interval: float = 30.0
    """At most one log line per this many seconds about failed transactions."""


@dataclass(frozen=True)
class Report:
    """What the ledger did with one engine batch (``GossipEngine.entries_stored``)."""

    batch: int
    stored: tuple[VerifiedEntry, ...]
    duplicates: int
    invalid: tuple[bytes, ...]
    forks: tuple[ForkProof, ...]


class IngestTimings:
    """Where the batches' time goes, by stage (see the module docstring): one histogram,
    ``entraide_ingest_seconds{stage}``, in the node's registry."""

    STAGES = ("check", "wait", "store", "total")

    def __init__(self, registry: Registry) -> None:
        self._seconds = registry.histogram(
            "entraide_ingest_seconds",
            "Time of entries received from peers in the node, per batch and stage: check "
            "(handed over to checked), wait (to its transaction), store (the "
            "transaction), total (handed over to stored).", ("stage",), PIPELINE_BUCKETS)

    def observe(self, stage: str, seconds: float) -> None:
        self._seconds.observe(max(0.0, seconds), (stage,))


@dataclass(eq=False)
class _InCheck:
    """A batch being checked: when it was handed over and when its check ended."""

    event: EntriesReceived
    added: float
    checked: float | None = None
    future: asyncio.Future[Checked] = field(init=False)


class Verifier(Protocol):
    """What checks the entries of one batch (:class:`agent.workers.verify.VerifyPool`).

    ``check`` returns one verdict per raw entry, in order (None: refused), and must not
    raise for a bad entry or a failing helper; an exception is a bug (logged, and the
    batch is reported not stored, so the engine asks for it again).
    """

    async def check(self, raws: Sequence[bytes]) -> Checked: ...


class _IngestingLedger(Protocol):
    async def ingest(self, entries: list[VerifiedEntry], *,
                     records: dict[bytes, Any] | None = ...) -> Any: ...


def split_stored(batches: Sequence[Sequence[bytes]], stored: Sequence[VerifiedEntry]
                 ) -> list[list[VerifiedEntry]]:
    """Cut the entries one transaction stored into one report per batch, in order.

    Each report must continue every origin's chain from where the previous report
    left it (the engine checks that). The entries of an origin are taken in the order
    stored, up to the last one that came in this batch or an earlier one; an entry
    stored from the ledger's ahead-of-gap buffer (in no batch) goes with the report
    that reaches past it, or the last one.
    """
    owner: dict[bytes, int] = {}
    for index, raws in enumerate(batches):
        for raw in raws:
            owner.setdefault(raw, index)
    by_origin: dict[bytes, list[tuple[VerifiedEntry, int]]] = {}
    for entry in stored:
        by_origin.setdefault(entry.origin.raw, []).append(
            (entry, owner.get(entry.raw, len(batches))))
    out: list[list[VerifiedEntry]] = [[] for _ in batches]
    last = len(batches) - 1
    for chain in by_origin.values():
        # The report of each entry: the least owner at or after it in the chain.
        report = last
        cuts: list[int] = []
        for _, own in reversed(chain):
            report = min(report, own)
            cuts.append(report)
        for (entry, _), index in zip(chain, reversed(cuts), strict=True):
            out[index].append(entry)
    return out


class IngestPipeline:
    """Checks and stores what the engine hands over; see the module docstring.

    Args:
        ledger: where entries are stored (``Ledger.ingest``).
        verifier: checks each batch (not closed by the pipeline).
        report: called with each batch's :class:`Report`, in the engine's order.
        limits: the caps.
        timings: where each batch's stage times go (none: not measured).
        clock: seconds, monotonic (the timings' clock).
    """

    def __init__(self, ledger: _IngestingLedger, verifier: Verifier,
                 report: Callable[[Report], None], limits: IngestLimits, *,
                 timings: IngestTimings | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ledger = ledger
        self._verifier = verifier
        self._report = report
        self.limits = limits
        self._timings = timings
        self._clock = clock
        self._pending: deque[tuple[EntriesReceived, float]] = deque()
        self.pending_entries = 0
        self._pending_bytes = 0
        self._wake = asyncio.Event()
        self.room = asyncio.Event()
        self.room.set()
        self._checked: deque[_InCheck] = deque()
        self._checked_wake = asyncio.Event()
        self._checked_room = asyncio.Event()
        self.transactions = 0  # ledger transactions (ingest calls), for diagnostics
        self.failures = 0      # of which failed (nothing stored)
        self._retry_delay = 0.0
        self._failure_logged_at: float | None = None
        self._failures_unlogged = 0
        self._sleep = asyncio.sleep

    def add(self, event: EntriesReceived) -> None:
        """Take a batch from the engine (readers pause once over the caps)."""
        self._pending.append((event, self._clock()))
        self.pending_entries += len(event.raws)
        self._pending_bytes += sum(len(r) for r in event.raws)
        self._update_room()
        self._wake.set()

    def _update_room(self) -> None:
        if (self.pending_entries < self.limits.max_entries
                and self._pending_bytes < self.limits.max_bytes):
            self.room.set()
        else:
            self.room.clear()

    def _done(self, event: EntriesReceived) -> None:
        self.pending_entries -= len(event.raws)
        self._pending_bytes -= sum(len(r) for r in event.raws)
        self._update_room()

    async def check_stage(self) -> None:
        """Start checking each handed batch, in order (runs until cancelled)."""
        while True:
            while not self._pending:
                self._wake.clear()
                await self._wake.wait()
            while len(self._checked) >= self.limits.verify_ahead:
                self._checked_room.clear()
                await self._checked_room.wait()
            event, added = self._pending.popleft()
            item = _InCheck(event, added)
            item.future = asyncio.ensure_future(self._check(item))
            self._checked.append(item)
            self._checked_wake.set()

    async def _check(self, item: _InCheck) -> Checked:
        """Check one batch; its end time is set before its future is done."""
        try:
            return await self._verifier.check(item.event.raws)
        finally:
            item.checked = self._clock()

    async def store_stage(self) -> None:
        """Store checked batches in order, with those already checked behind the first
        (runs until cancelled)."""
        while True:
            while not self._checked:
                self._checked_wake.clear()
                await self._checked_wake.wait()
            await asyncio.wait([self._checked[0].future])
            group = [self._checked.popleft()]
            size = len(group[0].event.raws)
            while (self._checked and self._checked[0].future.done()
                   and size + len(self._checked[0].event.raws)
                   <= self.limits.store_max_entries):
                group.append(self._checked.popleft())
                size += len(group[-1].event.raws)
            self._checked_room.set()
            started = self._clock()
            try:
                await self._store([item.event for item in group],
                                  [_result(item.future) for item in group])
            finally:
                for item in group:
                    self._done(item.event)
                self._observe(group, started)
            if self._retry_delay:
                await self._sleep(self._retry_delay)

    async def _store(self, events: list[EntriesReceived], checked: list[Checked | None]
                     ) -> None:
        verified: list[VerifiedEntry] = []
        records: dict[bytes, Any] = {}
        invalid: list[tuple[bytes, ...]] = []
        for event, result in zip(events, checked, strict=True):
            if result is None:  # not checked: reported as not stored, asked for again
                invalid.append(())
                continue
            verified.extend(e for e in result.entries if e is not None)
            records.update(result.records)
            invalid.append(tuple(raw for raw, e in zip(event.raws, result.entries,
                                                       strict=True) if e is None))
        stored: Sequence[VerifiedEntry] = ()
        duplicates = 0
        forks: tuple[ForkProof, ...] = ()
        if verified:
            try:
                self.transactions += 1
                result = await self._ledger.ingest(verified, records=records)
            except EntraideError as exc:
                # Nothing is stored; the engine rolls the batches back and asks again,
                # after a growing pause, and the log gets one line per interval.
                self._failed(len(verified), exc)
            else:
                self._retry_delay = 0.0
                stored, duplicates, forks = (result.new_entries, result.duplicates,
                                             result.fork_proofs)
                if result.refused and log.isEnabledFor(logging.DEBUG):
                    log.debug("ledger refused %d entries: %s", result.refused,
                              [r.reason for r in result.refusals[:3]])
        for proof in forks:
            log.warning("fork detected for origin %s at seq %d: origin quarantined",
                        proof.origin.text, proof.seq)
        parts = (split_stored([e.raws for e in events], stored) if len(events) > 1
                 else [list(stored)])
        last = len(events) - 1
        for i, (event, part) in enumerate(zip(events, parts, strict=True)):
            self._report(Report(event.batch, tuple(part), duplicates if i == last else 0,
                                invalid[i], forks if i == last else ()))

    def _observe(self, group: list[_InCheck], started: float) -> None:
        if self._timings is None:
            return
        ended = self._clock()
        for item in group:
            checked = started if item.checked is None else min(item.checked, started)
            self._timings.observe("check", checked - item.added)
            self._timings.observe("wait", started - checked)
            self._timings.observe("store", ended - started)
            self._timings.observe("total", ended - item.added)

    def _failed(self, entries: int, exc: EntraideError) -> None:
        self.failures += 1
        self._retry_delay = min(self.limits.retry_max,
                                max(self.limits.retry_initial, 2 * self._retry_delay))
        now = asyncio.get_running_loop().time()
        if (self._failure_logged_at is not None
                and now - self._failure_logged_at < self.limits.failure_log_interval):
            self._failures_unlogged += 1
            return
        more = (f" ({self._failures_unlogged} more failed since the last line)"
                if self._failures_unlogged else "")
        log.error("ledger ingest failed (%d entries): %s; retrying%s", entries, exc, more)
        self._failure_logged_at = now
        self._failures_unlogged = 0

    def cancel_checks(self) -> None:
        """Cancel the checks of batches never stored (the pipeline is stopping)."""
        while self._checked:
            self._checked.popleft().future.cancel()


def _result(future: asyncio.Future[Checked]) -> Checked | None:
    """A check's result; None (logged) if it failed, which is a bug, not a bad peer."""
    if future.cancelled():
        return None
    exc = future.exception()
    if exc is not None:
        log.error("checking a batch failed", exc_info=exc)
        return None
    return future.result()
