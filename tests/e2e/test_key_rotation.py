"""End to end: a key rotation with real processes (docs/operations.md, "Rotate a key").

QC (dialling ON and FED) writes, then ``entraide key rotate``: the running QC signs a
hand-over naming its new key and refuses to sign more; ON and FED follow by themselves
(peers.toml, status, log); QC restarted signs with the new key (``entraide id``, card
and fingerprint changed), its peers accept it, and QC's old entries still verify and
still carry its name everywhere.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.cli.client import ApiError
from agent.cli.localfed import LocalFederation, wait_for
from agent.config.datadir import DataDir
from agent.config.trust import load_trust_list
from protocol.keys import PublicKey
from tests.e2e._fed import running, submit_green

pytestmark = pytest.mark.slow

NODES = [("QC", "Québec"), ("ON", "Ontario"), ("FED", "Canada")]
LINKS = [("QC", "ON"), ("QC", "FED"), ("ON", "FED")]
DEADLINE_S = 60.0


@pytest.fixture
def fed(tmp_path: Path) -> Iterator[LocalFederation]:
    yield from running(tmp_path, NODES, LINKS)



def _qc_entry(fed: LocalFederation, peer: str) -> dict[str, object]:
    status: dict[str, object] = next(
        p for p in fed[peer].call("GET", "/api/v1/peers")["peers"] if p["name"] == "QC")
    return status


def test_key_rotation_peers_follow_and_the_chain_goes_on_under_the_new_key(
        fed: LocalFederation) -> None:
    old_ids = [str(submit_green(fed, "QC", f"203.0.113.{i}")["id"]) for i in (1, 2)]
    old_key, old_card = fed["QC"].key, fed["QC"].card
    for peer in ("ON", "FED"):
        wait_for(lambda p=peer: all(fed[p].visible(i) for i in old_ids), DEADLINE_S,
                 f"{peer} to hold QC's entries")

    rotated = json.loads(fed["QC"].cli("key", "rotate", "--json").stdout)
    assert rotated["seq"] == 3 and rotated["old_key"] == old_key
    new_key = rotated["new_key"]
    assert new_key != old_key
    with pytest.raises(ApiError) as refused:
        submit_green(fed, "QC", "203.0.113.9")
    assert refused.value.status == 503
    status = fed["QC"].call("GET", "/api/v1/status")["key_rotation"]
    assert status["state"] == "restart-needed" and status["new_key"] == new_key
    assert set(status["message"]) == {"en", "fr"}
    assert json.loads(fed["QC"].cli("id", "--json").stdout)["next_key"] == new_key

    for peer in ("ON", "FED"):
        wait_for(lambda p=peer: _qc_entry(fed, p)["key"] == new_key, DEADLINE_S,
                 f"{peer} to follow QC's new key")
        entry = _qc_entry(fed, peer)
        assert entry["fingerprint"] == PublicKey.from_text(new_key).fingerprint
        assert entry["retired_keys"] == [{"key": old_key, "last_seq": 3, "reason": "rotated",
                                          "fingerprint": PublicKey.from_text(old_key)
                                          .fingerprint}]
        trust = load_trust_list(DataDir(fed[peer].data_dir))
        qc = trust.by_name("QC")
        assert qc is not None and qc.key.text == new_key
        assert "QC rotated its key" in fed[peer].log.read_text()

    fed.stop(["QC"])
    fed.start(["QC"])
    ident = json.loads(fed["QC"].cli("id", "--json").stdout)
    assert ident["key"] == new_key and ident["card"] != old_card
    assert ident["fingerprint"] == PublicKey.from_text(new_key).fingerprint
    assert ident["previous_keys"] == [{"key": old_key, "last_seq": 3, "fingerprint":
                                       PublicKey.from_text(old_key).fingerprint}]
    assert ident["next_key"] is None
    assert "its chain ended at seq 3" in fed["QC"].cli("id").stdout
    assert fed["QC"].call("GET", "/api/v1/status")["key_rotation"] is None

    after = submit_green(fed, "QC", "203.0.113.10")
    assert after["seq"] == 1 and after["origin"] == new_key
    for peer in ("ON", "FED"):
        wait_for(lambda p=peer: fed[p].visible(str(after["id"])), DEADLINE_S,
                 f"{peer} to get QC's first entry under the new key")
        got = fed[peer].call("GET", f"/api/v1/observations/{after['id']}")
        assert got["origin_name"] == "QC"
        for old_id in old_ids:
            old = fed[peer].call("GET", f"/api/v1/observations/{old_id}")
            assert old["origin"] == old_key and old["origin_name"] == "QC"
            assert old["verified"] is True
    for node in fed.nodes:
        status = node.call("GET", "/api/v1/status")
        assert status["forks"] == [], node.name
        assert node.call("GET", "/api/v1/ledger/verify")["ok"], node.name
