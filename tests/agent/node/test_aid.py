"""agent/node/aid.py: the receive side of mutual aid, with two real nodes (real keys,
ledgers and APIs) whose entries are handed from one ledger to the other as
replication would: a remote entry that breaks a thread's rules is stored, has no
effect and is counted; the watcher sends ``event: aid`` data."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent.metrics import parse_text
from protocol.aid import AidAccept, AidClose, AidUpdate
from protocol.entries import TLP, VerifiedEntry
from tests.agent._api_helpers import Api, running_api
from tests.agent.nodes import wait_for

REQUEST = {"title": "Hospitals hit", "severity": "high",
           "description": {"en": "EHR down", "fr": "DME en panne"},
           "needs": [{"kind": "forensics"}], "contact": {"name": "BC duty officer"},
           "audience": ["QC"]}


async def _hand_over(src: Api, dst: Api, entries: list[VerifiedEntry]) -> None:
    result = await dst.node.ledger.ingest(entries)
    assert result is not None


def _invalid(metrics: str, code: str) -> float:
    series = parse_text(metrics).get("entraide_aid_invalid_entries_total", {})
    return series.get((("code", code),), 0.0)


async def test_aid_remote_entries_breaking_the_rules_are_stored_without_effect(
        tmp_path: Path) -> None:
    async with running_api(tmp_path, "BC", ("QC", "FED")) as bc, \
            running_api(tmp_path, "QC", ("BC", "FED")) as qc:
        events = bc.node.aid.subscribe()
        status, created = await bc.call("POST", "/api/v1/aid/requests", scope="write",
                                        json_body=REQUEST)
        assert status == 201, created
        rid = created["id"]
        request_entry = await bc.node.ledger.get_entry(rid)
        assert request_entry is not None and request_entry.tlp is TLP.AMBER
        await _hand_over(bc, qc, [request_entry])

        # QC offers (legal), then, bypassing its own API's checks as a rogue node
        # would, accepts its own offer and closes BC's request (both BC's to do).
        status, offer = await qc.call("POST", f"/api/v1/aid/requests/{rid}/offers",
                                      scope="write", json_body={"kinds": ["forensics"]})
        assert status == 201, offer
        recipients = qc.node.members.same_audience(request_entry.tlp,
                                                     qc.node.audience_of(request_entry))
        rogue = [await qc.node.submit_sealed(p, TLP.AMBER, recipients) for p in (
            AidAccept(request=rid, offer=offer["id"]),
            AidClose(request=rid, summary={"en": "closed by a stranger"}),
            AidUpdate(request=rid, status="in-progress", note={"en": "not yours"}))]
        offer_entry = await qc.node.ledger.get_entry(offer["id"])
        assert offer_entry is not None
        before = bc.node.ledger.counts().entries
        await _hand_over(qc, bc, [offer_entry, *rogue])
        assert bc.node.ledger.counts().entries == before + 4  # stored: the chain is whole

        _, got = await bc.call("GET", f"/api/v1/aid/requests/{rid}", scope="read")
        assert got["status"] == "open"  # no effect
        assert [o["status"] for o in got["offers"]] == ["open"]
        assert {i["id"]: i["code"] for i in got["invalid"]} == {
            rogue[0].id: "not_requester", rogue[1].id: "not_requester",
            rogue[2].id: "not_requester"}

        async def counted() -> bool:
            _, text = await bc.call("GET", "/metrics", scope="read")
            return _invalid(text, "not_requester") == 3
        await wait_for(counted, timeout=10, what="three invalid entries counted")
        _, text = await bc.call("GET", "/metrics", scope="read")
        families = parse_text(text)
        assert families["entraide_aid_time_to_first_offer_seconds_count"][()] == 1
        assert families["entraide_aid_open_requests"][()] == 1

        kinds = []
        while len(kinds) < 5:
            event = await asyncio.wait_for(events.get(), 5)
            kinds.append((event["kind"], event.get("invalid")))
        assert kinds == [("request", None), ("offer", None), ("accept", "not_requester"),
                         ("close", "not_requester"), ("update", "not_requester")]
        bc.node.aid.unsubscribe(events)

        # QC's own API refuses the same moves before signing anything.
        n = qc.node.ledger.counts().entries
        status, body = await qc.call("POST", f"/api/v1/aid/requests/{rid}/close",
                                     scope="write", json_body={"summary": {"en": "x"}})
        assert (status, body["error"]["code"]) == (403, "not_requester")
        assert qc.node.ledger.counts().entries == n


async def test_aid_request_is_never_below_amber_and_red_needs_an_audience(
        tmp_path: Path) -> None:
    async with running_api(tmp_path, "BC", ("QC",)) as bc:
        n = bc.node.ledger.counts().entries
        for tlp, audience in (("GREEN", None), ("CLEAR", None), ("RED", None)):
            body = {**REQUEST, "tlp": tlp}
            body.pop("audience")
            if audience:
                body["audience"] = audience
            status, answer = await bc.call("POST", "/api/v1/aid/requests", scope="write",
                                           json_body=body)
            assert status == 422, (tlp, answer)
        status, answer = await bc.call("POST", "/api/v1/aid/requests", scope="read",
                                       json_body=REQUEST)
        assert status == 403
        status, answer = await bc.call("GET", "/api/v1/aid/requests/" + "ab" * 32,
                                       scope="read")
        assert (status, answer["error"]["code"]) == (404, "not_found")
        status, answer = await bc.call("POST", "/api/v1/aid/requests", scope="write",
                                       json_body={**REQUEST, "needs": [{"kind": "cooking"}]})
        assert status == 422
        assert bc.node.ledger.counts().entries == n



async def test_aid_request_is_served_by_taxii_as_a_valid_incident(tmp_path: Path) -> None:
    from stix2validator import ValidationOptions, validate_instance

    from agent.taxii.app import API_ROOT, COLLECTIONS
    from protocol.stix_aid import INCIDENT_CORE_EXTENSION_ID

    async with running_api(tmp_path, "BC", ("QC",)) as bc:
        _, created = await bc.call("POST", "/api/v1/aid/requests", scope="write",
                                   json_body=REQUEST)
        await bc.call("POST", f"/api/v1/aid/requests/{created['id']}/close", scope="write",
                      json_body={"summary": {"en": "done"}})

        async def incidents() -> list[dict[str, object]]:
            async with bc.client.get(
                    f"{API_ROOT}collections/{COLLECTIONS[0].id}/objects/",
                    headers={"Accept": "application/taxii+json;version=2.1",
                             **bc.auth("read")}) as resp:
                assert resp.status == 200
                body = await resp.json(content_type=None)
            return [o for o in body.get("objects", []) if o["type"] == "incident"]

        async def served() -> bool:
            return len(await incidents()) == 1
        await wait_for(served, timeout=10, what="the incident served")
        (incident,) = await incidents()
        result = validate_instance(incident, ValidationOptions())
        assert result.is_valid, [str(e) for e in result.errors]
        assert incident["name"] == REQUEST["title"]
        assert INCIDENT_CORE_EXTENSION_ID in incident["extensions"]  # type: ignore[operator]
