"""``entraide demo``: a local federation of five jurisdictions, end to end.

Five real ``entraide run`` processes (FED, QC, ON, AB, BC) on loopback, each with
its own temporary data dir, set up exactly as operators would: ``init``, exchange of
peer cards, ``token create``. Every node trusts every other as an author, but only
some links are dialled, so entries must be relayed:

    BC ── AB ── ON ── FED ── QC
                       └─────┘ (no direct link from QC to ON, AB or BC)

The demo submits a handful of realistic observations (one AMBER to a subset, one
retraction), shows who received what, when, and who could read what, verifies
every ledger, and exits 0 (or stays up with ``--keep``).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

from agent.cli.client import render_table
from agent.cli.localfed import LocalFederation, wait_for, wait_idle

__all__ = ["demo_command", "run_demo"]

NODES = [("FED", "Gouvernement du Canada"), ("QC", "Québec"), ("ON", "Ontario"),
         ("AB", "Alberta"), ("BC", "British Columbia")]
# Who dials whom: not all directly connected, so entries are relayed.
LINKS = [("QC", "FED"), ("FED", "ON"), ("ON", "AB"), ("AB", "BC")]
SYNC_TIMEOUT_S = 60.0


def _say(text: str) -> None:
    print(text, flush=True)


SUBMISSIONS: list[tuple[str, dict[str, Any]]] = [
    ("QC", {"type": "ipv4-addr", "value": "203.0.113.7", "tlp": "GREEN", "confidence": 85,
            "severity": "high", "tags": ["ransomware", "c2"],
            "description": {"fr": "Serveur de commande et contrôle LockBit observé",
                            "en": "LockBit command-and-control server"}}),
    ("FED", {"type": "cve", "value": "cve-2026-21345", "tlp": "CLEAR", "confidence": 100,
             "severity": "critical", "tags": ["exploited"],
             "description": {"en": "Actively exploited in provincial health networks"}}),
    ("ON", {"type": "domain-name", "value": "Login-Secure-Ontario.EXAMPLE", "tlp": "AMBER",
            "audience": ["FED", "QC"], "confidence": 70, "severity": "medium",
            "tags": ["phishing"], "description": {"en": "Credential phishing kit"}}),
    ("AB", {"type": "file:sha256",
            "value": "A3F1" + "0" * 56 + "BEEF", "tlp": "GREEN", "confidence": 60,
            "severity": "high", "tags": ["wiper"]}),
    ("BC", {"type": "url", "value": "HTTPS://cdn.example.net/payload.ps1", "tlp": "GREEN",
            "confidence": 50, "severity": "medium", "tags": ["loader"]}),
]


def run_demo(keep: bool = False, root: Path | None = None) -> int:
    own_root = root is None
    root = Path(tempfile.mkdtemp(prefix="entraide-demo-")) if root is None else root
    fed = LocalFederation(root, NODES, LINKS)
    nodes = fed.nodes
    by_name = {n.name: n for n in nodes}
    try:
        _say(f"Setting up five nodes in {root} (init, peer cards, tokens):")
        fed.set_up(on_node=lambda n: _say(
            f"  {n.name:<4} {n.jurisdiction:<24} fingerprint {n.fingerprint}"))
        _say("Links dialled: " + ", ".join(f"{a}→{b}" for a, b in LINKS)
             + " (every node trusts every other as an author)")
        fed.start()

        def linked() -> bool:
            for a, b in LINKS:
                peers = by_name[a].call("GET", "/api/v1/status")["peers"]
                if not any(p["name"] == b and p["connected"] for p in peers):
                    return False
            return True

        link_s = wait_for(linked, SYNC_TIMEOUT_S, "every link to connect")
        _say(f"All five nodes are up; every link connected {link_s * 1000:.0f} ms later.")
        # Each node starts its verify worker processes (~0.5 s of CPU each): let that end
        # so that the times below are of replication, not of start-up.
        wait_idle(n.process.pid for n in nodes if n.process is not None)
        _say("")

        # One at a time, so each entry's spread is measured alone: "received" is when a
        # node's ledger holds it (verified), "read" when the node also lists it.
        rows, submitted = [], []
        for k, (author, body) in enumerate(SUBMISSIONS, 1):
            t0 = time.monotonic()
            result = by_name[author].call("POST", "/api/v1/observations", body)
            entry_id = result["id"]
            submitted.append((author, body, entry_id))
            received: dict[str, float] = {}

            def spread(k: int = k, t0: float = t0, received: dict[str, float] = received
                       ) -> bool:
                for node in nodes:
                    if node.name not in received and node.entries() >= k:
                        received[node.name] = time.monotonic() - t0
                return len(received) == len(nodes)

            wait_for(spread, SYNC_TIMEOUT_S, f"{author}'s entry to reach every node")
            cells = []
            for node in nodes:
                if node.name == author:
                    cells.append("author")
                else:
                    how = "read" if node.visible(entry_id) else "sealed"
                    cells.append(f"{how} {received[node.name] * 1000:.0f} ms")
            value = result.get("value", body["value"])
            rows.append([f"{author}: {body['tlp']} {body['type']}", *cells])
            _say(f"{author} shared {body['tlp']:<6} {body['type']} {value}")
        author, body, entry_id = submitted[-1]
        t0 = time.monotonic()
        by_name[author].call("POST", f"/api/v1/observations/{entry_id}/retract",
                             {"reason": "false positive: a CDN shared by many tenants"})
        total = len(SUBMISSIONS) + 1
        retract_s = wait_for(lambda: all(n.entries() >= total for n in nodes), SYNC_TIMEOUT_S,
                             "the retraction to reach every node")
        _say(f"{author} retracted its {body['type']} observation "
             f"(everywhere after {retract_s * 1000:.0f} ms)\n")
        _say("Who received what, how long after submission, and who could read it:")
        _say(render_table(["observation", *[n.name for n in nodes]], rows))
        _say("read: verified, stored and readable there. sealed: verified and stored, but "
             "encrypted for its audience only.\n")

        timing_rows = []
        for node in nodes:
            status = node.call("GET", "/api/v1/status")
            listed = node.call("GET", "/api/v1/observations?limit=100")["observations"]
            listed_r = node.call("GET", "/api/v1/observations?limit=100&include_retracted=true")
            verify = node.call("GET", "/api/v1/ledger/verify")
            connected = sorted(p["name"] for p in status["peers"] if p["connected"])
            timing_rows.append([node.name, str(status["ledger"]["entries"]), str(len(listed)),
                                str(len(listed_r["observations"]) - len(listed)),
                                ",".join(connected), "ok" if verify.get("ok") else "BROKEN"])
        _say(render_table(["node", "entries", "listed", "retracted", "connected to",
                           "ledger verify"], timing_rows))
        indicator = urllib.parse.quote("203.0.113.7", safe="")
        agg = by_name["BC"].call("GET", f"/api/v1/indicators/ipv4-addr/{indicator}")
        _say(f"\nBC looks up 203.0.113.7: reported by {', '.join(agg['origins'])}, "
             f"first seen {agg['first_seen']}")
        broken = [r[0] for r in timing_rows if r[-1] != "ok"]
        if broken:
            _say(f"ledger verification FAILED on {', '.join(broken)}")
            return 1
        if keep:
            _say("\nThe federation keeps running (Ctrl-C to stop):")
            for node in nodes:
                _say(f"  {node.name:<4} {node.api}  token {node.token}  "
                     f"data {node.data_dir}")
            with contextlib.suppress(KeyboardInterrupt):
                signal.pause()
        return 0
    finally:
        fed.stop()
        if own_root and not keep:
            shutil.rmtree(root, ignore_errors=True)


def demo_command(argv: list[str], data_dir: Path) -> int:
    """``entraide demo [--keep]`` (``--data-dir`` is ignored: the demo makes its own)."""
    parser = argparse.ArgumentParser(prog="entraide demo", description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true",
                        help="leave the federation running; print each node's API URL and token")
    parser.add_argument("--dir", type=Path, help="put the five data dirs here (kept)")
    args = parser.parse_args(argv)
    return run_demo(keep=args.keep, root=args.dir)
