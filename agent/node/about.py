"""Entries about other entries: retractions and sightings. Each takes at least its
target's TLP and stays within its target's audience (docs/privacy.md): a sighting of a
RED entry is RED, sealed to that entry's readers, never GREEN in clear."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from agent.errors import (
    AlreadyRetractedError,
    BelowTargetError,
    NotOwnEntryError,
    WiderAudienceError,
)
from agent.node.membership import Membership
from agent.node.submission import Submission
from agent.storage.ledger import Ledger, OwnDraft
from protocol.entries import TLP, VerifiedEntry
from protocol.erasure import covers
from protocol.keys import PublicKey
from protocol.payloads import Payload, Retraction, Sighting

__all__ = ["add_sighting", "retract"]


class _Node(Protocol):
    """What this module needs of agent/node/node.py's ``Node``."""

    @property
    def public_key(self) -> PublicKey: ...

    @property
    def ledger(self) -> Ledger: ...

    @property
    def members(self) -> Membership: ...

    async def readable_entry(self, entry_id: str) -> VerifiedEntry: ...

    def audience_of(self, entry: VerifiedEntry) -> tuple[bytes, ...] | None: ...

    async def submit_drafts(self, drafts: Sequence[OwnDraft]) -> list[VerifiedEntry]: ...

    async def submit(self, submissions: Sequence[Any]) -> list[VerifiedEntry]: ...

    def recipients(self, tlp: TLP, audience: Sequence[str] | None) -> tuple[PublicKey, ...]: ...

    async def submit_sealed(self, payload: Payload, tlp: TLP,
                            recipients: tuple[PublicKey, ...]) -> VerifiedEntry: ...


async def retract(node: _Node, entry_id: str, reason: str | None = None) -> VerifiedEntry:
    """Retract one of this node's own entries. The retraction is sent with the
    target's TLP, to the target's audience members still known.

    Raises:
        UnknownEntryError: no entry with that id this node can read.
        NotOwnEntryError: the entry is another origin's.
        AlreadyRetractedError: it was already retracted.
    """
    entry = await node.readable_entry(entry_id)
    if entry.origin != node.public_key:
        raise NotOwnEntryError("only the origin that wrote an entry can retract it")
    current = await node.ledger.get_observation(entry.id)
    if current is not None and current.get("retracted"):
        raise AlreadyRetractedError(f"{entry.id} is already retracted")
    payload = Retraction(of=entry.id, reason=reason)
    recipients = node.members.same_audience(entry.tlp, node.audience_of(entry))
    draft = OwnDraft(payload, entry.tlp, recipients)
    (retraction,) = await node.submit_drafts([draft])
    return retraction

async def add_sighting(node: _Node, of_id: str, *, count: int = 1,
                  seen_at: datetime | None = None, note: str | None = None,
                  tlp: TLP | None = None, audience: Sequence[str] | None = None
                  ) -> VerifiedEntry:
    """Record that this node saw the indicator of entry ``of_id`` (any origin's).

    The sighting takes at least the target's TLP and, for an encrypted target, at
    most its audience (docs/privacy.md): by default exactly the target's TLP and
    the members still known of its audience.

    Raises:
        UnknownEntryError: no readable entry with that id.
        BelowTargetError: ``tlp`` is lower than the target's (nothing written).
        WiderAudienceError: ``audience`` names a reader outside the target's.
        UnknownAudienceError: a bad audience.
        PayloadError/ValidationError: bad count, time or note.
    """
    entry = await node.readable_entry(of_id)
    payload = Sighting(of=entry.id, count=count, seen_at=seen_at, note=note)
    tlp = entry.tlp if tlp is None else TLP(tlp)
    if not covers(tlp, entry.tlp):
        raise BelowTargetError(
            f"a sighting of a {entry.tlp.value} entry is {entry.tlp.value} or higher, "
            f"not {tlp.value} / le signalement d'une entrée {entry.tlp.value} est "
            f"{entry.tlp.value} ou plus, pas {tlp.value}")
    if not entry.tlp.encrypted:
        names = None if audience is None else tuple(audience)
        (sighting,) = await node.submit([Submission(payload, tlp, names)])
        return sighting
    if audience is None:
        recipients = node.members.same_audience(entry.tlp, node.audience_of(entry))
    else:
        recipients = node.recipients(tlp, audience)
        allowed = set(node.audience_of(entry) or ()) | {node.public_key.key_id}
        outside = [k for k in recipients if k.key_id not in allowed]
        if outside:
            raise WiderAudienceError(
                "the sighting's audience must stay within its target's audience / "
                "l'audience du signalement doit rester dans celle de l'entrée visée")
    return await node.submit_sealed(payload, tlp, recipients)

