"""Key rotation, on both sides: this node handing its place to a new key, and this node
following a peer that did (docs/operations.md, "Rotate a key"; protocol/handover.py).

The rotating node, in two steps:
1. ``entraide key rotate`` (node running) writes the new key to ``<data-dir>/next-key/``
   (sealed like ``node.key``) and asks the node to sign the hand-over: the last entry
   of its old key's chain, GREEN, naming the new key with its countersignature. The
   node then signs nothing more with the old key (503 ``key_rotated``) and pushes the
   hand-over to its peers as any entry.
2. At its next start, :func:`promote_next_key` finds that hand-over as the head of
   the old key's chain and installs the new key (``node.key``, ``node.pub``), re-keys
   the ledger and records the old key in ``previous-keys.json``: this node's chain
   continues under the new key from seq 1, and its own old chain stays trusted.

A follower (:class:`Succession`) watches the hand-overs it stores: one from the current
key of a trust-list member, that verifies, makes that member's key the new one in
``peers.toml`` and keeps the old one as retired, trusted up to the hand-over's seq.

A compromise (:meth:`KeyRotation.declare_compromised`, ``entraide peers compromised``):
an admin marks a member's current key compromised from a seq (or the first entry
signed at or after a time); the ledger refuses that key's entries from there on, those
already held are shown as ``quarantined`` (``GET /api/v1/observations``, the peers'
and status' ``quarantined`` count), and a hand-over signed there is not followed. The
member's new key comes by its card (``entraide peers update NAME --card CARD``): the
compromised key then stays as retired, trusted up to the seq before the compromise.

Invariants:
- A hand-over is signed only when the new key is on disk and loads (no node can lose
  its identity to a rotation), and at most once per run.
- The promotion happens only when the old chain's head is a valid hand-over to exactly
  the key in ``next-key/``; any other state leaves every file as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from agent.config.datadir import DataDir, atomic_write
from agent.config.settings import NodeConfig, TrustList
from agent.config.trust import (
    NEXT_KEY_DIR,
    PREVIOUS_KEYS,
    PeerEntry,
    RetiredKey,
    previous_keys,
)
from agent.errors import ConfigError, KeyHandedOverError, NodeStoppingError
from agent.node.membership import Membership
from agent.node.restore import RestoreGuard
from agent.storage.ledger import Ledger, OwnDraft
from protocol.entries import (
    TLP,
    VerifiedEntry,
    join_entry,
    split_entry,
    verify_entry,
    verify_header,
)
from protocol.errors import EntraideError
from protocol.handover import HANDOVER_KIND, Handover, check_handover
from protocol.keys import PublicKey
from protocol.payloads import decode_payload

__all__ = [
    "NEXT_KEY_DIR",
    "PREVIOUS_KEYS",
    "KeyHost",
    "KeyRotation",
    "Succession",
    "previous_keys",
    "promote_next_key",
]

log = logging.getLogger("entraide.keys")

_POLL_S = 1.0

ROTATED = {
    "en": "this node handed its key over to a new one; restart it to sign with the new key",
    "fr": "ce nœud a passé la main à une nouvelle clé ; redémarrez-le pour signer avec elle",
}


class KeyHost(Protocol):
    """What rotation needs of the node (agent/node/node.py's ``Node``)."""

    data_dir: DataDir
    restore: RestoreGuard | None
    members: Membership

    @property
    def config(self) -> NodeConfig: ...

    @property
    def public_key(self) -> PublicKey: ...

    @property
    def ledger(self) -> Ledger: ...

    @property
    def trust(self) -> TrustList: ...

    async def submit_drafts(self, drafts: Sequence[OwnDraft]) -> list[VerifiedEntry]: ...


class KeyRotation:
    """This node's side: sign the hand-over, then refuse to sign with the old key."""

    def __init__(self, node: KeyHost) -> None:
        self._node = node
        self.new_key: PublicKey | None = None
        self.entry: VerifiedEntry | None = None
        self.previous: list[RetiredKey] = []
        self._limits: tuple[TrustList, dict[str, int]] | None = None
        self.succession = Succession(node)

    async def promote(self) -> None:
        """On start, before the identity is loaded: finish a rotation signed in the
        previous run (:func:`promote_next_key`), and read this node's earlier keys.

        Raises:
            ConfigError: see :func:`promote_next_key` and :func:`previous_keys`.
        """
        node = self._node
        await asyncio.to_thread(promote_next_key, node.data_dir,
                                node.config.ledger_path(node.data_dir))
        self.previous = await asyncio.to_thread(previous_keys, node.data_dir)

    def trusts(self, key: PublicKey) -> bool:
        """Whether the ledger takes ``key``'s chain: a member's current or retired key,
        or one of this node's own earlier keys."""
        return (self._node.members.trust.trusted_until(key) != -1
                or any(r.key == key for r in self.previous))

    def trusted_until(self, key: PublicKey) -> int | None:
        """The last trusted seq of ``key``'s chain (the ledger's ingest limit): None for
        no limit; a retired or compromised key's last trusted seq."""
        for retired in self.previous:
            if retired.key == key:
                return retired.last_seq
        limit = self._node.members.trust.trusted_until(key)
        return None if limit == -1 else limit

    def limits_by_text(self) -> dict[str, int]:
        """Key text -> last trusted seq, for every key with a limit (retired or
        compromised; this node's own earlier keys too). The same object until the trust
        list changes (do not modify it)."""
        trust = self._node.members.trust
        cached = self._limits
        if cached is None or cached[0] is not trust:
            table = {r.key.text: r.last_seq for r in self.previous}
            for peer in trust:
                table.update({r.key.text: r.last_seq for r in peer.retired})
                if peer.compromised_since_seq is not None:
                    table[peer.key.text] = peer.compromised_since_seq - 1
            cached = self._limits = (trust, table)
        return cached[1]

    def held_quarantined(self, peer: PeerEntry) -> int:
        """How many entries of ``peer``'s current key this node holds past its
        compromise (they arrived before the admin's mark)."""
        since = peer.compromised_since_seq
        try:
            head = self._node.ledger.head(peer.key)
        except NodeStoppingError:
            return 0
        return 0 if since is None or head is None else max(0, head[0] - since + 1)

    async def declare_compromised(self, name: str, *, since_seq: int | None = None,
                                  since_ms: int | None = None) -> PeerEntry:
        """Mark member ``name``'s current key compromised from ``since_seq``, or from
        the first entry it signed at or after ``since_ms`` (exactly one is given);
        applied at once and kept in peers.toml. An earlier mark already there stands.

        Raises:
            UnknownPeerError: no member has that name.
            ConfigError: neither or both of ``since_seq`` and ``since_ms``; a seq below 1.
        """
        if (since_seq is None) == (since_ms is None):
            raise ConfigError("give the compromise's start as a seq or as a time, one of them")
        if since_seq is not None and since_seq < 1:
            raise ConfigError("the compromise's seq must be 1 or more")
        members = self._node.members
        member = members.peer(name)
        if since_seq is None:
            assert since_ms is not None
            since_seq = await self._first_seq_at(member.key, since_ms)
        earlier = member.compromised_since_seq
        if earlier is not None and earlier <= since_seq:
            since_seq = earlier
        updated = member.model_copy(update={"compromised_since_seq": since_seq})
        await members.replace_peer(name, updated)
        log.warning("peer %s: key %s (%s) declared compromised from seq %d: its entries "
                    "from there are quarantined (%d held); trust its new key with "
                    "'entraide peers update %s --card CARD'", name, member.key.text,
                    member.key.fingerprint, since_seq, self.held_quarantined(updated), name)
        return updated

    async def _first_seq_at(self, key: PublicKey, since_ms: int) -> int:
        """The seq of ``key``'s first held entry signed at or after ``since_ms`` (its
        signed time), else the seq after its head."""
        ledger = self._node.ledger
        head = ledger.head(key)
        if head is None:
            return 1
        async for chunk in ledger.read_range(key, 1, head[0]):
            for raw in chunk:
                entry = verify_header(split_entry(raw)[0])
                if entry.ts >= since_ms:
                    return entry.seq
        return head[0] + 1

    def gate(self) -> None:
        """The committer's gate: a restored node not caught up yet, or a key handed
        over, signs nothing.

        Raises:
            RestoringError: restored, not caught up yet (agent/node/restore.py).
            KeyHandedOverError: see :meth:`check`.
        """
        if self._node.restore is not None:
            self._node.restore.check()
        self.check()

    async def watch(self) -> None:
        """Follow peers' hand-overs (:class:`Succession`), forever."""
        await self.succession.watch()

    def check(self) -> None:
        """Whether the old key may still sign.

        Raises:
            KeyHandedOverError: the hand-over is signed (the old key signs no more).
        """
        if self.new_key is not None:
            raise KeyHandedOverError(f"{ROTATED['en']} / {ROTATED['fr']}")

    async def hand_over(self, payload: Handover) -> VerifiedEntry:
        """Sign the hand-over to the key in ``next-key/`` (see the module's steps).

        Raises:
            ConfigError: no new key on disk, it does not load, or it is not the one named.
            HandoverError: the countersignature does not verify.
            KeyHandedOverError: already handed over.
            RestoringError: the node is restoring.
        """
        node = self._node
        self.check()
        named = PublicKey.from_text(payload.new_key)
        next_dir = DataDir(node.data_dir.root / NEXT_KEY_DIR)
        try:
            on_disk = await asyncio.to_thread(next_dir.public_key)
        except ConfigError as exc:
            raise ConfigError(f"no new key to hand over to: {exc}") from exc
        if on_disk != named:
            raise ConfigError(f"{next_dir.root}: holds {on_disk.fingerprint}, not the key named")
        draft = OwnDraft(payload, TLP.GREEN, ())
        (entry,) = await node.submit_drafts([draft])
        check_handover(entry, payload)  # the same rule every follower applies
        self.new_key, self.entry = named, entry
        log.warning("key hand-over signed at seq %d: %s -> %s (%s); restart the node to "
                    "sign with the new key", entry.seq, node.public_key.fingerprint,
                    named.fingerprint, named.text)
        return entry

    def status(self) -> dict[str, Any] | None:
        if self.new_key is None or self.entry is None:
            return None
        return {"state": "restart-needed", "new_key": self.new_key.text,
                "new_fingerprint": self.new_key.fingerprint, "handover_seq": self.entry.seq,
                "handover_id": self.entry.id, "message": dict(ROTATED)}


class Succession:
    """A follower's side: peers' hand-overs applied to ``peers.toml``."""

    def __init__(self, node: KeyHost, poll_interval: float = _POLL_S) -> None:
        self._node = node
        self._poll = poll_interval
        self._seen: set[str] = set()

    async def watch(self) -> None:
        """Forever: apply each new hand-over (a failure is logged, never fatal)."""
        while True:
            try:
                await self.apply_new()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("the key hand-over watcher failed; it goes on")
            await asyncio.sleep(self._poll)

    async def apply_new(self) -> int:
        """Apply every stored hand-over not seen yet; return how many changed the list."""
        node = self._node
        page = await node.ledger.list_items(kind=HANDOVER_KIND, limit=100)
        changed = 0
        for item in reversed(page.items):
            if item["id"] in self._seen:
                continue
            self._seen.add(item["id"])
            changed += await self._apply(item)
        return changed

    async def _apply(self, item: dict[str, Any]) -> int:
        node = self._node
        old = PublicKey.from_text(item["origin"])
        member = node.trust.by_key(old)
        if member is None:
            return 0  # not a current key of a member: already followed, or not ours
        entry = await node.ledger.get_entry(item["id"])
        if entry is None or entry.body is None:
            return 0
        try:
            payload = decode_payload(entry.body)
            if not isinstance(payload, Handover):
                return 0
            new = check_handover(entry, payload)
        except EntraideError as exc:
            log.warning("hand-over %s from peer %s refused: %s", entry.id, member.name, exc)
            return 0
        since = member.compromised_since_seq
        if since is not None and entry.seq >= since:
            log.warning("hand-over from peer %s at seq %d ignored: its key is compromised "
                        "since seq %d", member.name, entry.seq, since)
            return 0
        retired = [*member.retired, RetiredKey(key=old, last_seq=entry.seq)]
        updated = member.model_copy(update={"key": new, "retired": retired})
        await node.members.replace_peer(member.name, updated)
        log.warning("peer %s rotated its key: %s -> %s (fingerprint %s -> %s, hand-over "
                    "seq %d); following: peers.toml updated, the old key stays trusted up "
                    "to that seq", member.name, old.text, new.text, old.fingerprint,
                    new.fingerprint, entry.seq)
        return 1


# --- the promotion at start -------------------------------------------------------------


def promote_next_key(data_dir: DataDir, ledger_path: Path) -> PublicKey | None:
    """Install the key in ``next-key/`` when the ledger's old chain ends with a valid
    hand-over to it (blocking; the node is not started). Returns the new key, or None
    when there is nothing to promote.

    Raises:
        ConfigError: ``next-key/`` holds a key the ledger's hand-over does not name
            while the old chain ends in a hand-over (nothing is changed).
    """
    next_dir = DataDir(data_dir.root / NEXT_KEY_DIR)
    if not next_dir.key_path.exists():
        return None
    new = next_dir.public_key()
    old = data_dir.public_key()
    head = _head_entry(ledger_path, old)
    if head is None or head.body is None:
        return None
    try:
        payload = decode_payload(head.body)
        if not isinstance(payload, Handover):
            return None  # rotation asked for but never signed: keep the old key
        named = check_handover(head, payload)
    except EntraideError:
        return None
    if named != new:
        raise ConfigError(f"{next_dir.root}: holds {new.fingerprint}, but the hand-over "
                          f"names {named.fingerprint}")
    records = [*previous_keys(data_dir), RetiredKey(key=old, last_seq=head.seq)]
    atomic_write(data_dir.root / PREVIOUS_KEYS, json.dumps(
        [r.model_dump(mode="json") for r in records]).encode(), mode=0o600)
    _rekey_ledger(ledger_path, old, new)
    retired = data_dir.root / f"node.key.retired-{int(time.time() * 1000)}"
    os.replace(data_dir.key_path, retired)
    os.replace(next_dir.key_path, data_dir.key_path)
    os.replace(next_dir.pub_path, data_dir.pub_path)
    with contextlib.suppress(OSError):
        shutil.rmtree(next_dir.root)
    log.warning("key rotation done: this node now signs as %s (%s); its chain under %s "
                "ended at seq %d with the hand-over; the old key file is %s (destroy it "
                "once you no longer need it)", new.text, new.fingerprint, old.fingerprint,
                head.seq, retired.name)
    return new


def _head_entry(ledger_path: Path, origin: PublicKey) -> VerifiedEntry | None:
    if not ledger_path.exists():
        return None
    conn = sqlite3.connect(f"file:{ledger_path}?mode=ro", uri=True)
    try:
        row = conn.execute(
            "SELECT e.header, e.body FROM entries e JOIN origins o ON o.origin_id = e.origin_id "
            "WHERE o.key = ? ORDER BY e.seq DESC LIMIT 1", (origin.raw,)).fetchone()
    except sqlite3.Error:
        return None
    finally:
        conn.close()
    if row is None:
        return None
    try:
        return verify_entry(join_entry(bytes(row[0]), None if row[1] is None else bytes(row[1])))
    except EntraideError:
        return None


def _rekey_ledger(path: Path, old: PublicKey, new: PublicKey) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE meta SET value = ? WHERE key = 'node_key' AND value = ?",
                     (new.raw, old.raw))
        conn.execute("COMMIT")
    finally:
        conn.close()
