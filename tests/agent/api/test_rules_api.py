"""Shared tools through the local API: rules checked by their engines on submit (422
``invalid_rule``), listed, superseded, retracted and exported as a ruleset the engine
loads; CACAO playbooks valid and invalid; a received invalid rule flagged."""

from __future__ import annotations

import json
from pathlib import Path

import yara_x

from agent.storage.queries import build_record
from protocol.payloads import Rule, RuleType
from tests.agent._api_helpers import running_api

DATA = Path(__file__).resolve().parents[1] / "tools" / "data"
YARA = (DATA / "crash_override.yar").read_text()


async def test_rules_api_submit_supersede_retract_export(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        status, body = await api.call("POST", "/api/v1/rules", scope="write", json_body={
            "rule_type": "yara", "name": "crash", "text": "rule a { condition: $x }"})
        assert status == 422 and body["error"]["code"] == "invalid_rule"
        assert "line 1" in body["error"]["message"]
        status, body = await api.call("GET", "/api/v1/rules", scope="read")
        assert body["rules"] == []  # the refused rule wrote nothing

        status, first = await api.call("POST", "/api/v1/rules", scope="write", json_body={
            "rule_type": "yara", "name": "crash", "text": YARA,
            "description": {"en": "CrashOverride", "fr": "CrashOverride"}})
        assert status == 201, first
        status, other = await api.call("POST", "/api/v1/rules", scope="write", json_body={
            "rule_type": "yara", "name": "other", "text": "rule other { condition: true }"})
        assert status == 201
        status, shown = await api.call("GET", f"/api/v1/rules/{first['id']}", scope="read")
        assert shown["valid"] is True and shown["origin_name"] == "QC"
        assert shown["superseded_by"] is None

        # a new version (same name and type, same origin) supersedes the first
        newer = YARA.replace("dragos_crashoverride_suspcious", "dragos_crashoverride_v2")
        status, second = await api.call("POST", "/api/v1/rules", scope="write", json_body={
            "rule_type": "yara", "name": "crash", "text": newer})
        assert status == 201
        status, shown = await api.call("GET", f"/api/v1/rules/{first['id']}", scope="read")
        assert shown["superseded_by"] == second["id"]

        status, text = await api.call("GET", "/api/v1/rules/export?type=yara", scope="read")
        assert status == 200 and "dragos_crashoverride_v2" in text
        assert "dragos_crashoverride_suspcious" not in text
        compiler = yara_x.Compiler(includes_enabled=False)
        compiler.add_source(text)  # the export loads in the engine as is
        assert {r.identifier for r in compiler.build()} == {"dragos_crashoverride_v2", "other"}

        status, _ = await api.call("POST", f"/api/v1/rules/{other['id']}/retract",
                                   scope="write")
        assert status == 201
        status, _ = await api.call("POST", f"/api/v1/rules/{other['id']}/retract",
                                       scope="write")
        assert status == 409
        status, text = await api.call("GET", "/api/v1/rules/export?type=yara", scope="read")
        assert "rule other" not in text
        status, body = await api.call("GET", "/api/v1/rules?current=true", scope="read")
        assert [r["id"] for r in body["rules"]] == [second["id"]]
        status, _ = await api.call("GET", "/api/v1/rules/" + "0" * 64, scope="read")
        assert status == 404


async def test_rules_api_playbooks(tmp_path: Path) -> None:
    playbook = json.loads((DATA / "playbook.json").read_text())
    async with running_api(tmp_path) as api:
        status, body = await api.call("POST", "/api/v1/playbooks", scope="write",
                                      json_body={**playbook, "extra": 1})
        assert status == 422 and body["error"]["code"] == "invalid_rule"
        assert "extra" in body["error"]["message"]
        status, created = await api.call("POST", "/api/v1/playbooks?tlp=green", scope="write",
                                         json_body=playbook)
        assert status == 201, created
        status, shown = await api.call("GET", f"/api/v1/playbooks/{created['id']}",
                                       scope="read")
        assert shown["playbook"] == playbook and shown["valid"] is True
        status, body = await api.call("GET", "/api/v1/playbooks", scope="read")
        assert [p["id"] for p in body["playbooks"]] == [created["id"]]


def test_rules_received_invalid_rule_is_flagged() -> None:
    # The ledger builds every readable entry's row with build_record, own or received:
    # a remote rule its engine refuses is kept, flagged, with the engine's message.
    rule = Rule(rule_type=RuleType.SURICATA, name="silencer",
                text='pass tcp any any -> any any (msg:"x"; sid:1;)')
    record = build_record(rule, 0)
    assert record.fields is not None
    assert record.fields["valid"] is False
    assert "pass" in record.fields["engine_message"]
    good = build_record(Rule(rule_type=RuleType.YARA, name="crash", text=YARA), 0)
    assert good.fields is not None and good.fields["valid"] is True
