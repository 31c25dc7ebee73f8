"""End to end: a key declared compromised, with real processes (docs/operations.md, "A
key is compromised").

QC writes three entries, ON holds them; ON's admin declares QC's key compromised from
seq 3 (``entraide peers compromised``): entry 3 shows as quarantined, QC's later
entries under that key (even a hand-over) are refused and not followed. QC's new key
comes by its card (``entraide peers update QC --card``): its entries are accepted, the
old key stays trusted up to seq 2 and those entries keep verifying.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.cli.localfed import LocalFederation, wait_for
from tests.e2e._fed import running, submit_green

pytestmark = pytest.mark.slow

NODES = [("QC", "Québec"), ("ON", "Ontario")]
LINKS = [("QC", "ON")]
DEADLINE_S = 60.0


@pytest.fixture
def fed(tmp_path: Path) -> Iterator[LocalFederation]:
    yield from running(tmp_path, NODES, LINKS)



def _qc(fed: LocalFederation) -> dict[str, object]:
    answer: dict[str, object] = fed["ON"].call("GET", "/api/v1/peers/QC")
    return answer


def test_key_compromise_quarantines_later_entries_and_the_new_key_comes_by_card(
        fed: LocalFederation) -> None:
    ids = [str(submit_green(fed, "QC", f"198.51.100.{i}")["id"]) for i in (1, 2, 3)]
    wait_for(lambda: all(fed["ON"].visible(i) for i in ids), DEADLINE_S,
             "ON to hold QC's entries")
    old_key = fed["QC"].key

    bad = fed["ON"].cli("peers", "compromised", "QC", "--since", "yesterday", check=False)
    assert bad.returncode != 0 and "ISO 8601" in bad.stderr
    assert _qc(fed)["compromised_since_seq"] is None  # bad input changes nothing

    marked = json.loads(fed["ON"].cli("peers", "compromised", "QC", "--since", "3",
                                      "--json").stdout)
    assert marked["compromised_since_seq"] == 3 and marked["quarantined"] == 1
    listed = fed["ON"].call("GET", "/api/v1/observations?limit=10")["observations"]
    flags = {o["id"]: o.get("quarantined", False) for o in listed}
    assert flags == {ids[0]: False, ids[1]: False, ids[2]: True}
    assert fed["ON"].call("GET", f"/api/v1/observations/{ids[2]}")["quarantined"] is True
    status = fed["ON"].call("GET", "/api/v1/status")
    assert next(p for p in status["peers"] if p["name"] == "QC")["quarantined"] == 1
    # A later mark does not move an earlier one.
    again = fed["ON"].call("POST", "/api/v1/peers/QC/compromised", {"since_seq": 5})
    assert again["compromised_since_seq"] == 3

    # The owner gets a new key (here by a rotation: its hand-over is past the mark, so
    # ON does not follow it), and sends its new card.
    rotated = json.loads(fed["QC"].cli("key", "rotate", "--json").stdout)
    fed.stop(["QC"])
    fed.start(["QC"])
    ident = json.loads(fed["QC"].cli("id", "--json").stdout)
    assert ident["key"] == rotated["new_key"] != old_key
    assert _qc(fed)["key"] == old_key
    assert not fed["ON"].visible(rotated["id"])

    fed["ON"].cli("peers", "update", "QC", "--card", ident["card"])
    wait_for(lambda: _qc(fed)["key"] == ident["key"], DEADLINE_S, "ON to trust QC's new key")
    qc = _qc(fed)
    assert qc["compromised_since_seq"] is None and qc["quarantined"] == 0
    assert qc["retired_keys"] == [{"key": old_key, "fingerprint": marked["fingerprint"],
                                   "last_seq": 2, "reason": "compromised"}]
    fresh = str(submit_green(fed, "QC", "198.51.100.9")["id"])
    wait_for(lambda: fed["ON"].visible(fresh), DEADLINE_S, "ON to get QC's new entry")
    got = fed["ON"].call("GET", f"/api/v1/observations/{fresh}")
    assert got["origin_name"] == "QC" and got.get("quarantined", False) is False
    for old_id in ids[:2]:
        old = fed["ON"].call("GET", f"/api/v1/observations/{old_id}")
        assert old["verified"] is True and old.get("quarantined", False) is False
    assert fed["ON"].call("GET", f"/api/v1/observations/{ids[2]}")["quarantined"] is True
    assert fed["ON"].call("GET", "/api/v1/ledger/verify")["ok"]
    assert "declared compromised from seq 3" in fed["ON"].log.read_text()
