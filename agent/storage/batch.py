"""One write transaction of the ledger: the rows it adds and the state it leaves.

The ledger builds a :class:`Batch` under its write lock, writes it with
:meth:`Batch.write` inside one transaction (the whole transaction is one call on the
database's thread), and installs the batch's origin states and
row counters in memory only once the commit succeeded. Row numbers (``entry_no``,
``obs_no`` ...) are assigned here, from the committed counters, so ``executemany``
can insert whole batches and the observation cursor of an event is known before the
commit; there is one writer per ledger (a lock file keeps other processes out), so
no one else takes numbers.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field, replace
from typing import Any

from agent.storage.observation_rows import stored_times
from agent.storage.queries import IndexRecord
from agent.storage.types import Head
from protocol.entries import ForkProof, VerifiedEntry
from protocol.keys import PublicKey

__all__ = ["COUNTERS", "Batch", "OriginState"]

COUNTERS = (("entry", "entries", "entry_no"), ("origin", "origins", "origin_id"),
            ("observation", "observations", "obs_no"), ("sighting", "sightings", "sighting_no"),
            ("item", "items", "item_no"))
"""(counter name, table, column): each counter is the column's next value."""


@dataclass
class OriginState:
    """An origin's row: its local id, head and quarantine flag."""

    origin_id: int
    key: PublicKey
    head_seq: int = 0
    head_hash: bytes | None = None
    forked: bool = False

    @property
    def head(self) -> Head | None:
        return None if self.head_hash is None else (self.head_seq, self.head_hash)


@dataclass
class Batch:
    """Rows of one write transaction, and the state to install once it committed.

    Args:
        counters: the committed next row numbers (read, never changed here).
        current: the committed origin states (read, never changed here).
    """

    counters: dict[str, int]
    current: dict[bytes, OriginState]
    origins: dict[bytes, OriginState] = field(default_factory=dict)
    # (entry_no, origin_id, seq, hash, readable, header, body, body_state)
    entries: list[tuple[int, int, int, bytes, int, bytes, bytes | None, str]] = field(
        default_factory=list)
    observations: list[tuple[Any, ...]] = field(default_factory=list)
    sightings: list[tuple[Any, ...]] = field(default_factory=list)
    items: list[tuple[Any, ...]] = field(default_factory=list)
    expiries: list[tuple[int, int]] = field(default_factory=list)  # (entry_no, expires_ms)
    retractions: list[tuple[int, int, bytes, str]] = field(default_factory=list)
    forks: list[tuple[int, int, bytes, int]] = field(default_factory=list)
    cleared: list[tuple[int, int]] = field(default_factory=list)
    events: list[tuple[int, VerifiedEntry, IndexRecord]] = field(default_factory=list)
    new_entries: list[VerifiedEntry] = field(default_factory=list)
    next_no: dict[str, int] = field(default_factory=dict)

    def take(self, name: str) -> int:
        """The next row number of counter ``name``."""
        number = self.next_no.get(name, self.counters[name])
        self.next_no[name] = number + 1
        return number

    def origin(self, key: PublicKey) -> OriginState:
        """This batch's working copy of an origin's state (a new origin gets an id)."""
        state = self.origins.get(key.raw)
        if state is None:
            committed = self.current.get(key.raw)
            state = (OriginState(self.take("origin"), key) if committed is None
                     else replace(committed))
            self.origins[key.raw] = state
        return state

    def add_entry(self, state: OriginState, entry: VerifiedEntry,
                  record: IndexRecord | None) -> None:
        """Append ``entry`` as the origin's new head, with its query rows if readable.

        The caller has checked the chain (``check_successor``).
        """
        entry_no = self.take("entry")
        self.entries.append((entry_no, state.origin_id, entry.seq, entry.hash,
                             int(record is not None), entry.header, entry.body,
                             "present" if entry.body is not None else "absent"))
        self.new_entries.append(entry)
        if entry.expires_ms and entry.body is not None:
            self.expiries.append((entry_no, entry.expires_ms))
        state.head_seq, state.head_hash = entry.seq, entry.hash
        if record is None:
            return
        common = (entry_no, state.origin_id, entry.ts, entry.tlp.value)
        if record.kind == "observation":
            obs_no = self.take("observation")
            # A plaintext body is the answer itself (agent/storage/observation_rows.py).
            self.observations.append((obs_no, *common, record.type, record.value,
                                      *stored_times(entry.ts, record.first_seen,
                                                    record.last_seen),
                                      record.doc if entry.tlp.encrypted else None))
            self.events.append((obs_no, entry, record))
        elif record.kind == "sighting":
            self.sightings.append((self.take("sighting"), *common, record.target, record.doc))
        elif record.kind == "retraction":
            assert record.target is not None
            self.retractions.append((entry_no, state.origin_id, record.target, record.doc))
        else:
            self.items.append((self.take("item"), entry_no, record.kind, state.origin_id,
                               entry.ts, entry.tlp.value, record.doc))

    def add_fork(self, state: OriginState, proof: ForkProof, now_ms: int) -> None:
        """Store ``proof`` and quarantine its origin."""
        state.forked = True
        self.forks.append((state.origin_id, proof.seq, proof.encode(), now_ms))

    def settle(self) -> None:
        """Keep only the origins whose state this batch changes (new origins only when
        they get an entry or a fork, so a batch of duplicates writes nothing)."""
        self.origins = {k: o for k, o in self.origins.items()
                        if self.current.get(k) != o
                        and (o.head_seq or o.forked or k in self.current)}

    def empty(self) -> bool:
        return not (self.origins or self.entries or self.forks or self.cleared)

    def write(self, db: sqlite3.Connection) -> None:
        """Insert the batch's rows; the caller holds the transaction.

        Runs on the database's own thread (``LedgerCore._write``), every statement
        in one call, so a transaction of 2,048 entries is one hop from the event loop
        to that thread and back, not one per statement.
        """
        if self.origins:
            db.executemany(
                "INSERT INTO origins (origin_id, key, head_seq, head_hash, forked) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (origin_id) DO UPDATE SET "
                "head_seq = excluded.head_seq, head_hash = excluded.head_hash, "
                "forked = excluded.forked",
                [(o.origin_id, o.key.raw, o.head_seq, o.head_hash, int(o.forked))
                 for o in self.origins.values()])
        if self.entries:
            db.executemany(
                "INSERT INTO entries (entry_no, origin_id, seq, hash, readable, header, body, "
                "body_state) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", self.entries)
        if self.observations:
            db.executemany(
                "INSERT INTO observations (obs_no, entry_no, origin_id, ts, tlp, type, value, "
                "first_seen, last_seen, doc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                self.observations)
        if self.sightings:
            db.executemany(
                "INSERT INTO sightings (sighting_no, entry_no, origin_id, ts, tlp, target, doc) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)", self.sightings)
        if self.items:
            db.executemany(
                "INSERT INTO items (item_no, entry_no, kind, origin_id, ts, tlp, doc) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)", self.items)
        if self.expiries:
            db.executemany("INSERT INTO expiries (entry_no, expires_ms) VALUES (?, ?)",
                           self.expiries)
        for entry_no, origin_id, target, doc in self.retractions:
            # Void unless it names an entry of its own origin (design: retraction). The
            # target is always stored already: its hash was needed to write the retraction.
            found = db.execute(
                "SELECT entry_no FROM entries WHERE hash = ? AND origin_id = ?",
                (target, origin_id)).fetchall()
            if found:
                for table in ("observations", "sightings", "items"):
                    db.execute(f"UPDATE {table} SET retracted = 1 WHERE entry_no = ?",
                               (found[0][0],))
            db.execute(
                "INSERT INTO retractions (entry_no, origin_id, target, applied, doc) "
                "VALUES (?, ?, ?, ?, ?)", (entry_no, origin_id, target, int(bool(found)), doc))
        if self.forks:
            db.executemany(
                "INSERT INTO forks (origin_id, seq, proof, detected_ms) VALUES (?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING", self.forks)
        if self.cleared:
            db.executemany(
                "UPDATE forks SET cleared_ms = ? WHERE origin_id = ? AND cleared_ms IS NULL",
                self.cleared)
