"""The ledger's ingest path: remote entries and fork proofs, stored in chain order.

Entries arrive verified (:class:`~protocol.entries.VerifiedEntry`) from replication or
an import; here they are checked against each origin's head, held ahead of gaps,
recognised as duplicates or forks, and written in one transaction per call.

Invariants:
- Each origin's entries are stored in chain order (``check_successor`` against the
  head), so the stored seqs of an origin are exactly ``1..head_seq`` and each ``prev``
  is the hash of the entry before.
- Remote batches commit with ``synchronous=NORMAL``: they survive a crash of the
  process; a power cut may drop the last ones, which anti-entropy fetches again.
  Batches holding a fork proof, and fork clears, commit with ``synchronous=FULL``.
- Entries ahead of a gap wait in a buffer bounded per origin and in total (entries and
  bytes); what does not fit is dropped and reported, never stored out of order. A
  failed write drops the entries it had taken out of the buffer (they are re-fetched).
- An entry this node cannot read (sealed to others, a payload that does not decode, or
  a header that arrived without its body) is stored as signed and never indexed.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterable, Mapping, Sequence

from agent.errors import StorageError
from agent.storage.batch import Batch, OriginState
from agent.storage.core import LedgerCore
from agent.storage.queries import IndexRecord, build_record
from agent.storage.types import MAX_INGEST_BATCH, ForkRecord, Gap, IngestResult, Refusal
from protocol.entries import (
    ForkProof,
    VerifiedEntry,
    check_successor,
    detect_fork,
    join_entry,
    verify_entry,
)
from protocol.envelope import open_envelope
from protocol.errors import ChainError, EntraideError, OversizeError
from protocol.keys import PublicKey
from protocol.payloads import decode_payload_with_fields

__all__ = ["LedgerIngest"]

_MAX_REPORTED = 64  # refusals and gaps listed in one IngestResult
_SQL_PARAMS = 500  # per IN (...) list, well under SQLite's variable limit


# --- internal state ---------------------------------------------------------------


_UNDECODED = object()  # an IndexRecord slot not computed yet (None means unreadable)


class _Tally:
    def __init__(self) -> None:
        self.duplicates = self.buffered = self.dropped = self.refused = self.unreadable = 0
        self.proofs: list[ForkProof] = []
        self.refusals: list[Refusal] = []
        self.gaps: list[Gap] = []

    def refuse(self, entries: Iterable[VerifiedEntry], reason: str) -> None:
        for entry in entries:
            self.refused += 1
            if len(self.refusals) < _MAX_REPORTED:
                self.refusals.append(Refusal(entry.origin, entry.seq, reason))

    def result(self, batch: Batch | None) -> IngestResult:
        new = tuple(batch.new_entries) if batch else ()
        return IngestResult(len(new), self.duplicates, self.buffered, self.dropped,
                            self.refused, len(self.proofs), self.unreadable, new,
                            tuple(self.proofs), tuple(self.gaps), tuple(self.refusals))


# --- the ingest path --------------------------------------------------------------


class LedgerIngest(LedgerCore):
    """Remote entries and fork proofs into the ledger (the base of
    :class:`~agent.storage.ledger.Ledger`; use that)."""


    def _record_of(self, entry: VerifiedEntry) -> IndexRecord | None:
        """The index record of an entry this node can read; None otherwise (also for a
        header-only entry: there is nothing to read)."""
        if entry.body is None:
            return None
        if entry.tlp.encrypted:
            assert entry.audience is not None
            try:  # blinded audience: opening tells whether this node is in it (§4)
                data = open_envelope(entry.body, entry.audience, self._identity)
            except EntraideError:
                return None  # stored as signed, but a damaged envelope is never indexed
        else:
            data = entry.body
        try:
            payload, dumped = decode_payload_with_fields(data)
            return build_record(payload, entry.ts, dumped)
        except EntraideError:
            return None

    def _records_for(self, entries: list[VerifiedEntry]) -> dict[bytes, IndexRecord | None]:
        return {e.hash: self._record_of(e) for e in entries}

    async def ingest(self, entries: Sequence[VerifiedEntry], *,
                     records: Mapping[bytes, IndexRecord | None] | None = None
                     ) -> IngestResult:
        """Store remote entries: in chain order per origin, idempotently, in one transaction.

        Per origin: entries already stored are duplicates; the next one is checked with
        ``check_successor`` and stored; entries ahead of a gap wait in the bounded buffer
        (the result's ``gaps`` say what to WANT) and are stored when the gap fills. An
        origin that is not trusted (now), or is quarantined after a fork, is refused. Two
        different entries at one (origin, seq) make a fork: the proof is stored, the
        origin is quarantined and its further entries refused until :meth:`clear_fork`.

        ``records``: index records already built from some of these entries' payloads,
        by entry hash (None: the payload does not decode), as the replicator's verify
        worker returns them; the others are decoded here.

        Raises:
            OversizeError: more than ``MAX_INGEST_BATCH`` entries.
            StorageError: the write failed (nothing of the batch is stored), or the
                ledger is closed.
        """
        self._check_open()
        entries = list(entries)
        if len(entries) > MAX_INGEST_BATCH:
            raise OversizeError(f"at most {MAX_INGEST_BATCH} entries per ingest")
        if any(not isinstance(e, VerifiedEntry) for e in entries):
            raise TypeError("ingest takes VerifiedEntry objects only")
        if not entries:
            return IngestResult()
        # Decode payloads outside the write lock, for the entries that look new.
        known = records or {}
        likely_new = [e for e in entries if e.seq > self._cached_head_seq(e.origin)
                      and e.hash not in known]
        if len(likely_new) > 8:
            decoded = await asyncio.to_thread(self._records_for, likely_new)
        else:
            decoded = self._records_for(likely_new)
        if known:
            decoded.update(known)
        return await self._shielded(self._ingest_locked(entries, decoded))

    def _cached_head_seq(self, key: PublicKey) -> int:
        state = self._origins.get(key.raw)
        return 0 if state is None else state.head_seq

    async def _ingest_locked(self, entries: list[VerifiedEntry],
                             records: dict[bytes, IndexRecord | None]) -> IngestResult:
        async with self._write_lock:
            self._check_open()
            groups: dict[bytes, dict[bytes, VerifiedEntry]] = {}
            for entry in entries:
                groups.setdefault(entry.origin.raw, {})[entry.hash] = entry
            batch, tally = self._batch(), _Tally()
            for group in groups.values():
                ordered = sorted(group.values(), key=lambda e: e.seq)
                await self._ingest_origin(ordered, records, batch, tally)
            batch.settle()
            if not batch.empty():
                await self._write(batch, full=bool(batch.forks))
            for group in groups.values():
                key = next(iter(group.values())).origin
                tally.gaps.extend(self._ahead.gaps(key, self._cached_head_seq(key),
                                                   _MAX_REPORTED - len(tally.gaps)))
            return tally.result(batch)

    async def _ingest_origin(self, group: list[VerifiedEntry],
                             records: dict[bytes, IndexRecord | None],
                             batch: Batch, tally: _Tally) -> None:
        key = group[0].origin
        if key != self._me and not self._is_trusted(key):
            tally.refuse(group, "origin is not in the trust list")
            self._ahead.drop(key.raw)
            return
        limit = None if self._trusted_until is None or key == self._me else (
            self._trusted_until(key))
        if limit is not None and group[-1].seq > limit:
            # A retired key past its hand-over, or a compromised key from the seq an
            # admin gave (docs/operations.md, "A key is compromised"): quarantined.
            tally.refuse([e for e in group if e.seq > limit],
                         f"quarantined: this key is trusted up to seq {limit} only")
            group = [e for e in group if e.seq <= limit]
            if not group:
                return
        current = self._origins.get(key.raw)
        if current is not None and current.forked:
            tally.refuse(group, "origin is quarantined after a fork")
            return
        state = batch.origin(key)
        if (group[0].seq == state.head_seq + 1 and group[-1].seq - group[0].seq == len(group) - 1
                and not self._ahead.count(key.raw)):
            # The bulk case (catch-up): the group extends the head with consecutive seqs
            # (so one entry per seq: no duplicate, no fork) and nothing waits ahead.
            # Same verdicts as the loop below: a link that fails is refused, and so is
            # each one after it (they no longer extend the head).
            for entry in group:
                self._extend(batch, state, entry, records.get(entry.hash, _UNDECODED), tally)
            return
        known: dict[int, bytes] = {}
        low = [e.seq for e in group if e.seq <= state.head_seq]
        if low and current is not None:
            known = await self._hashes_at(state.origin_id, low)
        fresh: dict[int, VerifiedEntry] = {}
        for i, entry in enumerate(group):
            if entry.seq <= state.head_seq:
                other = fresh.get(entry.seq)
                other_hash = other.hash if other else known.get(entry.seq)
                if other_hash is None:
                    raise StorageError(f"ledger damaged: {key.text} seq {entry.seq} is missing "
                                       "below the head (run verify)")
                if other_hash == entry.hash:
                    tally.duplicates += 1
                    continue
                if other is None:
                    other = await self._load(state.origin_id, entry.seq)
                if self._fork(batch, state, other, entry, tally):
                    tally.refuse(group[i + 1:], "origin is quarantined after a fork")
                    return
                tally.refuse([entry], "conflicts with a held entry (fork already cleared, or "
                                      "no signed evidence)")
                continue
            waiting = self._ahead.get(key.raw, entry.seq)
            if waiting is not None and waiting.entry.hash != entry.hash:
                if self._fork(batch, state, waiting.entry, entry, tally):
                    tally.refuse(group[i + 1:], "origin is quarantined after a fork")
                    return
                tally.refuse([entry], "conflicts with a held entry (fork already cleared, or "
                                      "no signed evidence)")
                continue
            if entry.seq > state.head_seq + 1:
                if waiting is not None:
                    tally.duplicates += 1
                else:
                    # Held without its decoded payload (decoded again on release), so
                    # the buffer's memory is bounded by the entries' bytes alone.
                    kept, dropped = self._ahead.hold(entry, _UNDECODED)
                    tally.buffered += kept
                    tally.dropped += dropped
                continue
            if waiting is not None:
                self._ahead.pop(key.raw, entry.seq)
            record = records.get(entry.hash, _UNDECODED)
            if not self._extend(batch, state, entry, record, tally):
                continue
            fresh[entry.seq] = entry
            # Release what waited behind the gap that just closed.
            while (nxt := self._ahead.get(key.raw, state.head_seq + 1)) is not None:
                self._ahead.pop(key.raw, nxt.entry.seq)
                if self._extend(batch, state, nxt.entry, nxt.record, tally):
                    fresh[nxt.entry.seq] = nxt.entry

    def _extend(self, batch: Batch, state: OriginState, entry: VerifiedEntry, record: object,
                tally: _Tally) -> bool:
        try:
            check_successor(state.head, entry)
        except ChainError as exc:
            tally.refuse([entry], f"chain: {exc}")
            return False
        if record is _UNDECODED:
            record = self._record_of(entry)
        assert record is None or isinstance(record, IndexRecord)
        if record is None:
            tally.unreadable += 1
        batch.add_entry(state, entry, record)
        return True

    def _fork(self, batch: Batch, state: OriginState, a: VerifiedEntry, b: VerifiedEntry,
              tally: _Tally) -> bool:
        """Record a fork; False when an admin already cleared a fork at that seq, or when
        one side's own signature fails (possible for an entry a chain-authenticated run
        brought: protocol/chainrun.py; a proof is never built from an unchecked one)."""
        if (state.key.raw, a.seq) in self._fork_seqs:
            return False
        if not (_own_signature_ok(a) and _own_signature_ok(b)):
            return False
        proof = detect_fork(a, b)
        assert proof is not None
        batch.add_fork(state, proof, self._now_ms())
        tally.proofs.append(proof)
        self._ahead.drop(state.key.raw)
        return True

    async def _hashes_at(self, origin_id: int, seqs: list[int]) -> dict[int, bytes]:
        assert self._db is not None
        found: dict[int, bytes] = {}
        try:
            for i in range(0, len(seqs), _SQL_PARAMS):
                part = seqs[i:i + _SQL_PARAMS]
                rows = await self._db.execute_fetchall(
                    f"SELECT seq, hash FROM entries WHERE origin_id = ? "
                    f"AND seq IN ({','.join('?' * len(part))})", (origin_id, *part))
                found.update((r[0], r[1]) for r in rows)
        except sqlite3.Error as exc:
            raise StorageError(f"ledger read failed: {exc}") from exc
        return found

    async def _load(self, origin_id: int, seq: int) -> VerifiedEntry:
        assert self._db is not None
        try:
            rows = list(await self._db.execute_fetchall(
                "SELECT header, body FROM entries WHERE origin_id = ? AND seq = ?",
                (origin_id, seq)))
            return verify_entry(join_entry(rows[0][0], rows[0][1]))
        except (sqlite3.Error, IndexError, EntraideError) as exc:
            raise StorageError(f"ledger damaged at origin #{origin_id} seq {seq} "
                               f"(run verify): {exc}") from exc

    # -- the ahead-of-gap buffer

    def drop_held(self, origin: PublicKey) -> int:
        """Forget the entries of ``origin`` waiting ahead of a gap (e.g. on its removal)."""
        return self._ahead.drop(origin.raw)

    # -- forks

    async def ingest_fork_proof(self, proof: ForkProof) -> bool:
        """Store a fork proof received from gossip and quarantine its origin.

        Returns True when the proof was new (store, quarantine, gossip it on); False
        when the origin is not trusted or that fork is already known.

        Raises:
            StorageError: the write failed or the ledger is closed.
        """
        self._check_open()
        if not isinstance(proof, ForkProof):
            raise TypeError("ingest_fork_proof takes a ForkProof")
        if proof.origin != self._me and not self._is_trusted(proof.origin):
            return False
        return await self._shielded(self._fork_proof_locked(proof))

    async def _fork_proof_locked(self, proof: ForkProof) -> bool:
        async with self._write_lock:
            self._check_open()
            if (proof.origin.raw, proof.seq) in self._fork_seqs:
                return False
            batch = self._batch()
            batch.add_fork(batch.origin(proof.origin), proof, self._now_ms())
            self._ahead.drop(proof.origin.raw)
            await self._write(batch, full=True)
            return True

    async def clear_fork(self, origin: PublicKey) -> bool:
        """Lift an origin's quarantine (admin action); its proofs stay as evidence.

        Returns False when the origin was not quarantined.
        """
        self._check_open()
        return await self._shielded(self._clear_locked(origin))

    async def _clear_locked(self, origin: PublicKey) -> bool:
        async with self._write_lock:
            current = self._origins.get(origin.raw)
            if current is None or not current.forked:
                return False
            batch = self._batch()
            state = batch.origin(origin)
            state.forked = False
            batch.cleared.append((self._now_ms(), state.origin_id))
            await self._write(batch, full=True)
            return True

    async def forks(self) -> list[ForkRecord]:
        """Every stored fork proof, oldest first."""
        rows = await self._fetch(
            "SELECT g.key, f.seq, f.detected_ms, f.cleared_ms, f.proof FROM forks f "
            "JOIN origins g USING (origin_id) ORDER BY f.detected_ms, g.key, f.seq")
        return [ForkRecord(PublicKey(r[0]), r[1], r[2], r[3], r[4]) for r in rows]


def _own_signature_ok(entry: VerifiedEntry) -> bool:
    """The entry's own signature verifies (fork evidence must; see ``_fork``)."""
    try:
        verify_entry(entry.raw)
    except EntraideError:
        return False
    return True
