"""Mutual aid: requests for assistance, their thread, and the expertise directory.

A jurisdiction under attack asks chosen peers for help with an :class:`AidRequest`
entry. Everything that follows is a separate signed entry of its author, threaded by
the request's entry id (``request``): :class:`AidOffer` (a helper offers),
:class:`AidWithdraw` (the offer's author takes it back), :class:`AidAccept` (the
requester accepts an offer), :class:`AidUpdate` (a note, and for the requester a
status), :class:`AidClose` (the requester closes with a summary). A node's
:class:`Capabilities` profile is the expertise directory's entry; the newest wins.

This module is the one place where the rules of a thread live (h11's ``_state.py``
shape): :data:`TRANSITIONS` is the table of what each action does to a request's
status, :func:`check` judges one entry against a state and raises
:class:`AidTransitionError` (with a stable ``code``) for an illegal one, and
:func:`fold` folds a whole thread into a :class:`RequestState`.

Invariants:
- Only the requester accepts, updates the status or closes; only an offer's author
  withdraws it; the requester or an accepted helper posts notes; nothing is legal
  after ``closed``; the requester does not offer to its own request.
- :func:`fold` is a pure function of the *set* of entries: whatever order they
  arrive in, the same set folds to the same state. Entries are applied in a
  canonical order (the author's time, raised to the time of what an entry refers
  to, then the action's rank, then the entry id). An entry that refers to an offer
  not (yet) in the set is *pending*: no effect, not judged; an entry that breaks a
  rule is *invalid*: no effect, listed with its code.
- Nothing here reads a clock: "overdue" is judged against a ``now`` passed in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal, TypeAlias

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from protocol.errors import LocalProtocolError
from protocol.payload_fields import (
    MAX_NEEDS,
    MAX_RELATED,
    Contact,
    EntryId,
    Need,
    Note,
    Severity,
    Title,
    UtcDatetime,
    dedupe,
)
from protocol.payload_models import LocalizedText

__all__ = [
    "AID_KINDS",
    "CAPABILITIES_KIND",
    "FOLLOW_UP_KINDS",
    "MAX_LANGUAGES",
    "MAX_PEOPLE",
    "MAX_SERVICES",
    "TRANSITIONS",
    "Action",
    "Affected",
    "AidAccept",
    "AidClose",
    "AidContact",
    "AidFollowUp",
    "AidOffer",
    "AidRequest",
    "AidTransitionError",
    "AidUpdate",
    "AidWithdraw",
    "Capabilities",
    "NeedItem",
    "NeedKind",
    "OfferState",
    "OfferStatus",
    "RequestState",
    "RequestStatus",
    "ThreadEntry",
    "check",
    "fold",
    "is_overdue",
]

MAX_SERVICES = 32
MAX_LANGUAGES = 8
MAX_PEOPLE = 10_000


class NeedKind(StrEnum):
    """What a requester may ask for, and what a capability profile may offer
    (docs/protocol.md, "Mutual aid"). Fixed vocabulary; new kinds are added here."""

    FORENSICS = "forensics"
    MALWARE_ANALYSIS = "malware-analysis"
    INCIDENT_COORDINATION = "incident-coordination"
    THREAT_HUNTING = "threat-hunting"
    SURGE_STAFF = "surge-staff"
    RECOVERY = "recovery"
    COMMUNICATIONS = "communications"
    LEGAL_PRIVACY = "legal-privacy"
    OTHER = "other"


class RequestStatus(StrEnum):
    OPEN = "open"
    IN_PROGRESS = "in-progress"
    CLOSED = "closed"


class OfferStatus(StrEnum):
    OPEN = "open"
    ACCEPTED = "accepted"
    WITHDRAWN = "withdrawn"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)


# A language tag: "fr", "en", "iu", "fr-CA" (BCP 47's common shape, lowercase primary).
Language: TypeAlias = Annotated[
    str, StringConstraints(strict=True, pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})?$")]
_Kinds: TypeAlias = Annotated[
    tuple[NeedKind, ...], Field(min_length=1, max_length=MAX_NEEDS),
    AfterValidator(lambda kinds: tuple(dict.fromkeys(kinds)))]


class NeedItem(_Model):
    """One thing asked for. Fields are declared in key order: a list of these is
    encoded as is (protocol/encoding.py sorts nothing inside lists)."""

    detail: Need | None = None
    kind: NeedKind


class AidContact(_Model):
    """Who to call, and how (phone, Signal, a bridge line...). Key order, as NeedItem."""

    channel: Contact | None = None
    name: Contact


class Affected(_Model):
    """What the attack hits (EU Cyber Solidarity Act: the affected entity and impacts)."""

    impact: Note | None = None
    sector: Title | None = None
    services: Annotated[tuple[Title, ...], Field(max_length=MAX_SERVICES),
                        AfterValidator(dedupe)] = ()


class AidRequest(_Model):
    """A request for assistance. Its entry id is the thread's id."""

    kind: Literal["aid-request"] = "aid-request"
    title: Title
    severity: Severity
    description: LocalizedText
    needs: Annotated[tuple[NeedItem, ...], Field(min_length=1, max_length=MAX_NEEDS)]
    affected: Affected | None = None
    mitigations: LocalizedText | None = None
    contact: AidContact
    related: Annotated[tuple[EntryId, ...], Field(max_length=MAX_RELATED),
                       AfterValidator(dedupe)] = ()
    respond_by: UtcDatetime | None = None

    @property
    def need_kinds(self) -> tuple[NeedKind, ...]:
        return tuple(dict.fromkeys(n.kind for n in self.needs))


class AidOffer(_Model):
    """An offer of help on a request, readable by the requester and its audience."""

    kind: Literal["aid-offer"] = "aid-offer"
    request: EntryId
    kinds: _Kinds
    detail: LocalizedText | None = None
    people: Annotated[int, Field(strict=True, ge=1, le=MAX_PEOPLE)] | None = None
    available_from: UtcDatetime | None = None
    available_until: UtcDatetime | None = None
    on_site: bool = False
    contact: AidContact | None = None


class AidWithdraw(_Model):
    """The offer's author takes it back."""

    kind: Literal["aid-withdraw"] = "aid-withdraw"
    request: EntryId
    offer: EntryId
    reason: LocalizedText | None = None


class AidAccept(_Model):
    """The requester accepts an offer."""

    kind: Literal["aid-accept"] = "aid-accept"
    request: EntryId
    offer: EntryId
    note: LocalizedText | None = None


class AidUpdate(_Model):
    """A note on the thread; the requester may also set the status (not ``closed``)."""

    kind: Literal["aid-update"] = "aid-update"
    request: EntryId
    status: Literal["open", "in-progress"] | None = None
    note: LocalizedText


class AidClose(_Model):
    """The requester closes the request with a summary."""

    kind: Literal["aid-close"] = "aid-close"
    request: EntryId
    summary: LocalizedText


class Capabilities(_Model):
    """A node's capability profile in the expertise directory; its newest wins."""

    kind: Literal["capabilities"] = "capabilities"
    skills: Annotated[tuple[NeedKind, ...], Field(max_length=len(NeedKind)),
                      AfterValidator(lambda kinds: tuple(dict.fromkeys(kinds)))] = ()
    detail: LocalizedText | None = None
    languages: Annotated[tuple[Language, ...], Field(max_length=MAX_LANGUAGES),
                         AfterValidator(dedupe)] = ()
    hours: Title | None = None
    available: bool = True
    contact: AidContact | None = None


AidFollowUp: TypeAlias = AidOffer | AidWithdraw | AidAccept | AidUpdate | AidClose
AID_KINDS = ("aid-request", "aid-offer", "aid-withdraw", "aid-accept", "aid-update",
             "aid-close")
FOLLOW_UP_KINDS = AID_KINDS[1:]
CAPABILITIES_KIND = "capabilities"


# --- the state machine ----------------------------------------------------------------


class Action(StrEnum):
    OFFER = "offer"
    WITHDRAW = "withdraw"
    ACCEPT = "accept"
    UPDATE = "update"
    CLOSE = "close"


_ACTION_OF: dict[type[BaseModel], Action] = {
    AidOffer: Action.OFFER, AidWithdraw: Action.WITHDRAW, AidAccept: Action.ACCEPT,
    AidUpdate: Action.UPDATE, AidClose: Action.CLOSE,
}
_RANK = {Action.OFFER: 1, Action.WITHDRAW: 2, Action.ACCEPT: 3, Action.UPDATE: 4,
         Action.CLOSE: 5}

_S = RequestStatus
TRANSITIONS: Mapping[tuple[RequestStatus, Action], RequestStatus | None] = {
    # (status, action) -> new status; None: unchanged (or, for an update, as it says).
    # A pair missing from the table is illegal: request_closed for every closed one.
    (_S.OPEN, Action.OFFER): None,
    (_S.OPEN, Action.WITHDRAW): None,
    (_S.OPEN, Action.ACCEPT): _S.IN_PROGRESS,
    (_S.OPEN, Action.UPDATE): None,
    (_S.OPEN, Action.CLOSE): _S.CLOSED,
    (_S.IN_PROGRESS, Action.OFFER): None,
    (_S.IN_PROGRESS, Action.WITHDRAW): None,
    (_S.IN_PROGRESS, Action.ACCEPT): None,
    (_S.IN_PROGRESS, Action.UPDATE): None,
    (_S.IN_PROGRESS, Action.CLOSE): _S.CLOSED,
}


class AidTransitionError(LocalProtocolError):
    """An entry a request's thread does not allow. ``code`` names the rule broken:

    ``not_requester`` (403: only the requester accepts, sets the status or closes),
    ``not_offer_author`` (403: only an offer's author withdraws it),
    ``not_participant`` (403: notes come from the requester or an accepted helper),
    ``request_closed`` (409: nothing after closed), ``own_request`` (409: the
    requester offers to itself), ``offer_not_open`` (409: accepting or withdrawing
    an offer already accepted or withdrawn), ``unknown_offer`` (404: the offer is
    not in this thread).
    """

    STATUS: Mapping[str, int] = {
        "not_requester": 403, "not_offer_author": 403, "not_participant": 403,
        "request_closed": 409, "own_request": 409, "offer_not_open": 409,
        "unknown_offer": 404,
    }

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.status = self.STATUS[code]


@dataclass(frozen=True)
class ThreadEntry:
    """One entry of a thread as the state machine sees it: its id (64 hex), its
    author (key text), its time (the author's clock, ms) and its payload."""

    id: str
    author: str
    ts: int
    payload: AidRequest | AidFollowUp


@dataclass
class OfferState:
    entry: ThreadEntry
    status: OfferStatus = OfferStatus.OPEN

    @property
    def payload(self) -> AidOffer:
        assert isinstance(self.entry.payload, AidOffer)
        return self.entry.payload


@dataclass
class RequestState:
    """A request folded with its thread.

    ``offers`` by offer id; ``updates`` the applied notes, accepts, withdrawals and
    the close, in applied order; ``invalid`` (entry id, code) of the entries that broke
    a rule; ``pending`` the ids of entries waiting for an offer not yet seen.
    """

    request: ThreadEntry
    status: RequestStatus = RequestStatus.OPEN
    offers: dict[str, OfferState] = field(default_factory=dict)
    updates: list[ThreadEntry] = field(default_factory=list)
    invalid: list[tuple[str, str]] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    closed: ThreadEntry | None = None

    @property
    def requester(self) -> str:
        return self.request.author

    @property
    def helpers(self) -> set[str]:
        """Authors of accepted offers."""
        return {o.entry.author for o in self.offers.values()
                if o.status is OfferStatus.ACCEPTED}

    @property
    def first_offer_ts(self) -> int | None:
        return min((o.entry.ts for o in self.offers.values()), default=None)

    def entry_ids(self) -> set[str]:
        return {self.request.id, *self.offers, *(u.id for u in self.updates)}


def _refuse(code: str, message: str) -> AidTransitionError:
    return AidTransitionError(code, message)


def check(state: RequestState, entry: ThreadEntry) -> RequestStatus:
    """Judge ``entry`` against ``state``; return the status it leaves. Changes nothing.

    Raises:
        AidTransitionError: the entry breaks a rule (its ``code`` says which).
        LocalProtocolError: ``entry`` is not a follow-up of this request.
    """
    payload = entry.payload
    action = _ACTION_OF.get(type(payload))
    if action is None or getattr(payload, "request", None) != state.request.id:
        raise LocalProtocolError("not a follow-up of this request")
    if (state.status, action) not in TRANSITIONS:
        raise _refuse("request_closed", "the request is closed / la demande est fermée")
    nxt = TRANSITIONS[(state.status, action)] or state.status
    requester = entry.author == state.requester
    if isinstance(payload, AidOffer):
        if requester:
            raise _refuse("own_request", "the requester cannot offer help to its own request"
                                         " / le demandeur ne peut pas s'offrir son aide")
    elif isinstance(payload, AidWithdraw | AidAccept):
        offer = state.offers.get(payload.offer)
        if offer is None:
            raise _refuse("unknown_offer", "no such offer on this request / "
                                           "aucune offre de ce nom pour cette demande")
        if isinstance(payload, AidAccept) and not requester:
            raise _refuse("not_requester", "only the requester accepts offers / "
                                           "seul le demandeur accepte les offres")
        if isinstance(payload, AidWithdraw) and entry.author != offer.entry.author:
            raise _refuse("not_offer_author", "only the offer's author withdraws it / "
                                              "seul l'auteur d'une offre peut la retirer")
        if offer.status is not OfferStatus.OPEN and not (
                isinstance(payload, AidWithdraw) and offer.status is OfferStatus.ACCEPTED):
            raise _refuse("offer_not_open", f"the offer is already {offer.status.value} / "
                                            f"l'offre est déjà {_FR[offer.status]}")
    elif isinstance(payload, AidUpdate):
        if payload.status is not None:
            if not requester:
                raise _refuse("not_requester", "only the requester sets the status / "
                                               "seul le demandeur change le statut")
            nxt = RequestStatus(payload.status)
        elif not requester and entry.author not in state.helpers:
            raise _refuse("not_participant", "notes come from the requester or an accepted "
                                             "helper / les notes viennent du demandeur ou "
                                             "d'un aidant accepté")
    elif isinstance(payload, AidClose) and not requester:
        raise _refuse("not_requester", "only the requester closes the request / "
                                       "seul le demandeur ferme la demande")
    return nxt


_FR = {OfferStatus.OPEN: "ouverte", OfferStatus.ACCEPTED: "acceptée",
       OfferStatus.WITHDRAWN: "retirée"}


def _apply(state: RequestState, entry: ThreadEntry, status: RequestStatus) -> None:
    payload = entry.payload
    state.status = status
    if isinstance(payload, AidOffer):
        state.offers[entry.id] = OfferState(entry)
        return
    if isinstance(payload, AidAccept):
        state.offers[payload.offer].status = OfferStatus.ACCEPTED
    elif isinstance(payload, AidWithdraw):
        state.offers[payload.offer].status = OfferStatus.WITHDRAWN
    elif isinstance(payload, AidClose):
        state.closed = entry
    state.updates.append(entry)


def fold(request: ThreadEntry, follow_ups: Iterable[ThreadEntry]) -> RequestState:
    """The state of ``request`` after its follow-ups: the same for any order of them.

    Entries of another thread, repeated ids and entries that break a rule have no
    effect (the last are listed in ``invalid``); see the module's invariants.

    Raises:
        LocalProtocolError: ``request`` is not an :class:`AidRequest`.
    """
    if not isinstance(request.payload, AidRequest):
        raise LocalProtocolError("a thread starts with an aid request")
    state = RequestState(request)
    unique = {e.id: e for e in follow_ups
              if getattr(e.payload, "request", None) == request.id and e.id != request.id}
    offers_ts = {e.id: e.ts for e in unique.values() if isinstance(e.payload, AidOffer)}

    def order(e: ThreadEntry) -> tuple[int, int, str]:
        ref = getattr(e.payload, "offer", None)
        ts = max(e.ts, request.ts, offers_ts.get(ref, 0) if ref else 0)
        return ts, _RANK[_ACTION_OF[type(e.payload)]], e.id

    for entry in sorted(unique.values(), key=order):
        ref = getattr(entry.payload, "offer", None)
        if ref is not None and ref not in offers_ts:
            state.pending.append(entry.id)
            continue
        try:
            status = check(state, entry)
        except AidTransitionError as exc:
            state.invalid.append((entry.id, exc.code))
            continue
        _apply(state, entry, status)
    return state


def is_overdue(state: RequestState, now: datetime) -> bool:
    """True when the request has a ``respond_by`` in the past and is not closed."""
    payload = state.request.payload
    assert isinstance(payload, AidRequest)
    return (payload.respond_by is not None and state.status is not RequestStatus.CLOSED
            and payload.respond_by < now)
