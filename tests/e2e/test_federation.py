"""End to end, as an operator would: real ``entraide run`` processes set up through the CLI.

A line of four jurisdictions, FED ─ QC ─ ON ─ AB (each dials the next), every node
trusting every other as an author, so entries from one end reach the other only
through relays.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from agent.cli.client import ApiError
from agent.cli.localfed import LocalFederation, wait_for
from agent.metrics import parse_text

pytestmark = pytest.mark.slow

LINE = [("FED", "Canada"), ("QC", "Québec"), ("ON", "Ontario"), ("AB", "Alberta")]
LINKS = [("FED", "QC"), ("QC", "ON"), ("ON", "AB")]
DEADLINE_S = 30.0


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    federation = LocalFederation(tmp_path_factory.mktemp("line"), LINE, LINKS)
    federation.set_up()
    federation.start()
    try:
        yield federation
    finally:
        federation.stop()
        for node in federation.nodes:
            # After a clean stop, every ledger verifies offline too.
            result = node.cli("ledger", "verify", "--json", check=False)
            assert result.returncode == 0, (node.name, result.stdout, result.stderr)
            assert json.loads(result.stdout)["ok"]


def _submit(node, *args: str) -> str:  # type: ignore[no-untyped-def]
    out = node.cli("submit", *args, "--json").stdout
    return str(json.loads(out)["id"])


def test_federation_observation_crosses_the_line(fed: LocalFederation) -> None:
    entry_id = _submit(fed["FED"], "--type", "ipv4-addr", "--value", "198.51.100.23",
                       "--tlp", "GREEN", "--confidence", "90", "--severity", "high",
                       "--description", "C2 seen in federal networks")

    def listed_at_ab() -> bool:
        out = fed["AB"].cli("query", "--type", "ipv4-addr", "--value", "198.51.100.23",
                            "--json").stdout
        return any(o["id"] == entry_id for o in json.loads(out)["observations"])

    wait_for(listed_at_ab, DEADLINE_S, "the observation to reach AB", interval=0.1)
    got = fed["AB"].call("GET", f"/api/v1/observations/{entry_id}")
    assert got["origin_name"] == "FED" and got["origin"] == fed["FED"].key
    assert got["value"] == "198.51.100.23" and got["confidence"] == 90
    agg = fed["ON"].call("GET", "/api/v1/indicators/ipv4-addr/198.51.100.23")
    assert "FED" in agg["origins"]


def test_federation_amber_is_readable_only_by_its_audience(fed: LocalFederation) -> None:
    entry_id = _submit(fed["FED"], "--type", "domain-name", "--value", "amber.example",
                       "--tlp", "AMBER", "--to", "AB")
    wait_for(lambda: fed["AB"].visible(entry_id), DEADLINE_S, "AB to read the AMBER entry")
    assert fed["AB"].call("GET", f"/api/v1/observations/{entry_id}")["tlp"] == "AMBER"
    target = fed["FED"].entries()
    for relay in ("QC", "ON"):
        # The relays hold and forward it, but never list or decrypt it.
        wait_for(lambda r=relay: fed[r].entries() >= target, DEADLINE_S, f"{relay} to hold it")
        assert not fed[relay].visible(entry_id)
        listed = fed[relay].call("GET", "/api/v1/observations?type=domain-name&limit=1000")
        assert entry_id not in {o["id"] for o in listed["observations"]}


def _status(node, method: str, path: str, body: object = None,  # type: ignore[no-untyped-def]
            token: str | None = None) -> int:
    try:
        node.call(method, path, body, token=token)
        return 200
    except ApiError as exc:
        return exc.status


BAD_INPUTS = [
    ("unknown field", {"type": "ipv4-addr", "value": "1.2.3.4", "colour": "red"}, 422),
    ("bad indicator", {"type": "ipv4-addr", "value": "1.2.3.400"}, 422),
    ("unknown type", {"type": "ipv5-addr", "value": "1.2.3.4"}, 422),
    ("unknown tlp", {"type": "ipv4-addr", "value": "1.2.3.4", "tlp": "PURPLE"}, 422),
    ("red without audience", {"type": "ipv4-addr", "value": "1.2.3.4", "tlp": "RED"}, 422),
    ("unknown audience", {"type": "ipv4-addr", "value": "1.2.3.4", "tlp": "AMBER",
                          "audience": ["MARS"]}, 422),
    ("confidence out of range", {"type": "ipv4-addr", "value": "1.2.3.4",
                                 "confidence": 101}, 422),
    ("wrong type", {"type": "ipv4-addr", "value": 1234}, 422),
    ("batch over 1000", {"observations": [{"type": "ipv4-addr", "value": "1.2.3.4"}] * 1001},
     413),
]


@pytest.mark.parametrize(("what", "body", "status"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_federation_bad_input_is_refused_and_changes_nothing(
        fed: LocalFederation, what: str, body: object, status: int) -> None:
    node = fed["QC"]
    before = node.entries()
    assert _status(node, "POST", "/api/v1/observations", body) == status, what
    assert node.entries() == before


def _raw(node, method: str, path: str, data: bytes,  # type: ignore[no-untyped-def]
         headers: dict[str, str]) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(node.api + path, data=data, method=method,
                                     headers={"Authorization": f"Bearer {node.token}", **headers})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_federation_malformed_and_oversize_bodies(fed: LocalFederation) -> None:
    node = fed["QC"]
    before = node.entries()
    status, body = _raw(node, "POST", "/api/v1/observations", b"{not json",
                        {"Content-Type": "application/json"})
    assert status == 400 and set(body["error"]) == {"code", "message"}  # type: ignore[arg-type]
    status, _ = _raw(node, "POST", "/api/v1/observations", b"[" + b" " * (1 << 20) + b"]",
                     {"Content-Type": "application/json"})
    assert status == 413
    assert _status(node, "GET", "/api/v1/observations?cursor=%%%bad") == 400
    assert _status(node, "GET", "/api/v1/observations/" + "0" * 64) == 404
    assert node.entries() == before


def test_federation_scopes_and_tokens(fed: LocalFederation) -> None:
    node = fed["ON"]
    tokens = {scope: json.loads(node.cli("token", "create", "--scope", scope, "--json")
                                .stdout)["token"] for scope in ("read", "write")}
    obs = {"type": "ipv4-addr", "value": "192.0.2.99"}
    assert _status(node, "GET", "/api/v1/status", token="") == 401
    assert _status(node, "GET", "/api/v1/status", token="ent_unknown") == 401
    assert _status(node, "GET", "/api/v1/observations", token=tokens["read"]) == 200
    assert _status(node, "POST", "/api/v1/observations", obs, token=tokens["read"]) == 403
    assert _status(node, "POST", "/api/v1/observations", obs, token=tokens["write"]) == 200
    assert _status(node, "GET", "/api/v1/peers", token=tokens["write"]) == 403
    assert _status(node, "GET", "/api/v1/ledger/verify", token=tokens["write"]) == 403
    assert _status(node, "GET", "/api/v1/health", token="") == 200
    # Retracting another origin's observation is forbidden.
    foreign = _submit(fed["QC"], "--type", "ipv4-addr", "--value", "192.0.2.98")
    wait_for(lambda: node.visible(foreign), DEADLINE_S, "ON to see QC's observation")
    assert _status(node, "POST", f"/api/v1/observations/{foreign}/retract", {}) == 403


def test_federation_stream_delivers_a_remote_observation(fed: LocalFederation) -> None:
    node = fed["AB"]
    events: list[dict[str, object]] = []
    ready = threading.Event()

    def listen() -> None:
        request = urllib.request.Request(node.api + "/api/v1/stream?type=url", headers={
            "Authorization": f"Bearer {node.token}", "Accept": "text/event-stream"})
        with urllib.request.urlopen(request, timeout=DEADLINE_S) as response:
            ready.set()
            event = None
            for raw in response:
                line = raw.decode().rstrip("\n")
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and event == "observation":
                    events.append(json.loads(line.split(":", 1)[1]))
                    return

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    assert ready.wait(DEADLINE_S)
    entry_id = _submit(fed["FED"], "--type", "url", "--value", "https://evil.example/x")
    thread.join(DEADLINE_S)
    assert events and events[0]["id"] == entry_id and events[0]["origin_name"] == "FED"
    # The node measured that way: the batch's time in it by stage, the stream's write.
    def metrics() -> dict[str, Any]:
        request = urllib.request.Request(node.api + "/metrics", headers={
            "Authorization": f"Bearer {node.token}"})
        with urllib.request.urlopen(request, timeout=DEADLINE_S) as response:
            return parse_text(response.read().decode())
    wait_for(lambda: metrics()["entraide_stream_delay_seconds_count"].get((), 0) >= 1,
             DEADLINE_S, "AB to measure its stream's delay")
    ingest = metrics()["entraide_ingest_seconds_count"]
    assert all(ingest[(("stage", stage),)] >= 1 for stage in ("check", "wait", "store", "total"))


def test_federation_kill_9_after_acknowledged_writes_loses_nothing(fed: LocalFederation) -> None:
    node = fed["ON"]
    ids = node.call("POST", "/api/v1/observations", {"observations": [
        {"type": "ipv4-addr", "value": f"203.0.113.{i}", "tlp": "CLEAR"} for i in range(200)]
    })["ids"]
    ids += [node.call("POST", "/api/v1/observations",
                      {"type": "domain-name", "value": f"k{i}.example"})["id"] for i in range(20)]
    fed.kill("ON")  # SIGKILL right after the acknowledgements
    fed.start(["ON"])
    for entry_id in ids:
        assert node.visible(entry_id), entry_id
    assert node.call("GET", "/api/v1/ledger/verify")["ok"]
    # ... and the restarted node relays again: the ids reach AB.
    wait_for(lambda: fed["AB"].visible(ids[-1]), DEADLINE_S, "AB to get ON's entries")


def test_federation_removing_a_peer_live_cuts_it_off(fed: LocalFederation) -> None:
    ab, on = fed["AB"], fed["ON"]

    def connected(node, name: str) -> bool:  # type: ignore[no-untyped-def]
        peers = node.call("GET", "/api/v1/status")["peers"]
        return any(p["name"] == name and p["connected"] for p in peers)

    wait_for(lambda: connected(ab, "ON"), DEADLINE_S, "AB and ON to be connected")
    ab.cli("peers", "remove", "ON")  # edits peers.toml; the running node applies it
    wait_for(lambda: not connected(on, "AB"), 10, "ON to see AB cut off")
    later = _submit(on, "--type", "ipv4-addr", "--value", "192.0.2.200")
    # QC (connected to ON) gets it; AB, cut off and no longer trusting ON, never does.
    wait_for(lambda: fed["QC"].visible(later), DEADLINE_S, "QC to get ON's entry")
    assert not ab.visible(later)
    assert all(p["name"] != "ON" for p in ab.call("GET", "/api/v1/peers")["peers"])


def test_federation_every_ledger_verifies(fed: LocalFederation) -> None:
    for node in fed.nodes:
        out = node.cli("ledger", "verify", "--json").stdout
        assert json.loads(out)["ok"], node.name
