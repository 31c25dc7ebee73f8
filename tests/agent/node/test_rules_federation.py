"""Shared tools across two real nodes (real ledgers, real WebSocket sessions on
127.0.0.1): a valid rule and an invalid one reach the receiver, which checks both with
the real engines as it stores them: the invalid one (crafted with the protocol's own
functions on a third identity the receiver trusts, since no node would sign it) is
kept, flagged ``valid: false`` with the engine's message, and left out of the export."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
import yara_x

from agent.errors import InvalidRuleError
from agent.peering.replicator import TrustedPeer
from agent.storage.rules import export_texts, list_tools
from agent.tools.engines import check_rule
from protocol.entries import TLP, sign_entry
from protocol.keys import Identity
from protocol.payloads import Rule, encode_payload
from tests.agent.nodes import Federation

DATA = Path(__file__).resolve().parents[1] / "tools" / "data"
SILENCER = 'pass tcp any any -> any any (msg:"silence the others"; sid:9000001;)'


@pytest.mark.slow
async def test_rules_federation_flags_a_received_invalid_rule_and_never_exports_it(
    tmp_path: Path,
) -> None:
    with pytest.raises(InvalidRuleError):  # no node would sign it: submit checks first
        check_rule("suricata", SILENCER)
    rogue = Identity(hashlib.blake2b(b"rules-rogue", digest_size=32).digest())
    now = int(time.time() * 1000)
    async with Federation.start(tmp_path, 2, names=("ON", "QC")) as fed:
        on, qc = fed.nodes
        for i, node in enumerate(fed.nodes):
            node.set_trust([*fed.trust_for(i), TrustedPeer("XX", rogue.public_key, None)])
        good = sign_entry(on.identity, seq=1, prev=None, now_ms=now, tlp=TLP.CLEAR,
                          audience=None, body=encode_payload(Rule(
                              rule_type="yara", name="crash",
                              text=(DATA / "crash_override.yar").read_text())))
        bad = sign_entry(rogue, seq=1, prev=None, now_ms=now, tlp=TLP.CLEAR, audience=None,
                         body=encode_payload(Rule(rule_type="suricata", name="silencer",
                                                  text=SILENCER)))
        for entry in (good, bad):
            assert (await on.db.ingest([entry])).stored == 1
        on.repl.publish([good, bad])
        await fed.wait_for(lambda: fed.converged(), what="QC holds both rules")

        rules = {r["name"]: r for r in (await list_tools(qc.db, "rule")).items}
        assert rules["crash"]["valid"] is True and rules["crash"]["engine_message"] is None
        assert rules["silencer"]["valid"] is False
        assert rules["silencer"]["origin"] == rogue.public_key.text
        assert "pass" in rules["silencer"]["engine_message"]
        assert await export_texts(qc.db, "suricata") == []
        (exported,) = await export_texts(qc.db, "yara")
        compiler = yara_x.Compiler(includes_enabled=False)
        compiler.add_source(exported["text"])
        compiler.build()
