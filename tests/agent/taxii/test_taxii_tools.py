"""Shared tools over TAXII: a rule of each language as an ``indicator`` whose
``pattern_type`` is the language and whose ``pattern`` is the rule text; a CACAO playbook
as a ``course-of-action`` with the playbook extension carrying it whole; every object
passes stix2-validator; a rule or playbook its engine refuses is never served."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from stix2validator import ValidationOptions, validate_instance

from agent.node.node import Submission
from agent.taxii.app import API_ROOT, COLLECTIONS
from protocol.entries import TLP
from protocol.payloads import Playbook, Rule
from protocol.stix import EXTENSION_ID, PLAYBOOK_EXTENSION_ID, identity_id
from tests.agent._api_helpers import running_api

DATA = Path(__file__).resolve().parents[1] / "tools" / "data"
MEDIA = "application/taxii+json;version=2.1"
RULES = {"yara": "crash_override.yar", "sigma": "anydesk_silent_install.yml",
         "suricata": "et_coinminer.rules", "snort": "gpl_icmp_ping_nix.rules"}


def assert_valid(obj: dict[str, Any]) -> None:
    result = validate_instance(obj, ValidationOptions())
    assert result.is_valid, (obj["id"], [str(e) for e in result.errors])


async def test_taxii_serves_rules_and_playbooks_as_valid_stix_and_never_invalid_ones(
    tmp_path: Path,
) -> None:
    playbook = json.loads((DATA / "playbook.json").read_text())
    broken_book = {**playbook, "id": "playbook--5b6a3c1d-9f1e-4e7a-8d1e-2f3a4b5c6d99",
                   "workflow_start": 7}
    async with running_api(tmp_path) as api:
        status, _ = await api.call("POST", "/api/v1/rules", scope="write", json_body={
            "rule_type": "sigma", "name": "anydesk", "text": "title: x\n"})
        assert status == 422  # refused on submit ...
        submissions = [Submission(Rule(rule_type=kind, name=kind, text=(DATA / f).read_text(),
                                       description={"en": "a rule", "fr": "une règle"}),
                                  TLP.GREEN) for kind, f in RULES.items()]
        # ... and one that got in anyway (as a peer's would): stored, flagged, not served
        submissions.append(Submission(Rule(rule_type="suricata", name="silencer",
                                           text='pass tcp any any -> any any (msg:"x"; sid:9;)'),
                                      TLP.GREEN))
        submissions.append(Submission(Playbook.from_object(playbook), TLP.AMBER))
        submissions.append(Submission(Playbook.from_object(broken_book), TLP.GREEN))
        entries = await api.node.submit(submissions)
        status, shown = await api.call("GET", f"/api/v1/rules/{entries[4].id}", scope="read")
        assert shown["valid"] is False and "pass" in shown["engine_message"]

        status, envelope = await api.call(
            "GET", f"{API_ROOT}collections/{COLLECTIONS[0].id}/objects/", scope="read",
            headers={"Accept": MEDIA})
        assert status == 200
        objects = json.loads(envelope)["objects"]
        for obj in objects:
            assert_valid(obj)
        by_entry = {o["external_references"][0]["external_id"]: o for o in objects
                    if o["type"] != "identity"}
        assert set(by_entry) == {e.id for e in entries[:4]} | {entries[5].id}
        for entry, (kind, file) in zip(entries[:4], RULES.items(), strict=True):
            indicator = by_entry[entry.id]
            assert indicator["type"] == "indicator" and indicator["pattern_type"] == kind
            assert indicator["pattern"] == (DATA / file).read_text()
            assert indicator["name"] == kind and indicator["description"] == "a rule"
            assert indicator["valid_from"] == indicator["created"]
            assert indicator["created_by_ref"] == identity_id(api.node.public_key.text)
            assert indicator["extensions"][EXTENSION_ID]["description"]["fr"] == "une règle"
        coa = by_entry[entries[5].id]
        assert coa["type"] == "course-of-action" and coa["name"] == playbook["name"]
        carried = coa["extensions"][PLAYBOOK_EXTENSION_ID]
        assert carried["playbook_id"] == playbook["id"]
        assert carried["playbook_standard"] == "cacao"
        assert carried["playbook_type"] == ["mitigation"]
        assert json.loads(base64.b64decode(carried["playbook_bin"])) == playbook

        # a retracted rule is served as revoked, still valid STIX
        status, _ = await api.call("POST", f"/api/v1/rules/{entries[0].id}/retract",
                                   scope="write")
        assert status == 201
        status, envelope = await api.call(
            "GET", f"{API_ROOT}collections/{COLLECTIONS[0].id}/objects/"
                   f"?match[id]={by_entry[entries[0].id]['id']}", scope="read",
            headers={"Accept": MEDIA})
        (revoked,) = json.loads(envelope)["objects"]
        assert revoked["revoked"] is True
        assert_valid(revoked)
