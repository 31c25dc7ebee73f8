"""Whose object is it: the owners of STIX ids in the TAXII index (taxii_index.py).

Each id served has one publisher, its owner: the origin with the smallest claim on it
(``protocol.stix_claims.claim_key``: an id derived from an origin's key or entry is
that origin's; else an object naming its signer as creator comes first; else the
earliest entry, then the smaller key). The rule reads signed entries only, so every
node picks the same owner whatever order entries reached it in; when a smaller claim
arrives late, the id changes hands and its served rows are worked out again.
Only the owner's rows of an id are served. A carried object that names another known
origin (``protocol.stix_claims.foreign_claim``) is refused whoever owns its id. So no
member can publish a newer version of another member's object, a copy of its identity,
or sightings in its name.

Rows not served are kept (the ledger holds their entries anyway), counted from the
index's state (``Owners.unserved``: the same count on every node holding the same
entries) and logged once per signer: a member that does it once usually does it for a
whole feed, and the log must not grow with it.
"""

from __future__ import annotations

import enum
import json
import logging
import sqlite3
from collections.abc import Iterable
from typing import Any

from protocol.stix_claims import ClaimKey, claim_key, could_claim, foreign_claim
from protocol.stix_common import identity_id

__all__ = ["Owners", "Verdict"]

log = logging.getLogger(__name__)

_SQL_PARAMS = 400
_MAX_LOGGED = 10_000


class Verdict(enum.Enum):
    """What the index does with a row (:meth:`Owners.judge`)."""

    SERVE = "serve"
    OTHER = "another origin owns its id"
    REFUSE = "it speaks for another member"


class Owners:
    """Ownership rules over the index's ``owners`` table; the index calls these under
    its lock, on its connection, inside its sync transaction's preparation.

    Args:
        own: this node's key text (an origin known from the start).
    """

    def __init__(self, own: str) -> None:
        self._own = own
        self.identities: dict[str, str] = {identity_id(own): own}
        """STIX identity id → origin key text, of every origin indexed."""
        self._logged: set[str] = set()

    def know(self, origins: Iterable[str]) -> None:
        self.identities.update((identity_id(o), o) for o in origins)

    def meet(self, db: sqlite3.Connection, origins: Iterable[str]) -> None:
        """Learn the origins of the ledger (every node learns the same ones, in any
        order). For each not met before, the rows stored earlier that name it in
        another's name are refused now, as they would have been had it been known
        then: the result does not depend on the order entries arrived in. Runs inside
        the caller's transaction."""
        met = {r[0] for r in db.execute("SELECT origin FROM met")}
        new = sorted(set(origins) - met)
        if not new:
            return
        self.know(new)
        for origin in new:
            handed: set[str] = set()
            for row, stix_id, signer, text in db.execute(
                    "SELECT row, stix_id, origin, json FROM objects WHERE refused = 0 "
                    "AND origin != ? AND instr(json, ?) > 0",
                    (origin, identity_id(origin))).fetchall():
                claim = foreign_claim(json.loads(text), signer, self.identities)
                if claim is not None:
                    self._refuse(signer, stix_id, f"its {claim[1]} names another member")
                    db.execute("UPDATE objects SET refused = 1, in_all = 0, in_own = 0 "
                               "WHERE row = ?", (row,))
                    handed.add(stix_id)
            for stix_id, owner in self.of(db, handed).items():
                self.reserve(db, stix_id, owner[2])
        db.executemany("INSERT INTO met (origin) VALUES (?)", [(o,) for o in new])

    @staticmethod
    def unserved(db: sqlite3.Connection) -> int:
        """How many stored rows are refused or belong to an origin that does not own
        their id."""
        return int(db.execute(
            "SELECT count(*) FROM objects o JOIN owners w ON w.stix_id = o.stix_id "
            "WHERE o.refused = 1 OR o.origin != w.origin").fetchone()[0]
            + db.execute("SELECT count(*) FROM objects o WHERE o.refused = 1 AND NOT EXISTS "
                         "(SELECT 1 FROM owners w WHERE w.stix_id = o.stix_id)").fetchone()[0])

    def reserve(self, db: sqlite3.Connection, stix_id: str, owner: str) -> None:
        """Serve the rows of an id again after it changed hands: only its owner's, the
        first row of each version (never a refused one); in the own collection too
        when the owner is this node."""
        db.execute("UPDATE objects SET in_all = 0, in_own = 0 WHERE stix_id = ?", (stix_id,))
        db.execute(
            "UPDATE objects SET in_all = 1, in_own = ? WHERE row IN (SELECT min(row) FROM "
            "objects WHERE stix_id = ? AND origin = ? AND refused = 0 GROUP BY version_us)",
            (int(owner == self._own), stix_id, owner))

    def reset(self, origins: Iterable[str]) -> None:
        self.identities = {identity_id(o): o for o in {*origins, self._own}}

    def of(self, db: sqlite3.Connection, ids: Iterable[str]) -> dict[str, ClaimKey]:
        """The owners' claims of those ids that have one."""
        wanted = sorted(ids)
        found: dict[str, ClaimKey] = {}
        for i in range(0, len(wanted), _SQL_PARAMS):
            part = wanted[i:i + _SQL_PARAMS]
            for stix_id, origin, rank, ts in db.execute(
                    f"SELECT stix_id, origin, rank, ts FROM owners WHERE stix_id IN "
                    f"({','.join('?' * len(part))})", part):
                found[stix_id] = (rank, ts, origin)
        return found

    def judge(self, stix_id: str, origin: str, entry_hash: bytes | None, ts_ms: int,
              carried: str | None, owners: dict[str, ClaimKey],
              claimed: dict[str, ClaimKey]) -> Verdict:
        """Whether a new row (``stix_id`` signed by ``origin`` in an entry of ``ts_ms``;
        ``carried``: the JSON text of an object its origin wrote, None for one Entraide
        rendered) is served, as far as ownership goes: SERVE, OTHER (its id has another
        owner: kept, served if its origin ever gets the id) or REFUSE (it names another
        member: kept, never served).

        Updates ``owners`` (the known owners' claims) and ``claimed`` (owners to write:
        an id in it whose owner changed hands has its stored rows worked out again by
        the caller).
        """
        obj: dict[str, Any] | None = None
        if carried is not None and could_claim(carried, self.identities):
            obj = json.loads(carried)
            assert obj is not None
            claim = foreign_claim(obj, origin, self.identities)
            if claim is not None:
                self._refuse(origin, stix_id, f"its {claim[1]} names another member")
                return Verdict.REFUSE
        key = claim_key(stix_id, origin, entry_hash, ts_ms,
                        None if obj is None else obj.get("created_by_ref"))
        owner = owners.get(stix_id)
        if owner is None or key < owner:
            if owner is not None and owner[2] != origin:
                self._refuse(owner[2], stix_id, "another member has the first claim on its id")
            owners[stix_id] = claimed[stix_id] = key
            return Verdict.SERVE
        if owner[2] != origin:
            self._refuse(origin, stix_id, "its id was first published by another member")
            return Verdict.OTHER
        return Verdict.SERVE

    def foreign(self, db: sqlite3.Connection, signer: str, objects: list[tuple[str, str]]
                ) -> list[tuple[str, str] | None]:
        """For each (id, object JSON text) ``signer`` would publish: None, or (the
        other origin, the property that names it: "id" when another owns the id)."""
        owners = self.of(db, {stix_id for stix_id, _ in objects})
        out: list[tuple[str, str] | None] = []
        for stix_id, text in objects:
            owner = owners.get(stix_id)
            if owner is not None and owner[2] != signer:
                out.append((owner[2], "id"))
            elif could_claim(text, self.identities):
                out.append(foreign_claim(json.loads(text), signer, self.identities))
            else:
                out.append(None)
        return out

    def _refuse(self, origin: str, stix_id: str, why: str) -> None:
        if origin not in self._logged and len(self._logged) < _MAX_LOGGED:
            self._logged.add(origin)
            log.warning("TAXII: not serving objects signed by %s that speak for another "
                        "member (first: %s: %s); counted, logged once per signer",
                        origin[:60], stix_id[:120], why)
