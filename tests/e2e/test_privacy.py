"""Privacy end to end (issue 15), with real ``entraide run`` processes set up through
the CLI, in a line QC ─ ON ─ BC (each dials the next; ON relays between the ends).

- Erasure: BC erases a personal-data observation with ``entraide erase``; every node
  answers 410, receipts from QC and ON reach BC, TAXII no longer serves it, and the
  value's bytes occur in no file of any node's data dir (ledger, WAL, shm, TAXII
  index, keys, config) nor in its log.
- Retention, gossiped: an observation whose signed expiry (from its ``valid_until``)
  is a few seconds ahead reaches QC through ON; both serve it until that instant and
  never before it drop it, then both report it expired and answer 404.
- Blinded audiences: ON relays a RED entry for QC only, and the header it holds names
  no member's key id (docs/protocol.md §4).
"""

from __future__ import annotations

import json
import sqlite3
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.cli.client import ApiError
from agent.cli.localfed import FedNode, LocalFederation, wait_for
from agent.taxii.app import API_ROOT, COLLECTIONS
from protocol.entries import VerifiedEntry, verify_header
from protocol.keys import PublicKey
from tests.e2e._fed import running

pytestmark = pytest.mark.slow

LINE = [("QC", "Québec"), ("ON", "Ontario"), ("BC", "British Columbia")]
LINKS = [("QC", "ON"), ("ON", "BC")]
DEADLINE_S = 30.0
MEDIA = "application/taxii+json;version=2.1"


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    yield from running(tmp_path_factory.mktemp("privacy"), LINE, LINKS)


def _status(node: FedNode, path: str) -> int:
    try:
        node.call("GET", path)
        return 200
    except ApiError as exc:
        return exc.status


def _taxii(node: FedNode) -> str:
    request = urllib.request.Request(
        f"{node.api}{API_ROOT}collections/{COLLECTIONS[0].id}/objects/",
        headers={"Accept": MEDIA, "Authorization": f"Bearer {node.token}"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        assert resp.status == 200
        return str(resp.read().decode())


def files_holding(roots: list[Path], needle: bytes) -> list[str]:
    """Every file under ``roots`` whose bytes contain ``needle``."""
    return [str(p) for root in roots for p in root.rglob("*")
            if p.is_file() and needle in p.read_bytes()]


def test_privacy_erasure_leaves_no_byte_on_any_node(fed: LocalFederation) -> None:
    value = "victim.e2e-erasure@example.org"
    created = fed["BC"].call("POST", "/api/v1/observations",
                             {"type": "email-addr", "value": value})
    target = created["id"]
    assert created["tlp"] == "AMBER"  # personal data: AMBER by default, to every member
    for node in fed.nodes:
        wait_for(lambda n=node: n.visible(target), DEADLINE_S, f"{node.name} to read it")
        wait_for(lambda n=node: value in _taxii(n), DEADLINE_S, f"{node.name}'s TAXII")
    roots = [n.data_dir for n in fed.nodes]
    assert files_holding(roots, value.encode())  # the search finds it before

    fed["BC"].cli("erase", target, "--reason", "the citizen asked")

    for node in fed.nodes:
        wait_for(lambda n=node: _status(n, f"/api/v1/observations/{target}") == 410,
                 DEADLINE_S, f"{node.name} to answer 410")

    def receipts() -> set[str]:
        got = fed["BC"].call("GET", f"/api/v1/observations/{target}/erasure")
        return {str(r["node"]) for r in got["receipts"]}

    wait_for(lambda: {"QC", "ON"} <= receipts(), DEADLINE_S, "receipts from QC and ON")
    for node in fed.nodes:
        assert value not in _taxii(node)
        listed = node.call("GET", "/api/v1/observations?type=email-addr&limit=1000")
        assert target not in {o["id"] for o in listed["observations"]}
    # No byte of the value in any file of any node (ledger, WAL, shm, TAXII index),
    # nor in the nodes' logs. Each node scrubs as it erases; wait for the last one.
    logs = [n.log for n in fed.nodes]
    wait_for(lambda: not files_holding(roots, value.encode()), DEADLINE_S,
             "no node's files to hold the value")
    assert not [str(p) for p in logs if value.encode() in p.read_bytes()]
    for node in fed.nodes:
        report = json.loads(node.cli("ledger", "verify", "--json").stdout)
        assert report["ok"], report


def test_privacy_gossiped_retention_drops_the_same_body_at_the_signed_instant(
        fed: LocalFederation) -> None:
    value = "198.51.100.201"
    ahead_s = 6
    valid_until = datetime.fromtimestamp(int(time.time()) + ahead_s, UTC)
    created = fed["BC"].call("POST", "/api/v1/observations", {
        "type": "ipv4-addr", "value": value, "tlp": "GREEN",
        "valid_until": valid_until.isoformat().replace("+00:00", "Z")})
    entry_id = created["id"]
    expires_s = valid_until.timestamp()
    path = f"/api/v1/observations/{entry_id}"
    wait_for(lambda: fed["QC"].visible(entry_id), DEADLINE_S, "QC to read it through ON")
    # Until the signed instant both ends serve it; a node that dropped it early fails.
    ends = [fed["BC"], fed["QC"]]
    while time.time() < expires_s - 0.5:
        statuses = {n.name: _status(n, path) for n in ends}
        if time.time() < expires_s - 0.2:  # both answers came before the instant
            assert statuses == {"BC": 200, "QC": 200}, statuses
        time.sleep(0.1)
    for node in ends:
        wait_for(lambda n=node: _status(n, path) == 404, DEADLINE_S,
                 f"{node.name} to drop the expired body")
    assert time.time() >= expires_s
    for node in fed.nodes:  # ON relays it too: the same rule drops it there
        wait_for(lambda n=node: json.loads(n.cli("ledger", "verify", "--json").stdout)
                 ["bodies"].get("expired", 0) >= 1, DEADLINE_S, f"{node.name}: expired")
        assert value not in _taxii(node)


def _headers_of(node: FedNode, origin: str) -> list[VerifiedEntry]:
    """The headers of ``origin``'s entries as ``node`` stores them (read from its
    ledger file: what anyone with the node's disk sees)."""
    ledger = next(p for p in node.data_dir.glob("*.sqlite3") if ".taxii." not in p.name)
    conn = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT header FROM entries").fetchall()
    finally:
        conn.close()
    headers = [verify_header(bytes(header)) for (header,) in rows]
    return [h for h in headers if h.origin.text == origin]


def test_privacy_a_relay_cannot_name_a_red_audience(fed: LocalFederation) -> None:
    created = fed["BC"].call("POST", "/api/v1/observations", {
        "type": "domain-name", "value": "red-audience.example", "tlp": "RED",
        "audience": ["QC"]})
    entry_id = created["id"]
    assert sorted(created["audience"]) == ["BC", "QC"]
    wait_for(lambda: fed["QC"].visible(entry_id), DEADLINE_S, "QC to read it")
    assert sorted(fed["QC"].call("GET", f"/api/v1/observations/{entry_id}")["audience"]) \
        == ["BC", "QC"]
    assert not fed["ON"].visible(entry_id)
    held = [e for e in _headers_of(fed["ON"], fed["BC"].key) if e.id == entry_id]
    assert len(held) == 1 and held[0].audience is not None
    members = {PublicKey.from_text(n.key).key_id for n in fed.nodes}
    assert len(held[0].audience) == 2 and not set(held[0].audience) & members
