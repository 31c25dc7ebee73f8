"""protocol/aid.py: the mutual-aid payloads and the thread state machine, synchronously."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from protocol.aid import (
    TRANSITIONS,
    AidAccept,
    AidClose,
    AidOffer,
    AidRequest,
    AidTransitionError,
    AidUpdate,
    AidWithdraw,
    Capabilities,
    OfferStatus,
    RequestState,
    RequestStatus,
    ThreadEntry,
    check,
    fold,
    is_overdue,
)
from protocol.errors import PayloadError
from protocol.payloads import _decode_checked, decode_payload, encode_payload

BC, QC, FED, ON = "ed25519:BC", "ed25519:QC", "ed25519:FED", "ed25519:ON"
REQ_ID = "a" * 64


def _id(n: int) -> str:
    return f"{n:064x}"


def request(respond_by: str | None = None) -> ThreadEntry:
    payload = AidRequest(
        title="Hospitals hit by ransomware", severity="critical",
        description={"en": "EHR down", "fr": "DME en panne"},
        needs=[{"kind": "forensics", "detail": "disk images"},
               {"kind": "incident-coordination"}],
        affected={"sector": "health", "services": ["EHR", "EHR"], "impact": "3 hospitals"},
        contact={"name": "BC duty officer", "channel": "+1-250-555-0100"},
        respond_by=respond_by)
    return ThreadEntry(REQ_ID, BC, 1000, payload)


def offer(n: int, author: str, ts: int) -> ThreadEntry:
    return ThreadEntry(_id(n), author, ts, AidOffer(request=REQ_ID, kinds=["forensics"],
                                                    people=2, on_site=True))


def accept(n: int, of: int, ts: int, author: str = BC) -> ThreadEntry:
    return ThreadEntry(_id(n), author, ts, AidAccept(request=REQ_ID, offer=_id(of)))


def update(n: int, author: str, ts: int, status: str | None = None) -> ThreadEntry:
    return ThreadEntry(_id(n), author, ts, AidUpdate(request=REQ_ID, status=status,
                                                     note={"en": "n", "fr": "n"}))


def close(n: int, ts: int, author: str = BC) -> ThreadEntry:
    return ThreadEntry(_id(n), author, ts, AidClose(request=REQ_ID,
                                                    summary={"en": "done", "fr": "fini"}))


def withdraw(n: int, of: int, author: str, ts: int) -> ThreadEntry:
    return ThreadEntry(_id(n), author, ts, AidWithdraw(request=REQ_ID, offer=_id(of)))


@pytest.mark.parametrize("payload", [
    request("2026-12-01T00:00:00Z").payload,
    AidOffer(request=REQ_ID, kinds=["forensics", "forensics", "recovery"], on_site=True),
    AidWithdraw(request=REQ_ID, offer=_id(1)),
    AidAccept(request=REQ_ID, offer=_id(1), note={"fr": "merci"}),
    AidUpdate(request=REQ_ID, status="in-progress", note={"en": "x"}),
    AidClose(request=REQ_ID, summary={"en": "done"}),
    Capabilities(skills=["forensics"], languages=["fr", "en"], hours="24/7",
                 contact={"name": "SOC"}),
])
def test_aid_payloads_round_trip_canonically(payload: object) -> None:
    data = encode_payload(payload)  # type: ignore[arg-type]
    assert decode_payload(data) == payload
    assert _decode_checked(data)[0] == payload  # the strict path: canonical msgpack


@pytest.mark.parametrize("bad", [
    {"kind": "aid-offer", "request": REQ_ID, "kinds": ["cooking"]},
    {"kind": "aid-offer", "request": REQ_ID, "kinds": []},
    {"kind": "aid-offer", "request": "xyz", "kinds": ["forensics"]},
    {"kind": "aid-offer", "request": REQ_ID, "kinds": ["forensics"], "people": 0},
    {"kind": "aid-update", "request": REQ_ID, "status": "closed", "note": {"en": "x"}},
    {"kind": "aid-close", "request": REQ_ID, "summary": {}},
    {"kind": "capabilities", "languages": ["French"]},
    {"kind": "aid-close", "request": REQ_ID, "summary": {"en": "x"}, "tlp": "RED"},
])
def test_aid_payloads_refuse_bad_fields(bad: dict[str, object]) -> None:
    from protocol.payloads import parse_payload_json
    with pytest.raises(PayloadError):
        parse_payload_json(bad)


def test_aid_request_needs_are_bounded() -> None:
    with pytest.raises(ValidationError):
        AidRequest(title="t", severity="low", description={"en": "d"},
                   needs=[{"kind": "other"}] * 17, contact={"name": "n"})


def test_aid_fold_full_story() -> None:
    entries = [offer(1, QC, 2000), offer(2, FED, 2100), accept(3, 1, 3000),
               update(4, QC, 3500), close(5, 4000)]
    state = fold(request(), entries)
    assert state.status is RequestStatus.CLOSED
    assert state.offers[_id(1)].status is OfferStatus.ACCEPTED
    assert state.offers[_id(2)].status is OfferStatus.OPEN
    assert state.helpers == {QC}
    assert [u.id for u in state.updates] == [_id(3), _id(4), _id(5)]
    assert state.invalid == [] and state.pending == []
    assert state.first_offer_ts == 2000


def test_aid_fold_is_the_same_in_any_order() -> None:
    entries = [offer(1, QC, 2000), offer(2, FED, 2100), accept(3, 1, 3000),
               update(4, FED, 3200), update(5, QC, 3500), withdraw(6, 2, FED, 3600),
               close(7, 4000), offer(8, ON, 5000)]
    expected = fold(request(), entries)
    assert expected.invalid == [(_id(4), "not_participant"), (_id(8), "request_closed")]
    for perm in itertools.islice(itertools.permutations(entries), 0, None, 97):
        got = fold(request(), perm)
        assert (got.status, got.invalid, [u.id for u in got.updates]) == (
            expected.status, expected.invalid, [u.id for u in expected.updates])
        assert {k: o.status for k, o in got.offers.items()} == {
            k: o.status for k, o in expected.offers.items()}


def test_aid_fold_accept_before_its_offer_arrives_is_pending_then_applies() -> None:
    # The accept is delivered first (and its author's clock is behind the offer's).
    state = fold(request(), [accept(3, 1, 1500)])
    assert state.pending == [_id(3)] and state.status is RequestStatus.OPEN
    state = fold(request(), [accept(3, 1, 1500), offer(1, QC, 2000)])
    assert state.pending == [] and state.status is RequestStatus.IN_PROGRESS


@pytest.mark.parametrize(("entry", "code", "status"), [
    (accept(9, 1, 3000, author=FED), "not_requester", 403),
    (close(9, 3000, author=QC), "not_requester", 403),
    (update(9, QC, 3000, status="open"), "not_requester", 403),
    (update(9, ON, 3000), "not_participant", 403),
    (withdraw(9, 1, FED, 3000), "not_offer_author", 403),
    (offer(9, BC, 3000), "own_request", 409),
    (accept(9, 2, 3000), "offer_not_open", 409),
    (accept(9, 7, 3000), "unknown_offer", 404),
])
def test_aid_check_refuses_each_illegal_transition(entry: ThreadEntry, code: str,
                                                   status: int) -> None:
    state = fold(request(), [offer(1, QC, 2000), offer(2, FED, 2100), accept(3, 2, 2500)])
    before = (state.status, dict(state.offers), list(state.updates))
    with pytest.raises(AidTransitionError) as err:
        check(state, entry)
    assert (err.value.code, err.value.status) == (code, status)
    assert (state.status, dict(state.offers), list(state.updates)) == before


@pytest.mark.parametrize("entry", [offer(9, QC, 5000), accept(9, 1, 5000),
                                   update(9, BC, 5000), close(9, 5000),
                                   withdraw(9, 1, QC, 5000)])
def test_aid_nothing_is_legal_after_closed(entry: ThreadEntry) -> None:
    state = fold(request(), [offer(1, QC, 2000), close(5, 4000)])
    with pytest.raises(AidTransitionError) as err:
        check(state, entry)
    assert err.value.code == "request_closed" and err.value.status == 409


def test_aid_transition_table_has_no_exit_from_closed() -> None:
    assert not [key for key in TRANSITIONS if key[0] is RequestStatus.CLOSED]


def test_aid_requester_sets_status_and_helper_posts_notes() -> None:
    state = fold(request(), [offer(1, QC, 2000), accept(2, 1, 2100),
                             update(3, QC, 2200), update(4, BC, 2300, status="open")])
    assert state.invalid == [] and state.status is RequestStatus.OPEN


def test_aid_overdue_only_when_past_and_not_closed() -> None:
    now = datetime(2026, 12, 2, tzinfo=UTC)
    assert is_overdue(fold(request("2026-12-01T00:00:00Z"), []), now)
    assert not is_overdue(fold(request("2026-12-03T00:00:00Z"), []), now)
    assert not is_overdue(fold(request(), []), now)
    assert not is_overdue(fold(request("2026-12-01T00:00:00Z"), [close(1, 2000)]), now)


def test_aid_fold_ignores_other_threads_and_duplicates() -> None:
    other = ThreadEntry(_id(1), QC, 2000, AidOffer(request="b" * 64, kinds=["recovery"]))
    state: RequestState = fold(request(), [other, offer(2, QC, 2000), offer(2, QC, 2000)])
    assert list(state.offers) == [_id(2)]
