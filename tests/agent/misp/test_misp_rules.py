"""MISP export carries the shared detection rules: yara, sigma and snort attributes (a
Suricata rule as snort, tagged with its language), the rule's name in the comment; an
invalid or retracted rule is left out."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from agent.cli.misp import export_misp_command
from agent.node.node import Submission
from protocol.entries import TLP
from protocol.payloads import Rule
from tests.agent._api_helpers import running_api

DATA = Path(__file__).resolve().parents[1] / "tools" / "data"
RULES = {"yara": "crash_override.yar", "sigma": "anydesk_silent_install.yml",
         "suricata": "et_coinminer.rules", "snort": "gpl_icmp_ping_nix.rules"}


async def test_misp_export_carries_valid_rules_with_their_names(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        ids = {}
        for kind, file in RULES.items():
            status, created = await api.call("POST", "/api/v1/rules", scope="write", json_body={
                "rule_type": kind, "name": f"{kind} rule", "text": (DATA / file).read_text(),
                "tlp": "AMBER" if kind == "sigma" else "GREEN"})
            assert status == 201, created
            ids[kind] = created["id"]
        status, gone = await api.call("POST", "/api/v1/rules", scope="write", json_body={
            "rule_type": "yara", "name": "gone", "text": "rule gone { condition: true }"})
        assert status == 201
        status, _ = await api.call("POST", f"/api/v1/rules/{gone['id']}/retract",
                                   scope="write")
        assert status == 201
        await api.node.submit([Submission(Rule(  # flagged invalid as it is stored
            rule_type="suricata", name="silencer",
            text='pass tcp any any -> any any (msg:"x"; sid:9;)'), TLP.GREEN)])

        target = tmp_path / "event.json"
        status = await asyncio.to_thread(export_misp_command, [
            "-o", str(target), "--api", f"http://127.0.0.1:{api.client.port}",
            "--token", api.tokens["read"]], api.node.data_dir.root)
        assert status == 0
        event = json.loads(target.read_text())["Event"]
        by_comment = {a["comment"]: a for a in event["Attribute"]}
        assert set(by_comment) == {f"{kind} rule" for kind in RULES}
        for kind, file in RULES.items():
            attribute = by_comment[f"{kind} rule"]
            assert attribute["type"] == ("snort" if kind == "suricata" else kind)
            assert attribute["value"] == (DATA / file).read_text()
            assert attribute["to_ids"] is True
        tags = [t["name"] for t in by_comment["suricata rule"]["Tag"]]
        assert 'entraide:rule-type="suricata"' in tags and "tlp:green" in tags
        assert {"name": "tlp:amber"} in by_comment["sigma rule"]["Tag"]
        assert event["Tag"] == [{"name": "tlp:amber"}]

        status = await asyncio.to_thread(export_misp_command, [
            "-o", str(target), "--no-rules", "--api", f"http://127.0.0.1:{api.client.port}",
            "--token", api.tokens["read"]], api.node.data_dir.root)
        assert json.loads(target.read_text())["Event"]["Attribute"] == []
