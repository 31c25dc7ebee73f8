"""The group committer: this node's own entries, signed and durably committed in rounds.

Storage stores, the node authors: the committer has its :class:`~agent.node.author.Author`
sign each round after the head it expects, and the ledger's ``store_own`` store it.
Concurrent submissions that arrive while a commit is in flight are signed and committed
together in the next single transaction (one fsync); each caller gets its own entries
back, in order, and only after that durable commit. The next round is signed while the
previous one commits (see :class:`GroupCommitter`).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.errors import NodeStoppingError
from agent.metrics import Registry
from agent.node.author import Author, Built
from agent.storage.ledger import MAX_APPEND_BATCH, Head, Ledger, OwnDraft
from protocol.entries import VerifiedEntry
from protocol.errors import OversizeError

__all__ = ["MAX_QUEUED_ENTRIES", "CommitMetrics", "GroupCommitter"]

MAX_QUEUED_ENTRIES = 4 * MAX_APPEND_BATCH
"""Entries queued for the committer before submitters wait for room."""


class CommitMetrics:
    """What the group committer did: own entries committed, and entries and
    submissions per durable commit (how much grouping there was)."""

    def __init__(self, registry: Registry) -> None:
        self._entries = registry.counter(
            "entraide_local_entries_total", "Own entries committed (signed by this node).")
        self._sizes = registry.histogram(
            "entraide_commit_entries", "Own entries per durable commit (group commit size).",
            buckets=(1, 2, 5, 10, 50, 100, 500, 1000, 5000, 10000))
        self._submitters = registry.histogram(
            "entraide_commit_submissions", "Submissions coalesced into one durable commit.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128))

    def committed(self, entries: int, submissions: int) -> None:
        self._entries.inc(entries)
        self._sizes.observe(entries)
        self._submitters.observe(submissions)


@dataclass
class _Pending:
    drafts: list[OwnDraft]
    future: asyncio.Future[list[VerifiedEntry]] = field(repr=False)


_Signed = list[tuple[_Pending, Built]]


class GroupCommitter:
    """Coalesces concurrent submissions into one ledger transaction each round, and
    signs the next round while the previous one commits.

    There is no timer: while one commit is in flight, new submissions queue up, and
    the next round takes all of them (up to ``MAX_APPEND_BATCH`` entries). Under load
    the batch grows by itself; alone, a submission is committed at once.

    Pipelining: round N+1 is signed (on the loop's thread) while round N's transaction
    and fsync run in the ledger's writer thread, chained after round N's last entry.
    Round N+1 is stored only after round N committed, and its submitters hear back
    only after its own commit: nothing is acknowledged before it is durable. If round
    N's commit fails, round N+1's entries (signed after entries that were never
    stored, and never shown to anyone) are dropped and signed again after the stored
    head, so the log has neither a gap nor two entries at one seq.

    Args:
        ledger: where each round is stored (``store_own``).
        author: signs each round (this node's key; entries are this node's origin).
        on_commit: called after each durable commit with its entries and the number
            of submissions it answered (metrics, replication).
        max_queued: entries queued before submitters wait for room.
        gate: called on every submission before anything is queued; raises to refuse it
            (a restored node that has not caught up its own chain: agent/node/restore.py).
    """

    def __init__(self, ledger: Ledger, author: Author,
                 on_commit: Callable[[list[VerifiedEntry], int], None],
                 max_queued: int = MAX_QUEUED_ENTRIES,
                 gate: Callable[[], None] | None = None) -> None:
        self._ledger = ledger
        self._gate = gate
        self._author = author
        self._me = author.public_key
        self._on_commit = on_commit
        self._max_queued = max_queued
        self._queue: deque[_Pending] = deque()
        self._queued = 0
        self._wakeup = asyncio.Event()
        self._space = asyncio.Condition()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="entraide-group-commit")

    async def submit(self, drafts: list[OwnDraft]) -> list[VerifiedEntry]:
        """Sign and durably store ``drafts`` as this node's next entries, in order.

        Returns them once the transaction holding them committed; a caller that is
        cancelled meanwhile does not abort the commit it shares with others.

        Raises:
            OversizeError: more than ``MAX_APPEND_BATCH`` drafts, or an entry over its cap.
            PayloadError, EncodingError: a draft that cannot be signed (see
                :meth:`Author.sign <agent.node.author.Author.sign>`).
            ChainError, StorageError: the round could not be stored (nothing of it is).
            NodeStoppingError: the committer is closing.
            RestoringError: the gate refused (nothing queued).
        """
        if self._gate is not None:
            self._gate()
        if len(drafts) > MAX_APPEND_BATCH:
            raise OversizeError(f"at most {MAX_APPEND_BATCH} entries per submission")
        if not drafts:
            return []
        async with self._space:
            await self._space.wait_for(
                lambda: self._closing or self._queued + len(drafts) <= self._max_queued
                or self._queued == 0)
        if self._closing:
            raise NodeStoppingError("the node is shutting down")
        future: asyncio.Future[list[VerifiedEntry]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(drafts, future))
        self._queued += len(drafts)
        self._wakeup.set()
        # Shielded: a caller that goes away does not abort a commit others share.
        return await asyncio.shield(future)

    async def close(self) -> None:
        """Refuse new submissions, commit every queued one, then end the task."""
        self._closing = True
        self._wakeup.set()
        async with self._space:
            self._space.notify_all()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        storing: tuple[list[_Pending], asyncio.Future[list[VerifiedEntry]]] | None = None
        head: Head | None = None  # what the next round is signed after
        while True:
            if not self._queue:
                self._wakeup.clear()
                if self._queue:
                    continue
                if storing is None:
                    if self._closing:
                        return
                    await self._wakeup.wait()
                    continue
                # Wait for new submissions (to sign meanwhile) or the commit, whichever
                # comes first.
                woken = asyncio.ensure_future(self._wakeup.wait())
                await asyncio.wait((woken, storing[1]), return_when=asyncio.FIRST_COMPLETED)
                woken.cancel()
                if storing[1].done():
                    await self._settle_stored(*storing)
                    storing = None
                continue
            group = await self._take()
            if storing is None:
                head = self._ledger.head(self._me)
            signed = await self._sign(group, head)
            if storing is not None:
                stored = await self._settle_stored(*storing)
                storing = None
                if not stored and signed:
                    # Signed after entries that were not stored: sign again after the
                    # stored head (the dropped signatures were never seen by anyone).
                    signed = await self._sign([p for p, _ in signed],
                                              self._ledger.head(self._me))
            if signed:
                built = [item for _, part in signed for item in part]
                last = built[-1][0]
                head = (last.seq, last.hash)
                storing = ([p for p, _ in signed],
                           asyncio.ensure_future(self._ledger.store_own(built)))

    async def _take(self) -> list[_Pending]:
        group: list[_Pending] = []
        count = 0
        while self._queue and (not group or count + len(self._queue[0].drafts)
                               <= MAX_APPEND_BATCH):
            pending = self._queue.popleft()
            group.append(pending)
            count += len(pending.drafts)
        self._queued -= count
        async with self._space:
            self._space.notify_all()
        return group

    async def _sign(self, group: list[_Pending], head: Head | None) -> _Signed:
        """The group's entries signed after ``head``, by submission; a submission that
        cannot be signed gets its error and is left out (one bad submission must not
        fail the others it was grouped with)."""
        drafts = [d for p in group for d in p.drafts]
        try:
            built = await self._author.sign(drafts, head)
        except Exception as exc:
            if len(group) == 1:
                _settle(group[0].future, exc)
                return []
            out: _Signed = []
            for pending in group:
                try:
                    part = await self._author.sign(pending.drafts, head)
                except Exception as one:
                    _settle(pending.future, one)
                    continue
                out.append((pending, part))
                head = (part[-1][0].seq, part[-1][0].hash)
            return out
        out = []
        at = 0
        for pending in group:
            n = len(pending.drafts)
            out.append((pending, built[at:at + n]))
            at += n
        return out

    async def _settle_stored(self, group: list[_Pending],
                             storing: asyncio.Future[list[VerifiedEntry]]) -> bool:
        """Answer a round's submitters once its commit ended; True if it was stored."""
        try:
            entries = await storing
        except Exception as exc:
            for pending in group:
                _settle(pending.future, exc)
            return False
        self._on_commit(entries, len(group))
        at = 0
        for pending in group:
            n = len(pending.drafts)
            _settle(pending.future, entries[at:at + n])
            at += n
        return True


def _settle(future: asyncio.Future[list[VerifiedEntry]],
            outcome: list[VerifiedEntry] | BaseException) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
        # The caller may have gone away; do not log "exception never retrieved".
        future.add_done_callback(lambda f: f.exception())
    else:
        future.set_result(outcome)
