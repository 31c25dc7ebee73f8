"""End to end: a node restored from an old backup never forks its own chain.

QC dials ON and FED. QC writes, is backed up while it runs, writes more (its peers get
it all), then is stopped and restored from the old backup. Alone, the restored QC
refuses to sign (503 ``restoring``, bilingual, and its status says why); once its
peers are back it fetches its own later entries, opens, and its next entry continues
the chain: no peer records a fork, and every ledger verifies.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.cli.client import ApiError
from agent.cli.localfed import LocalFederation, wait_for
from agent.storage.backup import RESTORED_MARKER
from tests.e2e._fed import running, submit_green

pytestmark = pytest.mark.slow

NODES = [("QC", "Québec"), ("ON", "Ontario"), ("FED", "Canada")]
LINKS = [("QC", "ON"), ("QC", "FED")]
DEADLINE_S = 60.0


@pytest.fixture
def fed(tmp_path: Path) -> Iterator[LocalFederation]:
    yield from running(tmp_path, NODES, LINKS)



def _own_seq(fed: LocalFederation, name: str) -> int:
    """The highest seq of QC's chain that ``name`` holds (from its observations)."""
    page = fed[name].call("GET", "/api/v1/observations?origin=QC&limit=1000")
    return max((int(o["seq"]) for o in page["observations"]), default=0)


def test_restore_old_backup_catches_up_own_chain_and_forks_nothing(
        fed: LocalFederation, tmp_path: Path) -> None:
    for i in range(3):
        submit_green(fed, "QC", f"198.51.100.{i + 1}")
    archive = tmp_path / "qc-backup.tar"
    fed["QC"].cli("backup", str(archive))
    later = [submit_green(fed, "QC", f"198.51.100.{i + 10}") for i in range(4)]
    assert [e["seq"] for e in later] == [4, 5, 6, 7]
    for peer in ("ON", "FED"):
        wait_for(lambda p=peer: _own_seq(fed, p) == 7, DEADLINE_S, f"{peer} to hold QC's 7")
    fed.stop()

    fed["QC"].cli("restore", str(archive), "--force")
    assert (fed["QC"].data_dir / RESTORED_MARKER).exists()
    fed.start(["QC"])  # its peers are down: it cannot learn its own head yet
    assert _own_seq(fed, "QC") == 3
    with pytest.raises(ApiError) as refused:
        submit_green(fed, "QC", "198.51.100.99")
    assert refused.value.status == 503 and refused.value.code == "restoring"
    assert "restored" in str(refused.value) and "restauré" in str(refused.value)
    restore = fed["QC"].call("GET", "/api/v1/status")["restore"]
    assert restore["state"] == "catching-up" and restore["own_seq"] == 3
    assert restore["peers_needed"] == ["FED", "ON"] and restore["peers_heard"] == []
    assert set(restore["message"]) == {"en", "fr"}
    assert _own_seq(fed, "QC") == 3  # the refused submission wrote nothing

    fed.start(["ON", "FED"])
    wait_for(lambda: fed["QC"].call("GET", "/api/v1/status")["restore"] is None,
             DEADLINE_S, "the restored QC to catch up its own chain", interval=0.1)
    assert not (fed["QC"].data_dir / RESTORED_MARKER).exists()
    assert _own_seq(fed, "QC") == 7
    assert "caught up its own chain at seq 7" in fed["QC"].log.read_text()

    after = submit_green(fed, "QC", "198.51.100.100")
    assert after["seq"] == 8
    for peer in ("ON", "FED"):
        wait_for(lambda p=peer: _own_seq(fed, p) == 8, DEADLINE_S, f"{peer} to hold seq 8")
    for node in fed.nodes:
        status = node.call("GET", "/api/v1/status")
        assert status["forks"] == [] and status["ledger"]["forked_origins"] == 0, node.name
        assert node.call("GET", "/api/v1/ledger/verify")["ok"], node.name
    fed.stop()
    for node in fed.nodes:
        verified = json.loads(node.cli("ledger", "verify", "--json").stdout)
        assert verified["ok"], node.name
