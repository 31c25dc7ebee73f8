"""The local API's bodies and query strings as pydantic models
(docs/operations.md, "The local HTTP API").

These models do two jobs: request models *validate* input (one validation per
request; a failure is a 422 naming the fields), and every model, request or
response, is what ``agent/web/openapi.py`` publishes in ``/api/v1/openapi.json``. The
tests validate real responses against the response models, which forbid unknown
fields, so the published document cannot drift from what the API sends.

Invariants:
- Request models are frozen and refuse unknown fields; query models too (a typo in a
  filter name is an error, not a silently ignored filter).
- Every list and string has a bound.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from protocol.entries import MAX_AUDIENCE, TLP
from protocol.indicators import MAX_INDICATOR_CHARS, IndicatorType
from protocol.payloads import Note, Observation, Sighting, UtcDatetime

__all__ = [
    "MAX_BATCH",
    "MAX_PAGE",
    "ROUTING_FIELDS",
    "BatchCreated",
    "BatchResults",
    "BatchRouting",
    "BodiesOut",
    "ErrorBody",
    "ErrorDetail",
    "ForkList",
    "ForkOut",
    "ForkRecordOut",
    "Health",
    "IndicatorOut",
    "ItemResult",
    "KeyRotationOut",
    "LedgerCountsOut",
    "ObservationBatch",
    "ObservationList",
    "ObservationOut",
    "ObservationQuery",
    "ObservationSubmit",
    "PeerAdd",
    "PeerList",
    "PeerOut",
    "PeerRemoved",
    "Refanged",
    "RestoreOut",
    "RetiredKeyOut",
    "RetractRequest",
    "RetractionCreated",
    "Routing",
    "SightingCreated",
    "SightingSubmit",
    "StatusOut",
    "StreamQuery",
    "SubmitQuery",
    "TrustFileOut",
    "VerifyOut",
    "VerifyProblemOut",
]

MAX_BATCH = 1000
MAX_PAGE = 1000
DEFAULT_PAGE = 100
_MAX_NAME = 64


def _tlp_label(value: Any) -> Any:
    """Accept ``amber``, ``TLP:AMBER`` and ``AMBER`` alike; anything else is left to fail."""
    if isinstance(value, str):
        text = value.strip().upper()
        return text.removeprefix("TLP:")
    return value


TlpLabel = Annotated[TLP, BeforeValidator(_tlp_label)]
PeerName = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=_MAX_NAME)]
Audience = Annotated[tuple[PeerName, ...], Field(max_length=MAX_AUDIENCE)]
EntryIdText = Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{64}$")]


class _In(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --- requests ---------------------------------------------------------------------------


class ObservationSubmit(Observation):
    """An observation to share: the payload's fields plus its TLP and audience.

    ``audience``: peer names from the trust list (this node's own name is allowed).
    Without it, AMBER and AMBER+STRICT go to every member known now; RED needs it;
    CLEAR and GREEN refuse it.
    """

    tlp: TlpLabel = TLP.GREEN
    audience: Audience | None = None


class Routing(_In):
    """The fields of an ObservationSubmit that are not the payload's (fast path)."""

    tlp: TlpLabel = TLP.GREEN
    audience: Audience | None = None


_PARTIAL = ("keep the valid items: answer item by item (stored, duplicate, refused with "
            "the reason) instead of refusing the whole batch for one bad item")
_REFANG = ("undo defanging before normalising: hxxp:// and hxxps://, fxp://, [.], (.), "
           "[dot], [:]//, [@]; the answer says which values were refanged")


class BatchRouting(_In):
    """The fields of an ObservationBatch besides its items (fast path)."""

    tlp: TlpLabel | None = None
    audience: Audience | None = None
    partial: bool = Field(False, description=_PARTIAL)
    refang: bool = Field(False, description=_REFANG)


class SubmitQuery(_In):
    """Query of ``POST /api/v1/observations`` (a batch may also say them in its body)."""

    partial: bool = Field(False, description=_PARTIAL)
    refang: bool = Field(False, description=_REFANG)


ROUTING_FIELDS = ("tlp", "audience")


class ObservationBatch(_In):
    """Up to 1,000 observations in one request, committed in one transaction.

    ``tlp`` and ``audience`` here are defaults for items that do not give their own.
    """

    observations: Annotated[list[ObservationSubmit], Field(min_length=1, max_length=MAX_BATCH)]
    tlp: TlpLabel | None = None
    audience: Audience | None = None
    partial: bool = Field(False, description=_PARTIAL)
    refang: bool = Field(False, description=_REFANG)


class SightingSubmit(Sighting):
    """A sighting of an existing entry this node can read, with its TLP and audience:
    by default the target's TLP and audience; never a lower TLP nor a wider audience."""

    tlp: TlpLabel | None = None
    audience: Audience | None = None


class RetractRequest(_In):
    """Why the observation is withdrawn (optional; the body may be empty)."""

    reason: Note | None = None


class PeerAdd(_In):
    """A peer to trust: either a peer ``card`` (``entraide1...``), or ``name`` + ``key``
    (+ optional ``url``); ``jurisdiction`` is optional in both forms."""

    card: Annotated[str, StringConstraints(strict=True, max_length=4096)] | None = None
    name: PeerName | None = None
    key: Annotated[str, StringConstraints(strict=True, max_length=100)] | None = None
    url: Annotated[str, StringConstraints(strict=True, max_length=2048)] | None = None
    jurisdiction: Annotated[str, StringConstraints(strict=True, max_length=100)] | None = None

    @model_validator(mode="after")
    def _one_form(self) -> PeerAdd:
        if self.card is not None:
            if self.name is not None or self.key is not None or self.url is not None:
                raise ValueError("give either 'card', or 'name' and 'key' (and 'url'), not both")
        elif self.name is None or self.key is None:
            raise ValueError("give 'card', or both 'name' and 'key'")
        return self


class PeerUpdate(_In):
    """Changes to a trusted peer: its ``url`` (``""`` removes it: trusted as an author,
    not dialled), ``key`` (its new Ed25519 key) or both from its new ``card``, and
    ``jurisdiction`` (``""`` removes it). Fields left out are kept."""

    card: Annotated[str, StringConstraints(strict=True, max_length=4096)] | None = None
    key: Annotated[str, StringConstraints(strict=True, max_length=100)] | None = None
    url: Annotated[str, StringConstraints(strict=True, max_length=2048)] | None = None
    jurisdiction: Annotated[str, StringConstraints(strict=True, max_length=100)] | None = None

    @model_validator(mode="after")
    def _something(self) -> PeerUpdate:
        if self.card is not None and (self.key is not None or self.url is not None):
            raise ValueError("give either 'card', or 'key' and/or 'url', not both")
        if self.card is None and self.key is None and self.url is None \
                and self.jurisdiction is None:
            raise ValueError("give 'url', 'key', 'card' or 'jurisdiction' to change")
        return self


# --- query strings ------------------------------------------------------------------------


def _time_filter(value: Any) -> Any:
    """RFC 3339 text, or an integer count of ms since the epoch."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return value


# The ledger's times are SQLite integers: a filter outside them is a 422, not an
# OverflowError from the driver and a 500 (found by the API fuzzer: since=2**63).
_MsInt = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]

TimeFilter = Annotated[
    _MsInt | UtcDatetime,
    BeforeValidator(_time_filter),
    Field(description="RFC 3339 time (2026-01-31T00:00:00Z) or ms since the epoch"),
]


class _Query(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)


class _Filters(_Query):
    type: IndicatorType | None = Field(None, description="indicator type")
    value: Annotated[str, Field(max_length=MAX_INDICATOR_CHARS)] | None = Field(
        None, description="indicator value (normalised for its type when type is given)")
    origin: Annotated[str, Field(max_length=100)] | None = Field(
        None, description="origin: peer name, this node's name, or ed25519 key")
    tlp: TlpLabel | None = None
    since: TimeFilter | None = Field(None, description="entry time >= since (inclusive)")
    until: TimeFilter | None = Field(None, description="entry time < until (exclusive)")
    include_retracted: bool = False


class ObservationQuery(_Filters):
    """Filters of ``GET /api/v1/observations`` (ANDed), newest first."""

    limit: int = Field(DEFAULT_PAGE, ge=1, le=MAX_PAGE)
    cursor: Annotated[str, Field(max_length=64)] | None = Field(
        None, description="the 'next' value of the previous page")


class StreamQuery(_Filters):
    """Filters of ``GET /api/v1/stream``; ``last_event_id`` stands in for the
    ``Last-Event-ID`` header (which wins when both are given)."""

    last_event_id: Annotated[str, Field(max_length=80)] | None = None


# --- responses ----------------------------------------------------------------------------


class Health(_Out):
    status: Literal["ok"]


class ErrorDetail(_Out):
    code: str
    message: str


class ErrorBody(_Out):
    """Every error: a stable machine ``code`` and a human ``message``."""

    error: ErrorDetail


class LocalizedTextOut(_Out):
    en: str | None = None
    fr: str | None = None


class Refanged(_Out):
    index: int = Field(description="the item's place in the batch (0 for one observation)")
    submitted: str = Field(description="the value as submitted, defanged")
    value: str = Field(description="the value refanged (then normalised as stored)")


class ObservationOut(_Out):
    """An observation as returned. ``origin_name`` is the trust-list name of the
    origin (this node's own name for its own), null if the origin is no longer trusted.
    ``audience`` (peer names, or key ids in hex when unknown) and ``verified`` are
    given by ``GET /api/v1/observations/{id}`` and on creation."""

    id: str
    type: str
    value: str
    tlp: str
    confidence: int | None = None
    severity: str | None = None
    description: LocalizedTextOut | None = None
    tags: list[str] = []
    references: list[str] = []
    first_seen: str | None = None
    last_seen: str | None = None
    valid_until: str | None = None
    origin: str
    origin_name: str | None
    seq: int
    ts: int = Field(description="author's clock, ms since the epoch")
    retracted: bool
    audience: list[str] | None = None
    verified: bool | None = None
    sightings: int | None = None
    quarantined: bool = Field(False, description="signed by a key past the seq it is "
                              "trusted to (declared compromised, or retired): do not act on "
                              "it (docs/operations.md, \"A key is compromised\")")
    refanged: Refanged | None = Field(None, description="on creation, when the value was "
                                                        "refanged (?refang=true)")


class BatchCreated(_Out):
    ids: list[str] = Field(description="entry ids, in the order submitted (a duplicate "
                                       "item has the id of the first item it repeats)")
    seqs: list[int]
    count: int = Field(description="entries written")
    duplicates: list[int] = Field([], description="indexes of items identical to an earlier "
                                                  "item of the batch: stored once")
    refanged: list[Refanged] = []


class ItemResult(_Out):
    index: int
    status: Literal["stored", "duplicate", "refused"]
    id: str | None = None
    seq: int | None = None
    of: int | None = Field(None, description="a duplicate: the index of the item it repeats")
    reason: str | None = Field(None, description="a refused item: why")


class BatchResults(_Out):
    """Answer of a batch submitted with ``partial``: every item's fate, in order."""

    results: list[ItemResult]
    stored: int
    duplicates: int
    refused: int
    ids: list[str] = Field(description="ids of the stored entries, in order")
    refanged: list[Refanged] = []


class ObservationList(_Out):
    observations: list[ObservationOut]
    next: str | None = Field(description="cursor of the next page; null on the last page")


class IndicatorOut(_Out):
    type: str
    value: str
    observations: list[ObservationOut]
    count: int
    origins: list[str] = Field(description="origin names (key text when not in the trust list)")
    origin_keys: list[str]
    first_seen: str | None
    last_seen: str | None


class SightingCreated(_Out):
    id: str
    seq: int
    ts: int
    of: str
    tlp: str
    audience: list[str] | None


class RetractionCreated(_Out):
    id: str
    seq: int
    ts: int
    of: str
    retracted: Literal[True]


class RetiredKeyOut(_Out):
    """A member's earlier key: trusted for its chain up to ``last_seq`` only."""

    key: str
    fingerprint: str
    last_seq: int
    reason: Literal["rotated", "compromised"]


class PeerOut(_Out):
    name: str
    jurisdiction: str | None
    key: str
    fingerprint: str
    url: str | None
    connected: bool
    last_seen: str | None
    forked: bool
    lag_entries: int | None = Field(
        description="entries this node holds that the peer has not shown it holds (from "
                    "its last known heads, kept while it is away); null until its whole "
                    "version vector has reached this node once")
    behind_entries: int | None = Field(
        description="entries the peer has shown it holds that this node lacks")
    retired_keys: list[RetiredKeyOut] = Field(
        description="earlier keys (a key rotation it announced, or declared compromised)")
    compromised_since_seq: int | None = Field(
        description="its current key is compromised from this seq on (entraide peers "
                    "compromised): its entries from there are quarantined")
    quarantined: int = Field(
        description="entries of its current key held past its compromise (they arrived "
                    "before the mark); later ones are refused")


class PeerList(_Out):
    peers: list[PeerOut]


class PeerRemoved(_Out):
    removed: PeerOut


class LedgerCountsOut(_Out):
    entries: int
    origins: int
    forked_origins: int
    held_ahead_of_gaps: int


class ForkOut(_Out):
    origin: str
    origin_name: str | None
    seq: int
    detected: str
    cleared: str | None


class ForkRecordOut(ForkOut):
    proof: str
    """``ForkProof.encode()`` in base64url: two entries signed by the origin with the
    same seq (docs/protocol.md §3); anyone holding the origin's key can check it."""


class ForkList(_Out):
    forks: list[ForkRecordOut]


class TrustFileOut(_Out):
    """Whether peers.toml as it is on disk is in force; ``error`` says why not (the
    previous trust list then stays in force, whole)."""

    valid: bool
    error: str | None


class RestoreOut(_Out):
    state: Literal["catching-up"]
    restored: str | None
    own_seq: int
    peers_seq: int
    peers_heard: list[str]
    peers_needed: list[str]
    message: dict[str, str]


class KeyRotationOut(_Out):
    state: Literal["restart-needed"]
    new_key: str
    new_fingerprint: str
    handover_seq: int
    handover_id: str
    message: dict[str, str]


class StatusOut(_Out):
    name: str
    jurisdiction: str | None
    key: str
    fingerprint: str
    peer_url: str
    peers: list[PeerOut]
    trust_file: TrustFileOut
    ledger: LedgerCountsOut
    forks: list[ForkOut]
    restore: RestoreOut | None = Field(
        description="restored from a backup and not caught up yet: why it signs nothing")
    key_rotation: KeyRotationOut | None = Field(
        description="a key hand-over signed, waiting for a restart (entraide key rotate)")


class VerifyProblemOut(_Out):
    origin: str | None
    origin_name: str | None
    seq: int | None
    what: str


class BodiesOut(_Out):
    """Entries on the chains by what this node holds of their body (docs/protocol.md
    §3): a header without its body is a valid chain member."""

    present: int
    expired: int
    erased: int
    absent: int


class VerifyOut(_Out):
    ok: bool
    entries: int
    origins: int
    fork_proofs: int
    bodies: BodiesOut
    problems: list[VerifyProblemOut]


def time_ms(value: int | datetime | None) -> int | None:
    """A time filter as ms since the epoch."""
    if value is None or isinstance(value, int):
        return value
    return int(value.timestamp() * 1000)
