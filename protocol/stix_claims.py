"""Who a STIX object speaks for (``foreign_claim``), and which ids prove their publisher
(``proven_id``).

Every object Entraide serves is signed by one origin, but a STIX object can name
others: ``created_by_ref`` and ``where_sighted_refs`` name identities, an ``identity``
object is one, and Entraide's own property extension names the origin of the entry it
was rendered from. A member must not speak in another's name (docs/operations.md,
"Whose object is it"), so the TAXII index and the TAXII post path refuse an object
that names another known origin in any of those places.

Each id has one owner, the origin whose claim on it is the smallest ``claim_key``, and
only the owner's versions of it are served (docs/protocol.md, "Whose STIX object is
it"). The rule reads only what every node holds alike (signed entries), so every node
picks the same owner whatever order the entries reached it in:

1. an id derived from what only one origin signs (its identity id is a UUIDv5 of its
   key, an entry's object id a UUIDv5 of the entry's hash) belongs to that origin;
2. else an object whose ``created_by_ref`` names its signer's own identity claims the
   id before one that does not (another member cannot name it: ``foreign_claim``);
3. else the earliest entry timestamp, then the smaller key text.

Limit: an entry's timestamp is its signer's claim, so a member can backdate an entry
to take an id of rank 3 that another published; rank 1 and 2 ids cannot be taken.

Pure functions: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from protocol.stix_common import EXTENSION_ID, entry_stix_id, identity_id

__all__ = ["ClaimKey", "claim_key", "could_claim", "foreign_claim", "proven_id"]

ClaimKey = tuple[int, int, str]
"""(rank, entry timestamp in ms, origin key text): the smallest claim owns the id."""


def claim_key(stix_id: str, origin: str, entry_hash: bytes | None, ts_ms: int,
              creator: object = None) -> ClaimKey:
    """The claim that ``origin`` lays on ``stix_id`` by signing an object with it at
    ``ts_ms`` (``entry_hash``: the entry the object renders, None for an identity;
    ``creator``: the object's ``created_by_ref``). The smallest claim owns the id."""
    if proven_id(stix_id, origin, entry_hash):
        return (0, 0, origin)
    return (1 if creator == identity_id(origin) else 2, ts_ms, origin)


def foreign_claim(obj: Mapping[str, Any], signer: str,
                  identities: Mapping[str, str]) -> tuple[str, str] | None:
    """Whether ``obj``, signed by ``signer`` (key text), speaks for another origin.

    Args:
        identities: STIX identity id → origin key text, for every origin known.

    Returns:
        None, or (the other origin, the property that names it).
    """
    stix_id = obj.get("id")
    if obj.get("type") == "identity" and isinstance(stix_id, str):
        other = identities.get(stix_id)
        if other is not None and other != signer:
            return other, "id"
    creator = obj.get("created_by_ref")
    if isinstance(creator, str):
        other = identities.get(creator)
        if other is not None and other != signer:
            return other, "created_by_ref"
    sighted = obj.get("where_sighted_refs")
    if isinstance(sighted, list):
        for ref in sighted:
            other = identities.get(ref) if isinstance(ref, str) else None
            if other is not None and other != signer:
                return other, "where_sighted_refs"
    extensions = obj.get("extensions")
    ours = extensions.get(EXTENSION_ID) if isinstance(extensions, Mapping) else None
    if isinstance(ours, Mapping):
        origin = ours.get("origin")
        if isinstance(origin, str) and origin != signer:
            return origin, "extensions"
    return None


def could_claim(text: str, identities: Mapping[str, str]) -> bool:
    """False when an object's JSON text surely names no known origin (so it need not be
    parsed to ask :func:`foreign_claim`): it holds neither the Entraide extension's id
    nor any known identity id."""
    return EXTENSION_ID in text or any(i in text for i in identities)


def proven_id(stix_id: str, origin: str, entry_hash: bytes | None) -> bool:
    """True when ``stix_id`` is derived from what only ``origin`` signs: its identity
    id, or the id of an object rendered from its entry ``entry_hash``."""
    if stix_id == identity_id(origin):
        return True
    if entry_hash is None:
        return False
    stix_type = stix_id.partition("--")[0]
    return stix_id == entry_stix_id(stix_type, entry_hash.hex())
