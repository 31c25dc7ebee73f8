"""Mutual aid end to end, with real ``entraide run`` processes set up through the CLI.

A line QC ─ ON ─ BC ─ FED (each dials the next). BC's hospitals are hit: BC asks QC and
FED (RED) for help; QC's and FED's offers reach BC through ON, which relays the whole
thread but can read none of it; BC accepts QC's offer, QC posts a note, BC closes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from agent.cli.client import ApiError
from agent.cli.localfed import LocalFederation, wait_for
from tests.e2e._fed import running

pytestmark = pytest.mark.slow

LINE = [("QC", "Québec"), ("ON", "Ontario"), ("BC", "British Columbia"), ("FED", "Canada")]
LINKS = [("QC", "ON"), ("ON", "BC"), ("BC", "FED")]
DEADLINE_S = 30.0

REQUEST = {
    "title": "Ransomware in three hospitals", "severity": "critical",
    "description": {"en": "Electronic health records are down.",
                    "fr": "Les dossiers médicaux électroniques sont en panne."},
    "needs": [{"kind": "forensics", "detail": "disk images of 40 hosts"},
              {"kind": "incident-coordination"}],
    "affected": {"sector": "health", "services": ["EHR", "imaging"], "impact": "surgeries delayed"},
    "mitigations": {"en": "Network segmented; backups offline."},
    "contact": {"name": "BC duty officer", "channel": "+1-250-555-0100"},
    "tlp": "RED", "audience": ["QC", "FED"], "respond_by": "2020-01-01T00:00:00Z",
}


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    yield from running(tmp_path_factory.mktemp("aid"), LINE, LINKS)


def _status(node: Any, method: str, path: str, body: object = None) -> tuple[int, str]:
    try:
        node.call(method, path, body)
        return 200, ""
    except ApiError as exc:
        return exc.status, exc.code


def _sees(node: Any, path: str, check: Any) -> Any:
    def ok() -> bool:
        try:
            return bool(check(node.call("GET", path)))
        except ApiError:
            return False
    wait_for(ok, DEADLINE_S, f"{node.name} to see {path}", interval=0.1)
    return node.call("GET", path)


def test_aid_request_offers_accept_close_across_a_relay_that_cannot_read(
        fed: LocalFederation) -> None:
    bc, qc, on, ff = fed["BC"], fed["QC"], fed["ON"], fed["FED"]
    created = bc.call("POST", "/api/v1/aid/requests", REQUEST)
    rid, path = created["id"], f"/api/v1/aid/requests/{created['id']}"
    assert created["status"] == "open" and created["tlp"] == "RED" and created["overdue"]

    seen = _sees(qc, path, lambda r: r["id"] == rid)
    assert seen["origin_name"] == "BC" and seen["needs"][0]["kind"] == "forensics"
    qc_offer = qc.call("POST", path + "/offers", {
        "kinds": ["forensics"], "people": 2, "on_site": False,
        "detail": {"fr": "Deux analystes en criminalistique, en français"},
        "contact": {"name": "CSIRT Québec"}})["id"]
    _sees(ff, path, lambda r: r["id"] == rid)
    ff_offer = ff.call("POST", path + "/offers", {"kinds": ["incident-coordination"]})["id"]

    got = _sees(bc, path, lambda r: len(r["offers"]) == 2)
    assert {o["origin_name"] for o in got["offers"]} == {"QC", "FED"}

    # Illegal transitions: each gets its status and changes nothing. First every node
    # holds every entry so far (FED's offer may still be on its way to QC).
    wait_for(lambda: len({n.entries() for n in (bc, qc, on, ff)}) == 1, DEADLINE_S,
             "every node to hold the request and both offers", interval=0.1)
    before = bc.entries(), qc.entries()
    assert _status(qc, "POST", f"{path}/offers/{qc_offer}/accept") == (403, "not_requester")
    assert _status(qc, "POST", f"{path}/close", {"summary": {"en": "x"}}) == (
        403, "not_requester")
    assert _status(bc, "POST", path + "/offers", {"kinds": ["forensics"]}) == (
        409, "own_request")
    assert (bc.entries(), qc.entries()) == before

    accepted = bc.call("POST", f"{path}/offers/{qc_offer}/accept",
                       {"note": {"fr": "Merci, venez"}})
    assert accepted["status"] == "in-progress"
    assert _status(bc, "POST", f"{path}/offers/{qc_offer}/accept") == (409, "offer_not_open")

    _sees(qc, path, lambda r: r["status"] == "in-progress")
    qc.call("POST", path + "/updates", {"note": {"en": "Imaging started",
                                                 "fr": "Imagerie commencée"}})
    _sees(bc, path, lambda r: any(u["origin_name"] == "QC" for u in r["updates"]))
    closed = bc.call("POST", path + "/close", {"summary": {"en": "Restored", "fr": "Rétabli"}})
    assert closed["status"] == "closed" and not closed["overdue"]
    assert _status(bc, "POST", path + "/close", {"summary": {"en": "again"}}) == (
        409, "request_closed")

    final = _sees(ff, path, lambda r: r["status"] == "closed")
    assert final["summary"]["fr"] == "Rétabli" and final["invalid"] == []
    assert {o["id"]: o["status"] for o in final["offers"]} == {qc_offer: "accepted",
                                                               ff_offer: "open"}
    assert _status(ff, "POST", path + "/offers", {"kinds": ["recovery"]}) == (
        409, "request_closed")

    # The relay holds every entry of the thread but reads none of it: 404.
    wait_for(lambda: on.entries() >= bc.entries(), DEADLINE_S, "ON to hold BC's chain")
    assert _status(on, "GET", path) == (404, "not_found")
    assert rid not in {r["id"] for r in on.call("GET", "/api/v1/aid/requests")["requests"]}
    assert _status(on, "POST", path + "/offers", {"kinds": ["forensics"]})[0] == 404

    listed = bc.call("GET", "/api/v1/aid/requests?status=closed&mine=true&need=forensics")
    assert [r["id"] for r in listed["requests"]] == [rid]


def test_aid_expertise_directory_answers_who_can_help(fed: LocalFederation) -> None:
    fed["QC"].call("PUT", "/api/v1/capabilities", {
        "skills": ["forensics", "malware-analysis"], "languages": ["fr", "en"],
        "hours": "24/7", "contact": {"name": "CSIRT Québec"}})
    fed["FED"].call("PUT", "/api/v1/capabilities", {
        "skills": ["forensics"], "languages": ["en"], "available": False})
    fed["QC"].call("PUT", "/api/v1/capabilities", {  # a new version: the newest wins
        "skills": ["forensics"], "languages": ["fr"], "hours": "24/7"})
    found = _sees(fed["BC"], "/api/v1/capabilities?need=forensics",
                  lambda r: len(r["capabilities"]) == 2
                  and any(c["languages"] == ["fr"] for c in r["capabilities"]))
    assert {c["origin_name"] for c in found["capabilities"]} == {"QC", "FED"}
    french = fed["BC"].call("GET", "/api/v1/capabilities?need=forensics&language=fr")
    assert [c["origin_name"] for c in french["capabilities"]] == ["QC"]
    suggested = fed["BC"].call("GET", "/api/v1/aid/suggest?need=forensics")
    assert suggested["audience"] == ["QC"]  # FED is not available now
    assert fed["BC"].call("GET", "/api/v1/capabilities?need=malware-analysis")[
        "capabilities"] == []


def test_aid_cli_a_duty_officer_can_follow(fed: LocalFederation) -> None:
    bc, qc = fed["BC"], fed["QC"]
    out = bc.cli("aid", "request", "--title", "Ransomware: payroll system", "--severity",
                 "high", "--need", "forensics:memory images", "--need", "recovery",
                 "--description-en", "Payroll encrypted", "--description-fr",
                 "Paie chiffrée", "--contact", "BC duty officer", "--channel", "+1-250-555-0100",
                 "--tlp", "RED", "--to", "QC", "--json").stdout
    rid = json.loads(out)["id"]
    wait_for(lambda: qc.cli("aid", "show", rid, check=False).returncode == 0, DEADLINE_S,
             "QC to read the request")
    offer = json.loads(qc.cli("aid", "offer", rid, "--kind", "forensics", "--detail-fr",
                              "Une équipe de deux", "--people", "2", "--json").stdout)["id"]
    refused = qc.cli("aid", "close", rid, "--summary-en", "not mine", check=False)
    assert refused.returncode != 0 and "not_requester" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    wait_for(lambda: offer[:16] in bc.cli("aid", "show", rid).stdout, DEADLINE_S,
             "BC to see QC's offer")
    bc.cli("aid", "accept", rid, offer)
    shown = bc.cli("aid", "close", rid, "--summary-en", "Payroll restored", "--summary-fr",
                   "Paie rétablie").stdout
    assert "closed" in shown and "Payroll restored / Paie rétablie" in shown
    listed = json.loads(bc.cli("aid", "list", "--mine", "--status", "closed", "--json").stdout)
    assert rid in {r["id"] for r in listed["requests"]}  # --json: the API's shape
    table = bc.cli("aid", "list", "--mine").stdout
    assert "status" in table and rid[:16] in table
