"""The TAXII index: every STIX object this node serves, in the order it was added.

The ledger's query tables say what this node can read; this module renders each
readable entry as its STIX object (protocol/stix.py) once, in ledger insertion order,
and keeps the result in a derived SQLite file beside the ledger
(``<ledger>.taxii.sqlite3``), with what TAXII filters on: id, type, version and the
date it was added. It reads the ledger's tables through its own read-only connection
(``observations``, ``sightings``, ``retractions``, ``items``, joined to ``entries``
and ``origins``) and never writes them.

Invariants:
- ``row`` follows the ledger's ``entry_no`` (an origin's identity object comes just
  before its first object), and ``added_us`` (date_added, µs) strictly increases with
  ``row``: ``added_us = max(min(entry ts, now), previous + 1)``. So ``added_after`` and
  ``next`` (a row) are both exact keyset positions: an object indexed later always
  sorts after every object a client has already seen, however many arrive at once.
- The index is derived data: it is rebuilt from the ledger when its schema changes or
  the ledger it was built from is not the one beside it (checked by the hash of the
  last entry it indexed).
- ``in_all``/``in_own`` mark the first row of each (id, version) in the collection of
  everything readable / of this node's own entries: an identical version seen again
  (re-posted, or the same object from two origins) is stored but never served twice.
- Each id has one publisher, its owner, and only the owner's rows are served (so an
  id's latest version is its publisher's latest); a row that names another member is
  refused. Refused rows are stored, never served, counted (agent/storage/taxii_owners.py).
- One lock serialises all use of the two connections; every query runs in a worker
  thread, so the event loop never waits on SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from agent.errors import StorageError
from agent.storage.taxii_forget import forget_entries, index_path
from agent.storage.taxii_owners import Owners, Verdict
from agent.storage.taxii_schema import INDEX_SCHEMA, LEDGER_CHUNK, SCHEMA_SQL, Pending
from agent.storage.taxii_types import (
    Collection,
    IndexPage,
    IndexRow,
    KnownObject,
    OriginInfo,
    VersionFilter,
)
from protocol.aid import AidRequest
from protocol.entries import TLP, verify_header
from protocol.errors import EntraideError
from protocol.keys import PublicKey
from protocol.payloads import (
    Alert,
    Observation,
    Payload,
    Playbook,
    Rule,
    Sighting,
    StixObject,
    decode_payload,
)
from protocol.stix import (
    EntryRef,
    entry_stix_id,
    format_ms,
    identity_to_stix,
    parse_timestamp,
    payload_to_stix,
    revoke,
)
from protocol.stix_claims import ClaimKey

__all__ = ["INDEX_SCHEMA", "Collection", "IndexPage", "IndexRow", "KnownObject", "TaxiiIndex",
           "VersionFilter", "forget_entries", "index_path"]

SYNC_CHUNK = 2000
_SQL_PARAMS = 400
_STATUS_KEEP_US = 7 * 24 * 3600 * 1_000_000
_MAX_STATUSES = 100_000
_MAX_KEY_TEXTS = 10_000
T = TypeVar("T")

class TaxiiIndex:
    """The index file of one node. Build with :meth:`open`; close with :meth:`close`.

    Args:
        path: the index file (created 0600).
        ledger_path: the node's ledger, read through a read-only connection.
        own_key: this node's key (its entries form the read-write collection).
        origin_info: names for identity objects.
        clock: seconds since the epoch (date_added is never later than it).
    """

    def __init__(self, path: Path, ledger_path: Path, own_key: PublicKey,
                 origin_info: OriginInfo, clock: Callable[[], float]) -> None:
        self.path = path
        self._ledger_path = ledger_path
        self._own = own_key.text
        self._origin_info = origin_info
        self._clock = clock
        self._db: sqlite3.Connection | None = None
        self._ledger: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()
        self._synced = 0
        self._last_added = 0
        self._identities: set[str] = set()
        self._owners = Owners(self._own)
        self._origins: list[str] = []  # the ledger's, read at each sync
        self._key_texts: dict[bytes, str] = {}
        self.refused_rows: int | None = None
        """What :meth:`refused` counted at the last :meth:`count_refused` (None before
        the first): read at scrape time, never counted then."""
        self._counted_at: tuple[int, int] | None = None

    @classmethod
    async def open(cls, path: Path, ledger_path: Path, own_key: PublicKey,
                   origin_info: OriginInfo, clock: Callable[[], float]) -> TaxiiIndex:
        """Open (creating or rebuilding as needed) the index.

        Raises:
            StorageError: a file cannot be opened.
        """
        index = cls(path, ledger_path, own_key, origin_info, clock)
        await asyncio.to_thread(index._open)
        return index

    def _open(self) -> None:
        try:
            if not self.path.exists():
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
            self._db = sqlite3.connect(self.path, isolation_level=None,
                                       check_same_thread=False)
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.execute("PRAGMA secure_delete = ON")  # erased objects are zeroed
            self._ledger = sqlite3.connect(f"file:{self._ledger_path}?mode=ro", uri=True,
                                           isolation_level=None, check_same_thread=False)
            self._ledger.execute("PRAGMA query_only = ON")
            if not self._current():
                self._rebuild()
            meta = dict(self._db.execute("SELECT key, value FROM meta"))
            self._synced = int(meta["synced"])
            self._last_added = int(meta["last_added"])
            self._identities = {r[0] for r in self._db.execute("SELECT origin FROM identities")}
            self._owners.know(self._identities)
            self._owners.know(r[0] for r in self._db.execute("SELECT origin FROM met"))
        except sqlite3.Error as exc:
            self._close()
            raise StorageError(f"cannot open the TAXII index {self.path}: {exc}") from exc

    def _current(self) -> bool:
        """True when the file is an index of this schema, of this node, built from this
        ledger (the entry it last indexed is still there, with the same hash)."""
        assert self._db is not None and self._ledger is not None
        try:
            meta = dict(self._db.execute("SELECT key, value FROM meta"))
        except sqlite3.Error:
            return False
        if meta.get("schema") != INDEX_SCHEMA or meta.get("node") != self._own:
            return False
        synced = int(meta.get("synced", 0))
        if synced == 0:
            return True
        row = self._ledger.execute("SELECT hash FROM entries WHERE entry_no = ?",
                                   (synced,)).fetchone()
        return row is not None and row[0] == meta.get("synced_hash")

    def _rebuild(self) -> None:
        assert self._db is not None
        db = self._db
        tables = [r[0] for r in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")]
        # executescript commits first, so the script is its own transaction. A crash
        # before the meta rows below leaves no schema row: the next open rebuilds again.
        db.executescript("BEGIN IMMEDIATE;" + "".join(f"DROP TABLE IF EXISTS {t};" for t in tables)
                         + SCHEMA_SQL + "COMMIT;")
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", [
            ("schema", INDEX_SCHEMA), ("node", self._own), ("synced", 0),
            ("synced_hash", None), ("last_added", 0)])
        db.execute("COMMIT")

    async def close(self) -> None:
        async with self._lock:
            await asyncio.to_thread(self._close)

    def _close(self) -> None:
        for conn in (self._db, self._ledger):
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
        self._db = self._ledger = None

    async def _run(self, func: Callable[..., T], *args: Any) -> T:
        async with self._lock:
            if self._db is None:
                raise StorageError("the TAXII index is closed")
            try:
                return await asyncio.to_thread(func, *args)
            except sqlite3.Error as exc:
                raise StorageError(f"TAXII index: {exc}") from exc

    # -- keeping up with the ledger

    async def sync(self, known: Mapping[bytes, KnownObject] | None = None) -> int:
        """Index every readable entry the ledger has committed since the last sync.

        Args:
            known: what the post path knows of some of those entries, by entry hash:
                their payloads (not read back and validated again) and maybe their
                rendered objects. Each must be what that entry carries.

        Returns the number of object rows added.

        Raises:
            StorageError: a database error (the index is left as it was).
        """
        return await self._run(self._sync_all, known or {})

    def _sync_all(self, known: Mapping[bytes, KnownObject]) -> int:
        assert self._ledger is not None
        head = self._ledger.execute("SELECT max(entry_no) FROM entries").fetchone()[0] or 0
        # Every origin the ledger holds, readable or not: a claim in another's name is
        # judged against the same origins on every node.
        self._origins = [self._key_text(bytes(k)) for (k,) in
                         self._ledger.execute("SELECT key FROM origins")]
        self._owners.know(self._origins)
        added = 0
        while self._synced < head:
            chunk = self._ledger.execute(LEDGER_CHUNK, {"after": self._synced,
                                                         "limit": SYNC_CHUNK}).fetchall()
            if not chunk:
                # Only unreadable entries up to the head: nothing to index there.
                last = self._ledger.execute(
                    "SELECT hash FROM entries WHERE entry_no = ?", (head,)).fetchone()
                self._commit([], head, last[0] if last else None)
                break
            pending = self._render(chunk, known)
            last_no = chunk[-1][0] if len(chunk) == SYNC_CHUNK else head
            last = self._ledger.execute(
                "SELECT hash FROM entries WHERE entry_no = ?", (last_no,)).fetchone()
            added += self._commit(pending, last_no, last[0] if last else None)
        return added

    def _render(self, chunk: Sequence[Sequence[Any]],
                known: Mapping[bytes, KnownObject]) -> list[Pending]:
        """The objects of a chunk of ledger rows, with identities first where new."""
        out: list[Pending] = []
        # Objects of this chunk by entry, for sightings and retractions of them (as
        # text when it came rendered: parsed only if one is needed).
        by_entry: dict[bytes, dict[str, Any] | str] = {}
        for entry_no, kind, entry_hash, key, seq, ts, tlp, doc, target in chunk:
            origin = self._key_text(bytes(key))
            own = origin == self._own
            given = known.get(bytes(entry_hash)) if kind != "retraction" else None
            if given is not None and given.json is not None:
                pending = Pending(entry_no, bytes(entry_hash), ts, origin, own, given.stix_id,
                                   given.stix_id.partition("--")[0], given.version,
                                   given.spec_version, given.json,
                                   carried=isinstance(given.payload, StixObject))
                by_entry[bytes(entry_hash)] = given.json
            else:
                if kind == "retraction":
                    obj = self._revoked(doc, target, by_entry)
                    if obj is None:
                        continue
                    ts = parse_timestamp(obj["modified"]) // 1000
                else:
                    ref = EntryRef(entry_hash.hex(), origin, seq, ts, TLP(tlp))
                    obj = self._object(kind, doc, ref, target, by_entry,
                                       None if given is None else given.payload)
                    if obj is None:
                        continue
                subject = bytes(entry_hash) if kind != "retraction" else bytes(target)
                pending = Pending.of(entry_no, subject, ts, obj, origin, own,
                                      carried=kind == "stix")
                by_entry[subject] = obj
            if origin not in self._identities:
                name, jurisdiction = self._origin_info(origin)
                out.append(Pending.of(entry_no, None, ts, identity_to_stix(
                    origin, name, jurisdiction=jurisdiction), origin, own, identity=origin))
                self._identities.add(origin)
                self._owners.know((origin,))
            out.append(pending)
        return out

    def _object(self, kind: str, doc: str | bytes, ref: EntryRef, target: bytes | None,
                by_entry: dict[bytes, dict[str, Any] | str],
                payload: Payload | None) -> dict[str, Any] | None:
        model = _MODELS.get(kind)
        if model is None:
            return None
        if kind in _TOOL_KINDS:
            # The engine's verdict is on the row (queries.tool_check, own or received):
            # a rule or playbook its engine refused is never served.
            fields = json.loads(doc)
            if fields.pop("valid", True) is False:
                return None
            fields.pop("engine_message", None)
            if not isinstance(payload, model):
                payload = model.model_validate({**fields, "kind": kind})
        elif not isinstance(payload, model):
            # A plaintext observation comes as its body (LEDGER_CHUNK), others as JSON.
            payload = (decode_payload(doc) if isinstance(doc, bytes)
                       else model.model_validate({**json.loads(doc), "kind": kind}))
        target_ref = None
        if target is not None:
            sighted = self._object_of_entry(bytes(target), by_entry)
            target_ref = sighted["id"] if sighted else entry_stix_id("indicator", target.hex())
        return payload_to_stix(payload, ref, target_ref=target_ref)

    def _revoked(self, raw: bytes, target: bytes,
                 by_entry: dict[bytes, dict[str, Any] | str]) -> dict[str, Any] | None:
        try:
            ts = verify_header(raw).ts
        except EntraideError:
            return None  # the ledger's verify reports damaged entries; serve what is sound
        current = self._object_of_entry(bytes(target), by_entry)
        return None if current is None else revoke(current, ts)

    def _object_of_entry(self, entry_hash: bytes, by_entry: dict[bytes, dict[str, Any] | str]
                 ) -> dict[str, Any] | None:
        """The latest object of an entry: from this chunk, else from the index."""
        found = by_entry.get(entry_hash)
        if isinstance(found, str):
            found = by_entry[entry_hash] = dict(json.loads(found))
        return found or self._latest_of_entry(entry_hash)

    def _key_text(self, raw: bytes) -> str:
        # PublicKey() converts the key to X25519 (~60 us); a federation has few origins.
        text = self._key_texts.get(raw)
        if text is None:
            if len(self._key_texts) >= _MAX_KEY_TEXTS:
                self._key_texts.clear()
            text = self._key_texts[raw] = PublicKey(raw).text
        return text

    def _latest_of_entry(self, entry_hash: bytes) -> dict[str, Any] | None:
        assert self._db is not None
        row = self._db.execute(
            "SELECT json FROM objects WHERE entry_hash = ? ORDER BY row DESC LIMIT 1",
            (entry_hash,)).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def _commit(self, pending: list[Pending], synced: int, synced_hash: bytes | None) -> int:
        assert self._db is not None
        db = self._db
        keys = [(p.stix_id, p.version_us) for p in pending]
        seen = self._known_versions(keys)
        owners = self._owners.of(db, {p.stix_id for p in pending})
        claimed: dict[str, ClaimKey] = {}  # owners new or changed in this chunk
        handed: set[str] = set()  # ids that changed hands: their rows worked out again
        now_us = int(self._clock() * 1_000_000)
        last_added = self._last_added
        rows = []
        for p, (stix_id, version_us) in zip(pending, keys, strict=True):
            before = owners.get(stix_id)
            verdict = self._owners.judge(p.stix_id, p.origin, p.entry_hash, p.ts_ms,
                                         p.json if p.carried else None, owners, claimed)
            served = verdict is Verdict.SERVE
            after = owners.get(stix_id)
            if before is not None and after is not None and before[2] != after[2]:
                handed.add(stix_id)
            in_all, in_own = seen.get((stix_id, version_us), (False, False))
            last_added = max(min(p.ts_ms * 1000, now_us), last_added + 1)
            rows.append((p.entry_no, p.entry_hash, p.origin, last_added, stix_id, p.stix_type,
                         p.version or format_ms(p.ts_ms), version_us, p.spec_version,
                         int(served and not in_all), int(served and p.own and not in_own),
                         int(verdict is Verdict.REFUSE),
                         p.json))
            if served:
                seen[(stix_id, version_us)] = (True, in_own or p.own)
        db.execute("BEGIN IMMEDIATE")
        try:
            self._owners.meet(db, self._origins)
            db.executemany(
                "INSERT INTO objects (entry_no, entry_hash, origin, added_us, stix_id, "
                "stix_type, version, version_us, spec_version, in_all, in_own, refused, json) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            db.executemany("INSERT OR REPLACE INTO owners (stix_id, origin, rank, ts) "
                           "VALUES (?, ?, ?, ?)",
                           [(i, k[2], k[0], k[1]) for i, k in claimed.items()])
            for stix_id in sorted(handed):
                self._owners.reserve(db, stix_id, owners[stix_id][2])
            db.executemany("INSERT OR IGNORE INTO identities (origin) VALUES (?)",
                           [(p.identity,) for p in pending if p.identity is not None])
            db.executemany("UPDATE meta SET value = ? WHERE key = ?", [
                (synced, "synced"), (synced_hash, "synced_hash"), (last_added, "last_added")])
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            self._identities = {r[0] for r in db.execute("SELECT origin FROM identities")}
            self._owners.reset(self._identities)
            raise
        self._synced, self._last_added = synced, last_added
        return len(rows)

    def _known_versions(self, keys: Iterable[tuple[str, int]]
                        ) -> dict[tuple[str, int], tuple[bool, bool]]:
        """(id, version) → (served in the all collection, served in the own collection),
        for those stored."""
        assert self._db is not None
        wanted = {k for k in keys}
        ids = sorted({k[0] for k in wanted})
        found: dict[tuple[str, int], tuple[bool, bool]] = {}
        for i in range(0, len(ids), _SQL_PARAMS):
            part = ids[i:i + _SQL_PARAMS]
            for stix_id, version_us, in_all, own in self._db.execute(
                    f"SELECT stix_id, version_us, max(in_all), max(in_own) FROM objects "
                    f"WHERE stix_id IN ({','.join('?' * len(part))}) "
                    f"GROUP BY stix_id, version_us", part):
                found[(stix_id, version_us)] = (bool(in_all), bool(own))
        return found

    @property
    def own_key(self) -> str:
        """This node's key text (the signer of the read-write collection)."""
        return self._own

    async def refused(self) -> int:
        """Rows kept but not served because they speak for another member (they name
        it, or reuse an id it owns). A count of the index's state, so the same on every
        node that holds the same entries."""
        return await self._run(lambda: self._owners.unserved(self._db_now()))

    async def count_refused(self) -> int:
        """Count :meth:`refused` again into :attr:`refused_rows`, unless the file has not
        changed since the last count (a count scans the table: call this on a slow
        timer, not per request nor at scrape time). Changes by another connection (an
        erasure's ``forget_entries``) count as changes too."""
        return await self._run(self._count_refused)

    def _count_refused(self) -> int:
        db = self._db_now()
        mark = (db.total_changes, int(db.execute("PRAGMA data_version").fetchone()[0]))
        if self.refused_rows is None or mark != self._counted_at:
            self.refused_rows = self._owners.unserved(db)
            self._counted_at = mark
        return self.refused_rows

    async def foreign(self, signer: str, objects: Sequence[tuple[str, str]]
                      ) -> list[tuple[str, str] | None]:
        """For each (id, object JSON text) that ``signer`` would publish: None, or
        (the other origin's name, else key text; the property naming it, "id" when
        that origin owns the id) when the index would refuse it, so the post path
        refuses it first, with that reason."""
        found = await self._run(lambda: self._owners.foreign(self._db_now(), signer,
                                                             list(objects)))
        return [None if f is None else (self._origin_info(f[0])[0] or f[0], f[1])
                for f in found]

    def _db_now(self) -> sqlite3.Connection:
        assert self._db is not None
        return self._db

    # -- reading

    async def page(self, collection: Collection, *, after_row: int = 0,
                   added_after_us: int | None = None, limit: int = 100,
                   ids: Sequence[str] = (), types: Sequence[str] = (),
                   versions: VersionFilter | None = None,
                   spec_versions: Sequence[str] = ()) -> IndexPage:
        """Objects of a collection after a position, oldest added first (see module doc)."""
        return await self._run(self._page, collection, after_row, added_after_us, limit,
                               tuple(ids), tuple(types), versions or VersionFilter(),
                               tuple(spec_versions))

    def _page(self, collection: Collection, after_row: int, added_after_us: int | None,
              limit: int, ids: tuple[str, ...], types: tuple[str, ...],
              versions: VersionFilter, spec_versions: tuple[str, ...]) -> IndexPage:
        assert self._db is not None
        if spec_versions and "2.1" not in spec_versions:
            return IndexPage([], False)  # everything served is STIX 2.1
        if added_after_us is not None:
            at = self._db.execute(
                "SELECT row FROM objects WHERE added_us <= ? ORDER BY added_us DESC LIMIT 1",
                (added_after_us,)).fetchone()
            after_row = max(after_row, at[0] if at else 0)
        col = collection.value
        where = [f"a.{col} = 1", "a.row > ?"]
        args: list[Any] = [after_row]
        if ids:
            where.append(f"a.stix_id IN ({','.join('?' * len(ids))})")
            args += ids
        if types:
            where.append(f"a.stix_type IN ({','.join('?' * len(types))})")
            args += types
        if not versions.all:
            either = []
            for keyword, agg in (("last", "max"), ("first", "min")):
                if getattr(versions, keyword):
                    either.append(f"a.version_us = (SELECT {agg}(b.version_us) FROM objects b "
                                  f"WHERE b.stix_id = a.stix_id AND b.{col} = 1)")
            if versions.exact:
                either.append(f"a.version_us IN ({','.join('?' * len(versions.exact))})")
                args += versions.exact
            where.append("(" + " OR ".join(either) + ")")
        rows = self._db.execute(
            f"SELECT a.row, a.added_us, a.stix_id, a.version, a.json FROM objects a "
            f"WHERE {' AND '.join(where)} ORDER BY a.row LIMIT ?", (*args, limit + 1)
        ).fetchall()
        return IndexPage([IndexRow(*r) for r in rows[:limit]], len(rows) > limit)

    async def contains(self, collection: Collection, stix_id: str) -> bool:
        """True when the collection holds any version of ``stix_id``."""
        return await self._run(self._contains, collection, stix_id)

    def _contains(self, collection: Collection, stix_id: str) -> bool:
        assert self._db is not None
        return self._db.execute(
            f"SELECT 1 FROM objects WHERE stix_id = ? AND {collection.value} = 1 LIMIT 1",
            (stix_id,)).fetchone() is not None

    async def present(self, collection: Collection,
                      keys: Sequence[tuple[str, int]]) -> set[tuple[str, int]]:
        """Which (id, version µs) pairs the collection already holds."""
        return await self._run(self._present, collection, list(keys))

    def _present(self, collection: Collection,
                 keys: list[tuple[str, int]]) -> set[tuple[str, int]]:
        found = self._known_versions(keys)
        index = 1 if collection is Collection.OWN else 0
        return {k for k in keys if found.get(k, (False, False))[index]}

    # -- status resources

    async def save_status(self, status_id: str, document: dict[str, Any]) -> None:
        """Keep a status resource (at least 24 h, TAXII 2.1 §4.3; here 7 days)."""
        await self._run(self._save_status, status_id, _dumps(document))

    def _save_status(self, status_id: str, text: str) -> None:
        assert self._db is not None
        now_us = int(self._clock() * 1_000_000)
        self._db.execute("DELETE FROM statuses WHERE created_us < ?", (now_us - _STATUS_KEEP_US,))
        self._db.execute(
            "DELETE FROM statuses WHERE id IN (SELECT id FROM statuses ORDER BY created_us "
            "DESC LIMIT -1 OFFSET ?)", (_MAX_STATUSES - 1,))
        self._db.execute("INSERT OR REPLACE INTO statuses (id, created_us, json) VALUES (?, ?, ?)",
                         (status_id, now_us, text))

    async def status(self, status_id: str) -> dict[str, Any] | None:
        return await self._run(self._status, status_id)

    def _status(self, status_id: str) -> dict[str, Any] | None:
        assert self._db is not None
        row = self._db.execute("SELECT json FROM statuses WHERE id = ?", (status_id,)).fetchone()
        return None if row is None else dict(json.loads(row[0]))


_MODELS: dict[str, type[Observation | Sighting | Rule | Alert | StixObject | Playbook
                        | AidRequest]] = {
    "aid-request": AidRequest,  # protocol/stix_aid.py
    "observation": Observation, "sighting": Sighting, "rule": Rule, "alert": Alert,
    "stix": StixObject, "playbook": Playbook,
}
_TOOL_KINDS = frozenset({"rule", "playbook"})




def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
