"""Erasure on the node: an origin erases its own entry, every holder drops the body and
every derived row without a trace, and answers with a signed receipt
(docs/privacy.md, "Erasure"; payloads in protocol/erasure.py).

How a body is dropped without a trace, in order: :meth:`Ledger.drop_bodies` (body
NULL, body state ``erased``, every query-table row deleted, one durable transaction;
``secure_delete`` zeroes the freed cells and pages), the TAXII index's rows of the
entry (:func:`agent.storage.taxii_index.forget_entries`, its own file, zeroed and
its WAL truncated), then the ledger's WAL checkpointed and truncated
(:meth:`Ledger.scrub`), so no older page holding the value is left in any file.

Invariants:
- Only an entry's origin erases it: a remote erasure by anyone else is stored, has no
  effect and is counted (``entraide_erasures_invalid_total``).
- An erasure whose target this node does not hold yet is remembered (bounded,
  ``MAX_PENDING``) and applied when the target arrives; the watcher re-reads every
  erasure row on start, so a restart forgets nothing (applying twice is harmless).
- A node sends at most one receipt per erased entry (it looks for its own first);
  the receipt takes at least the target's TLP, sealed to the origin and this node.
- Values never reach a log line: ids and counts only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from agent.errors import AlreadyErasedError, ErasedError, NotOwnEntryError, UnknownEntryError
from agent.metrics import Counter, Registry
from agent.node.membership import Membership
from agent.node.wakeup import wait_event
from agent.storage.erasure import (
    ErasureRow,
    erasure_rows_after,
    erasures_of,
    receipt_rows,
    target_states,
)
from agent.storage.ledger import Ledger
from agent.storage.taxii_index import forget_entries, index_path
from agent.storage.types import BodyState
from protocol.entries import TLP, VerifiedEntry
from protocol.erasure import Erasure, ErasureReceipt, erasure_applies, receipt_tlp
from protocol.keys import PublicKey, b64url_encode
from protocol.payloads import Payload


class ErasureHost(Protocol):
    """What :class:`NodeErasure` needs of the node (agent/node/node.py implements it); a
    protocol, so this module does not import the node that owns it."""

    clock: Callable[[], float]
    members: Membership

    @property
    def public_key(self) -> PublicKey: ...
    @property
    def ledger(self) -> Ledger: ...
    @property
    def ledger_path(self) -> Path: ...
    def name_of_text(self, key_text: str) -> str | None: ...
    def audience_of(self, entry: VerifiedEntry) -> tuple[bytes, ...] | None: ...
    async def submit_sealed(self, payload: Payload, tlp: TLP,
                            recipients: tuple[PublicKey, ...]) -> VerifiedEntry: ...


__all__ = ["MAX_PENDING", "WATCH_INTERVAL", "ErasureHost", "NodeErasure"]

log = logging.getLogger(__name__)

WATCH_INTERVAL = 60.0
"""The watcher wakes on every ledger commit; this backstop only bounds how long a
missed wake-up (a bug) could delay an erasure."""
MAX_PENDING = 10_000
"""Most erasures waiting for their target (a flood beyond this is dropped, counted)."""


def _key_text(raw: bytes) -> str:
    return "ed25519:" + b64url_encode(raw)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds"
                                                          ).replace("+00:00", "Z")


class NodeErasure:
    """The node's erasures: :meth:`erase` (own entries), :meth:`status` (the privacy
    officer's view) and :meth:`watch` (applies remote erasures and sends receipts)."""

    def __init__(self, node: ErasureHost, registry: Registry) -> None:
        self._node = node
        self._pending: dict[str, ErasureRow] = {}
        self._receipted: set[str] = set()
        self._lock = asyncio.Lock()
        self.applied: Counter = registry.counter(
            "entraide_erasures_applied_total",
            "Entries whose body this node dropped on their origin's erasure.")
        self.invalid: Counter = registry.counter(
            "entraide_erasures_invalid_total",
            "Erasure entries with no effect: their author is not the target's origin, "
            "or too many were waiting for their target.")
        self.receipts: Counter = registry.counter(
            "entraide_erasure_receipts_sent_total", "Erasure receipts this node signed.")

    # -- the origin

    async def erase(self, entry_id: str, reason: str | None = None) -> dict[str, Any]:
        """Erase one of this node's own entries: sign and publish the erasure, then drop
        the body here at once (the peers follow when it reaches them).

        Raises:
            UnknownEntryError: no entry with that id (404).
            NotOwnEntryError: another origin's entry (403).
            AlreadyErasedError: erased already (409).
            PayloadError/ValidationError: a bad reason.
        """
        node = self._node
        target = _entry_id(entry_id)
        entry = await node.ledger.get_entry(target)
        if entry is None:
            raise UnknownEntryError(f"no entry {target} / aucune entrée {target}")
        if entry.origin != node.public_key:
            raise NotOwnEntryError("only the origin that wrote an entry can erase it / "
                                   "seule l'origine qui a écrit une entrée peut l'effacer")
        async with self._lock:
            states = await target_states(node.ledger, [entry.hash])
            mine = [r for r in await erasures_of(node.ledger, target)
                    if r.origin == node.public_key.raw]
            if mine or states[entry.hash].body_state == BodyState.ERASED:
                raise AlreadyErasedError(f"{target} is already erased / "
                                         f"{target} est déjà effacée")
            payload = Erasure(of=target, reason=reason)
            recipients = node.members.same_audience(entry.tlp, node.audience_of(entry))
            erasure = await node.submit_sealed(payload, entry.tlp, recipients)
            await self._drop(entry.hash)
        log.info("entry %s erased by this node (erasure %s)", target, erasure.id)
        return {"id": erasure.id, "of": target, "seq": erasure.seq,
                "erased_at": _iso(erasure.ts)}

    async def status(self, entry_id: str) -> dict[str, Any]:
        """``{"erasure", "erased_at", "receipts": [{"node", "key", "at"}]}`` of an erased
        entry: the origin's erasure and every receipt this node can read, the origin
        first (it erased at ``erased_at``).

        Raises:
            UnknownEntryError: unknown here, or not erased by its origin (404).
        """
        node = self._node
        target = _entry_id(entry_id)
        key = bytes.fromhex(target)
        states = await target_states(node.ledger, [key])
        if key not in states:
            raise UnknownEntryError(f"no entry {target} / aucune entrée {target}")
        origin = states[key].origin
        erasure = next((r for r in await erasures_of(node.ledger, target)
                        if erasure_applies(r.origin, origin)), None)
        if erasure is None:
            raise UnknownEntryError(f"{target} is not erased / {target} n'est pas effacée")
        receipts = [{"node": node.name_of_text(_key_text(origin)) or _key_text(origin),
                     "key": _key_text(origin), "at": _iso(erasure.ts)}]
        seen = {origin}
        for r in await receipt_rows(node.ledger, target):
            if r.origin in seen or r.erasure != erasure.id:
                continue
            seen.add(r.origin)
            text = _key_text(r.origin)
            receipts.append({"node": node.name_of_text(text) or text, "key": text,
                             "at": _iso(r.ts)})
        return {"id": target, "erasure": erasure.id, "erased_at": _iso(erasure.ts),
                "receipts": receipts}

    async def check_erased(self, entry_id: str) -> None:
        """Raise ErasedError when this node dropped the entry's body on an erasure."""
        try:
            key = bytes.fromhex(entry_id)
        except ValueError:
            return
        state = (await target_states(self._node.ledger, [key])).get(key)
        if state is not None and state.body_state == BodyState.ERASED:
            raise ErasedError(f"{entry_id} was erased by its origin / "
                              f"{entry_id} a été effacée par son origine")

    # -- every holder

    async def watch(self, interval: float = WATCH_INTERVAL) -> None:
        """Apply erasures as they are stored (and the ones already stored, on start)
        until cancelled (owned by the node): woken by each ledger commit
        (:meth:`Ledger.on_commit`), which also brings the targets erasures wait for;
        ``interval`` is only a backstop."""
        wake = asyncio.Event()
        remove = self._node.ledger.on_commit(wake.set)
        try:
            await self._follow(wake, interval)
        finally:
            remove()

    async def _follow(self, wake: asyncio.Event, interval: float) -> None:
        last = 0
        while True:
            wake.clear()  # commits from here on wake the next round
            rows: list[ErasureRow] = []
            try:
                rows = await erasure_rows_after(self._node.ledger, last)
                for row in rows:
                    last = row.item_no
                    self._remember(row)
                if self._pending:
                    await self._apply_pending()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("the erasure watcher failed; it goes on")
            if not rows:
                await wait_event(wake, interval)

    def _remember(self, row: ErasureRow) -> None:
        if len(row.target) != 64:
            return
        if len(self._pending) >= MAX_PENDING and row.target not in self._pending:
            self.invalid.inc()
            log.warning("erasure %s dropped: %d erasures wait for their target",
                        row.id, MAX_PENDING)
            return
        self._pending.setdefault(row.target, row)

    async def _apply_pending(self) -> None:
        node = self._node
        states = await target_states(node.ledger, [bytes.fromhex(t) for t in self._pending])
        for key, state in states.items():
            target = key.hex()
            row = self._pending.pop(target)
            if not erasure_applies(row.origin, state.origin):
                self.invalid.inc()
                log.warning("erasure %s names entry %s of another origin: no effect",
                            row.id, target)
                others = [r for r in await erasures_of(node.ledger, target)
                          if erasure_applies(r.origin, state.origin)]
                if not others:
                    continue
                row = others[0]
            async with self._lock:
                if state.body_state != BodyState.ERASED:
                    await self._drop(key)
                    log.info("entry %s erased on its origin's erasure %s", target, row.id)
                if row.origin != node.public_key.raw:
                    await self._send_receipt(target, row)

    async def _drop(self, key: bytes) -> None:
        node = self._node
        dropped = await node.ledger.drop_bodies([key], BodyState.ERASED)
        if dropped.entries:
            self.applied.inc()
        await asyncio.to_thread(forget_entries, index_path(node.ledger_path), [key])
        if not await node.ledger.scrub():
            log.warning("the ledger's WAL could not be truncated after erasing %s; "
                        "it will be at the next checkpoint", key.hex())

    async def _send_receipt(self, target: str, erasure: ErasureRow) -> None:
        node = self._node
        if target in self._receipted:
            return
        me = node.public_key.raw
        if any(r.origin == me for r in await receipt_rows(node.ledger, target)):
            self._receipted.add(target)
            return
        entry = await _header(node, target)
        tlp = receipt_tlp(entry.tlp if entry is not None else TLP(erasure.tlp))
        origin = PublicKey(erasure.origin)
        payload = ErasureReceipt(of=target, erasure=erasure.id)
        with contextlib.suppress(Exception):
            await node.submit_sealed(payload, tlp, (origin, node.public_key))
            self._receipted.add(target)
            self.receipts.inc()
            return
        log.warning("the receipt for erased entry %s could not be signed", target)


async def _header(node: ErasureHost, target: str) -> VerifiedEntry | None:
    try:
        return await node.ledger.get_entry(target)
    except Exception:
        return None


def _entry_id(entry_id: str) -> str:
    text = entry_id.lower() if isinstance(entry_id, str) else ""
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise UnknownEntryError(f"no entry {text[:64]!r} / aucune entrée {text[:64]!r}")
    return text
