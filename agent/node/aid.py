"""Mutual aid on a node: requests for assistance, their threads, the expertise directory.

:class:`NodeAid` is what the API and the CLI call (``node.aid``). It writes own aid
entries through the node (signed, durable, replicated like every entry), reads threads
from the query tables (agent/storage/aid.py) and judges them with the state machine of
protocol/aid.py, which holds every rule.

Invariants:
- On submit, a follow-up is judged against the thread as this node knows it *before*
  anything is signed; an illegal one raises :class:`AidTransitionError` and writes
  nothing. Own follow-ups are serialised by one lock, so two concurrent submissions
  cannot both pass a check only one of them may pass.
- A follow-up (offer, withdrawal, accept, update, close) is sealed with the request's
  TLP to the request's audience still in the trust list (the requester always in it),
  so it is readable by exactly who could read the request, and no one else.
- A request is AMBER, AMBER+STRICT or RED (default AMBER to the chosen audience;
  without one, every member): a request for help is never public.
- On receipt, a remote entry that breaks the rules is stored (the chain stays whole),
  has no effect on the thread (``fold`` skips it) and is counted in
  ``entraide_aid_invalid_entries_total``: the watcher (:meth:`NodeAid.watch`) follows
  the new aid rows, feeds the ``event: aid`` subscribers and keeps the metrics.
- A request this node cannot read is "not found" (404), like an unknown id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from agent.errors import NodeStoppingError, UnknownAudienceError, UnknownEntryError
from agent.metrics import Counter, Gauge, Histogram, Registry
from agent.node.membership import Membership
from agent.node.submission import Submission
from agent.node.wakeup import wait_event
from agent.storage.aid import (
    AidRow,
    aid_rows_after,
    capability_rows,
    last_item_no,
    request_rows,
    thread_rows,
)
from agent.storage.ledger import Ledger
from agent.storage.queries import format_ms
from protocol.aid import (
    AidAccept,
    AidClose,
    AidFollowUp,
    AidOffer,
    AidRequest,
    AidUpdate,
    AidWithdraw,
    Capabilities,
    NeedKind,
    RequestState,
    RequestStatus,
    ThreadEntry,
    check,
    fold,
    is_overdue,
)
from protocol.entries import TLP, VerifiedEntry
from protocol.keys import PublicKey
from protocol.payloads import Payload, parse_payload_json


class AidHost(Protocol):
    """What :class:`NodeAid` needs of the node (agent/node/node.py implements it); a
    protocol, so this module does not import the node that owns it."""

    clock: Callable[[], float]
    members: Membership

    @property
    def name(self) -> str: ...
    @property
    def public_key(self) -> PublicKey: ...
    @property
    def ledger(self) -> Ledger: ...
    def name_of_text(self, key_text: str) -> str | None: ...
    def audience_names(self, audience: Sequence[bytes] | None) -> list[str] | None: ...
    def audience_of(self, entry: VerifiedEntry) -> tuple[bytes, ...] | None: ...
    async def submit(self, submissions: Sequence[Submission]) -> list[VerifiedEntry]: ...
    async def submit_sealed(self, payload: Payload, tlp: TLP,
                            recipients: tuple[PublicKey, ...]) -> VerifiedEntry: ...

__all__ = ["AID_TLPS", "EVENT_KINDS", "AidEvent", "AidHost", "NodeAid"]

log = logging.getLogger(__name__)

AID_TLPS = (TLP.AMBER, TLP.AMBER_STRICT, TLP.RED)
EVENT_KINDS = {"aid-request": "request", "aid-offer": "offer", "aid-withdraw": "withdraw",
               "aid-accept": "accept", "aid-update": "update", "aid-close": "close"}
"""Payload kind -> the ``kind`` of an ``event: aid`` (docs/operations.md)."""
WATCH_INTERVAL = 60.0
"""The aid watcher wakes on every ledger commit; this backstop only bounds how long a
missed wake-up (a bug) could hide an event."""
MAX_SUBSCRIBERS = 128
MAX_SCAN = 2000
"""Most requests one list call folds (a filtered page may come back short, with ``next``)."""


AidEvent = dict[str, Any]


def _entry(row: AidRow) -> ThreadEntry:
    payload = parse_payload_json(row.payload_json)
    assert isinstance(payload, AidRequest | AidOffer | AidWithdraw | AidAccept | AidUpdate
                      | AidClose)
    return ThreadEntry(row.id, row.origin, row.ts, payload)


class NodeAid:
    """The mutual-aid operations of one node (see the module's invariants)."""

    def __init__(self, node: AidHost, registry: Registry) -> None:
        self._node = node
        self._lock = asyncio.Lock()
        self._subscribers: set[asyncio.Queue[AidEvent]] = set()
        self._status: dict[str, RequestStatus] = {}
        self._offered: set[str] = set()
        self.open_requests: Gauge = registry.gauge(
            "entraide_aid_open_requests", "Requests for assistance this node can read that "
                                          "are not closed (open or in progress).")
        self.first_offer: Histogram = registry.histogram(
            "entraide_aid_time_to_first_offer_seconds",
            "Time from one of this node's requests to the first offer it received.",
            buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600))
        self.invalid: Counter = registry.counter(
            "entraide_aid_invalid_entries_total",
            "Received aid entries that break a thread's rules (stored, without effect), "
            "by rule.", ("code",))
        self.entries: Counter = registry.counter(
            "entraide_aid_entries_total", "Aid entries this node can read, by kind.", ("kind",))

    # -- writing

    async def raise_request(self, payload: AidRequest, tlp: TLP = TLP.AMBER,
                            audience: Sequence[str] | None = None) -> dict[str, Any]:
        """Sign and commit a request for assistance; return it as ``get`` shows it.

        Raises:
            UnknownAudienceError: a bad audience, RED without one, or a TLP below AMBER.
        """
        if TLP(tlp) not in AID_TLPS:
            raise UnknownAudienceError(
                "a request for assistance is AMBER, AMBER+STRICT or RED / une demande "
                "d'assistance est AMBER, AMBER+STRICT ou RED")
        names = None if audience is None else tuple(audience)
        (entry,) = await self._node.submit([Submission(payload, TLP(tlp), names)])
        return await self.get(entry.id)

    async def _follow_up(self, request_id: str, make: Callable[[RequestState], AidFollowUp]
                         ) -> tuple[VerifiedEntry, RequestState]:
        async with self._lock:
            request_entry, state = await self._thread(request_id)
            payload = make(state)
            me = self._node.public_key.text
            check(state, ThreadEntry("0" * 64, me, int(self._node.clock() * 1000), payload))
            recipients = self._node.members.same_audience(
                request_entry.tlp, self._node.audience_of(request_entry))
            entry = await self._node.submit_sealed(payload, request_entry.tlp, recipients)
            return entry, state

    async def offer(self, request_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Offer help on a request. Returns ``{"id", "request", "status": "open"}``.

        Raises:
            UnknownEntryError: no readable request with that id.
            AidTransitionError: ``request_closed``, ``own_request``.
            PayloadError: bad fields.
        """
        offer = _payload(AidOffer, {**fields, "request": request_id})
        entry, _ = await self._follow_up(request_id, lambda state: offer)
        return {"id": entry.id, "request": request_id, "status": "open", "seq": entry.seq}

    async def withdraw(self, request_id: str, offer_id: str,
                       reason: dict[str, Any] | None = None) -> dict[str, Any]:
        payload = _payload(AidWithdraw, {"request": request_id, "offer": offer_id,
                                         "reason": reason})
        await self._follow_up(request_id, lambda state: payload)
        return await self.get(request_id)

    async def accept(self, request_id: str, offer_id: str,
                     note: dict[str, Any] | None = None) -> dict[str, Any]:
        payload = _payload(AidAccept, {"request": request_id, "offer": offer_id.lower(),
                                       "note": note})
        await self._follow_up(request_id, lambda state: payload)
        return await self.get(request_id)

    async def update(self, request_id: str, note: dict[str, Any],
                     status: str | None = None) -> dict[str, Any]:
        payload = _payload(AidUpdate, {"request": request_id, "note": note, "status": status})
        await self._follow_up(request_id, lambda state: payload)
        return await self.get(request_id)

    async def close(self, request_id: str, summary: dict[str, Any]) -> dict[str, Any]:
        payload = _payload(AidClose, {"request": request_id, "summary": summary})
        await self._follow_up(request_id, lambda state: payload)
        return await self.get(request_id)

    async def publish_capabilities(self, payload: Capabilities, tlp: TLP = TLP.GREEN,
                                   audience: Sequence[str] | None = None) -> dict[str, Any]:
        """Publish this node's capability profile (the newest replaces the others)."""
        names = None if audience is None else tuple(audience)
        (entry,) = await self._node.submit([Submission(payload, TLP(tlp), names)])
        return {"id": entry.id, "origin_name": self._node.name,
                **payload.model_dump(mode="json", exclude={"kind"}),
                "updated": format_ms(entry.ts)}

    # -- reading

    async def _thread(self, request_id: str) -> tuple[VerifiedEntry, RequestState]:
        rid = request_id.lower() if isinstance(request_id, str) else ""
        request, rows = await thread_rows(self._node.ledger, rid)
        entry = None if request is None else await self._node.ledger.get_entry(rid)
        if request is None or entry is None or request.retracted:
            raise UnknownEntryError(f"no request for assistance {rid[:64]!r} / aucune "
                                    "demande d'assistance de ce nom")
        return entry, fold(_entry(request), [_entry(r) for r in rows if not r.retracted])

    async def get(self, request_id: str) -> dict[str, Any]:
        """A request with its status, offers, updates (docs/operations.md, "Mutual aid").

        Raises:
            UnknownEntryError: unknown, not a request, or not readable here.
        """
        entry, state = await self._thread(request_id)
        view = self._view(state, entry)
        self._status[state.request.id] = state.status
        return view

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._node.clock(), UTC)

    def _name(self, key_text: str) -> str | None:
        return self._node.name_of_text(key_text)

    def _view(self, state: RequestState, entry: VerifiedEntry | None,
              full: bool = True) -> dict[str, Any]:
        req = state.request
        payload = req.payload
        assert isinstance(payload, AidRequest)
        view: dict[str, Any] = {
            "id": req.id, **payload.model_dump(mode="json", exclude={"kind"}),
            "origin": req.author, "origin_name": self._name(req.author),
            "ts": req.ts, "created": format_ms(req.ts), "status": state.status.value,
            "overdue": is_overdue(state, self._now()),
            "mine": req.author == self._node.public_key.text,
            "summary": None if state.closed is None else _fields(state.closed)["summary"],
        }
        if entry is not None:
            view.update(tlp=entry.tlp.value, seq=entry.seq,
                        audience=self._node.audience_names(self._node.audience_of(entry)))
        offers = [{"id": o.entry.id, "origin": o.entry.author,
                   "origin_name": self._name(o.entry.author), "ts": o.entry.ts,
                   "status": o.status.value, **_fields(o.entry)}
                  for o in state.offers.values()]
        if not full:
            view["offer_count"] = len(offers)
            return view
        view["offers"] = offers
        view["updates"] = [{"id": u.id, "kind": EVENT_KINDS[u.payload.kind],
                            "origin": u.author, "origin_name": self._name(u.author),
                            "ts": u.ts, **_fields(u)} for u in state.updates]
        view["invalid"] = [{"id": i, "code": c} for i, c in state.invalid]
        view["pending"] = list(state.pending)
        view["first_offer_ts"] = state.first_offer_ts
        return view

    async def list_requests(self, *, status: str | None = None, mine: bool = False,
                   need: str | None = None, limit: int = 100,
                   cursor: int | None = None) -> tuple[list[dict[str, Any]], int | None]:
        """Requests this node can read, newest first, filtered; and the next cursor.

        The cursor is the row after which to continue (None at the end).
        """
        me = self._node.public_key.text
        out: list[dict[str, Any]] = []
        before, scanned = cursor, 0
        while len(out) < limit and scanned < MAX_SCAN:
            rows = await request_rows(self._node.ledger, before=before, limit=100)
            if not rows:
                return out, None
            for row in rows:
                before, scanned = row.item_no, scanned + 1
                if row.retracted or (mine and row.origin != me):
                    continue
                if need is not None and need not in {n["kind"] for n in row.fields["needs"]}:
                    continue
                _, thread = await thread_rows(self._node.ledger, row.id)
                state = fold(_entry(row), [_entry(r) for r in thread if not r.retracted])
                self._status[row.id] = state.status
                if status is not None and state.status.value != status:
                    continue
                view = self._view(state, None, full=False)
                view["tlp"] = row.tlp
                out.append(view)
                if len(out) == limit:
                    return out, row.item_no
        return out, before

    async def capabilities(self, *, need: str | None = None, language: str | None = None,
                           available: bool | None = None) -> list[dict[str, Any]]:
        """Each origin's newest capability profile, filtered; by origin name."""
        newest: dict[str, AidRow] = {}
        for row in await capability_rows(self._node.ledger):
            known = newest.get(row.origin)
            if known is None or (row.ts, row.seq) > (known.ts, known.seq):
                newest[row.origin] = row
        out = []
        for row in newest.values():
            fields = row.fields
            if need is not None and need not in fields.get("skills", ()):
                continue
            if language is not None and not any(
                    lang.split("-")[0] == language.lower() for lang in fields.get("languages", ())):
                continue
            if available is not None and bool(fields.get("available", True)) != available:
                continue
            out.append({"origin": row.origin, "origin_name": self._name(row.origin),
                        "id": row.id, **fields, "updated": format_ms(row.ts)})
        out.sort(key=lambda c: str(c["origin_name"] or c["origin"]))
        return out

    async def suggest(self, need: NeedKind, language: str | None = None) -> dict[str, Any]:
        """An audience for a request: the members whose profile offers ``need`` (and
        ``language``) and says they are available now; this node left out."""
        found = await self.capabilities(need=need.value, language=language, available=True)
        me = self._node.public_key.text
        names = [c["origin_name"] for c in found if c["origin"] != me and c["origin_name"]]
        return {"need": need.value, "language": language, "audience": names,
                "capabilities": found}

    # -- the watcher: events and metrics

    def subscribe(self, maxsize: int = 256) -> asyncio.Queue[AidEvent]:
        """A queue of ``event: aid`` data for new aid entries; :meth:`unsubscribe` it.

        Raises:
            NodeStoppingError: too many subscribers.
        """
        if len(self._subscribers) >= MAX_SUBSCRIBERS:
            raise NodeStoppingError("too many aid subscribers")
        queue: asyncio.Queue[AidEvent] = asyncio.Queue(maxsize)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[AidEvent]) -> None:
        self._subscribers.discard(queue)

    async def watch(self, interval: float = WATCH_INTERVAL) -> None:
        """Follow new aid rows until cancelled (owned by the node): woken by each ledger
        commit (:meth:`Ledger.on_commit`), so an event is reported as soon as its entry
        is stored; ``interval`` is only a backstop."""
        ledger = self._node.ledger
        wake = asyncio.Event()
        remove = ledger.on_commit(wake.set)
        try:
            await self._follow(ledger, wake, interval)
        finally:
            remove()

    async def _follow(self, ledger: Ledger, wake: asyncio.Event, interval: float) -> None:
        last = await last_item_no(ledger)
        with contextlib.suppress(Exception):
            for row in await request_rows(ledger, limit=MAX_SCAN):
                self._status[row.id] = (await self._fold_row(row)).status
            self._set_gauge()
        while True:
            await wait_event(wake, interval)
            wake.clear()  # commits from here on wake the next round
            try:
                rows = await aid_rows_after(ledger, last)
                for row in rows:
                    last = row.item_no
                    await self._seen(row)
                if rows:
                    self._set_gauge()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("the aid watcher failed on a row; it goes on")

    async def _fold_row(self, request: AidRow) -> RequestState:
        _, thread = await thread_rows(self._node.ledger, request.id)
        return fold(_entry(request), [_entry(r) for r in thread if not r.retracted])

    async def _seen(self, row: AidRow) -> None:
        self.entries.inc(labels=(row.kind,))
        request_id = row.id if row.kind == "aid-request" else str(row.fields["request"])
        request, _ = await thread_rows(self._node.ledger, request_id)
        event: AidEvent = {"kind": EVENT_KINDS[row.kind], "id": row.id,
                           "request": request_id, "origin": row.origin,
                           "origin_name": self._name(row.origin), "ts": row.ts}
        if request is not None:
            state = await self._fold_row(request)
            self._status[request_id] = state.status
            event["status"] = state.status.value
            me = self._node.public_key.text
            codes = dict(state.invalid)
            if row.id in codes:
                event["invalid"] = codes[row.id]
                if row.origin != me:
                    self.invalid.inc(labels=(codes[row.id],))
            if (row.kind == "aid-offer" and request.origin == me and row.id in state.offers
                    and request_id not in self._offered):
                self._offered.add(request_id)
                now_ms = self._node.clock() * 1000
                self.first_offer.observe(max(0.0, (now_ms - request.ts) / 1000))
        for queue in list(self._subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(event)

    def _set_gauge(self) -> None:
        self.open_requests.set(sum(1 for s in self._status.values()
                                   if s is not RequestStatus.CLOSED))


def _fields(entry: ThreadEntry) -> dict[str, Any]:
    return entry.payload.model_dump(mode="json", exclude={"kind", "request"})


def _payload(model: type[Any], fields: dict[str, Any]) -> Any:
    """Validate a follow-up's fields as ``model`` (PayloadError naming the bad ones)."""
    clean = {k: v for k, v in fields.items() if v is not None}
    return parse_payload_json({**clean, "kind": model.model_fields["kind"].default})

