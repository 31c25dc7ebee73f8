"""The restore guard: a node restored from a backup signs nothing until it has caught up
its own chain from its peers.

A backup is a point in time. If the node signed entries after it was taken, its peers
hold seqs the restored ledger lacks; signing from the restored head would put a second
entry at those seqs, a fork of the node's own chain (docs/operations.md, "Back up and
restore"). ``entraide restore`` leaves a ``restored`` marker in the data dir
(agent/storage/backup.py); while it is there this guard refuses every own entry.

Invariants:
- Closed (refusing) from start while the marker exists; it opens once, and never
  closes again in the same run.
- It opens when (a) the whole version vector of every trust-list member with a URL has
  reached us in a session, or of at least one member and ``grace`` seconds have passed
  since the first (a member that is down must not hold the node back for ever), or the
  trust list is empty; and (b) the ledger's own head is at least the highest seq of
  this node's origin that any of those peers said it holds. Replication fetches those
  entries like any other origin's (the ledger always accepts its own origin's).
- Then the marker is deleted (and the directory synced): a restart does not wait again.
- A poll that fails is logged and retried; the guard never stops the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.config.settings import TrustList
from agent.errors import RestoringError
from agent.node.replication import Replication
from agent.storage.backup import RESTORED_MARKER
from agent.storage.queries import format_ms
from agent.storage.types import Head
from protocol.keys import PublicKey

__all__ = ["DEFAULT_GRACE_S", "MESSAGE", "POLL_INTERVAL_S", "RestoreGuard"]

log = logging.getLogger("entraide.restore")

POLL_INTERVAL_S = 0.2
DEFAULT_GRACE_S = 30.0
"""After the first peer was heard, how long to wait for the other dialled members."""

MESSAGE = {
    "en": "this node was restored from a backup and is catching up its own entries from "
          "its peers; it signs nothing until then (see GET /api/v1/status, 'restore')",
    "fr": "ce nœud a été restauré à partir d'une sauvegarde et récupère ses propres "
          "entrées auprès de ses pairs ; il ne signe rien d'ici là (voir GET "
          "/api/v1/status, « restore »)",
}


class RestoreGuard:
    """Holds own entries back while the ``restored`` marker is in the data dir.

    Args:
        root: the data dir (where the marker lives).
        me: this node's key (its own origin).
        head: the ledger's head of an origin (None: no entry).
        replication: asked which peers were heard and what they hold of ``me``.
        trust: the trust list in force now.
        name_of: a peer's trust-list name, for the status.
        grace: see the module's invariants.
        clock: seconds (monotonic) for the grace period.
    """

    def __init__(self, root: Path, me: PublicKey, head: Callable[[PublicKey], Head | None],
                 replication: Callable[[], Replication], trust: Callable[[], TrustList],
                 name_of: Callable[[PublicKey], str | None], *,
                 grace: float = DEFAULT_GRACE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._marker = root / RESTORED_MARKER
        self._me = me
        self._head = head
        self._replication = replication
        self._trust = trust
        self._name_of = name_of
        self._grace = grace
        self._clock = clock
        self._claims: dict[PublicKey, int] = {}
        self._first_heard: float | None = None
        self._restored_ms: int | None = None
        self.active = self._marker.exists()
        if self.active:
            self._restored_ms = _restored_ms(self._marker)

    def check(self) -> None:
        """Raise while the node may not sign (the committer calls it on every submit).

        Raises:
            RestoringError: the node is still catching up its own chain.
        """
        if self.active:
            raise RestoringError(f"{MESSAGE['en']} / {MESSAGE['fr']}")

    def status(self) -> dict[str, Any] | None:
        """None once open; else what it waits for (``GET /api/v1/status``, ``restore``)."""
        if not self.active:
            return None
        head = self._head(self._me)
        needed = self._needed()
        return {
            "state": "catching-up",
            "restored": None if self._restored_ms is None else format_ms(self._restored_ms),
            "own_seq": 0 if head is None else head[0],
            "peers_seq": max(self._claims.values(), default=0),
            "peers_heard": sorted(self._label(k) for k in self._claims),
            "peers_needed": sorted(self._label(k) for k in needed),
            "message": dict(MESSAGE),
        }

    async def run(self) -> None:
        """Poll until the guard opens (returns at once when it is open)."""
        if not self.active:
            return
        log.warning("restored from a backup: signing nothing until this node has caught "
                    "up its own entries from its peers")
        while self.active:
            try:
                self.poll()
            except Exception:
                log.exception("the restore guard's check failed; it tries again")
            if self.active:
                await asyncio.sleep(POLL_INTERVAL_S)

    def poll(self) -> bool:
        """One check (see the module's invariants); True when the guard opened."""
        if not self.active:
            return True
        for peer, seq in self._replication().heads_heard(self._me).items():
            if peer not in self._claims and self._first_heard is None:
                self._first_heard = self._clock()
            self._claims[peer] = max(seq, self._claims.get(peer, 0))
        needed = self._needed()
        trust_empty = not any(True for _ in self._trust())
        heard_all = bool(self._claims) and needed <= self._claims.keys()
        waited = (self._first_heard is not None
                  and self._clock() - self._first_heard >= self._grace)
        if not (trust_empty or heard_all or waited):
            return False
        head = self._head(self._me)
        own = 0 if head is None else head[0]
        top = max(self._claims.values(), default=0)
        if own < top:
            return False
        self._open(own, top)
        return True

    def _open(self, own: int, top: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._marker.unlink()
        _sync_dir(self._marker.parent)
        self.active = False
        heard = ", ".join(sorted(self._label(k) for k in self._claims)) or "none"
        log.warning("restored node caught up its own chain at seq %d (peers hold up to %d; "
                    "heard from: %s): signing again", own, top, heard)

    def _needed(self) -> set[PublicKey]:
        return {peer.key for peer in self._trust() if peer.url}

    def _label(self, key: PublicKey) -> str:
        return self._name_of(key) or key.fingerprint


def _restored_ms(marker: Path) -> int | None:
    try:
        value = json.loads(marker.read_text()[:4096]).get("restored_ms")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) else None


def _sync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
