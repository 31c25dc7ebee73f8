"""``entraide demo``: a local federation of five jurisdictions, end to end.

Five real ``entraide run`` processes (FED, QC, ON, AB, BC) on loopback, each with
its own temporary data dir, set up exactly as operators would: ``init``, exchange of
peer cards, ``token create``. Every node trusts every other as an author, but only
some links are dialled, so entries must be relayed:

    BC ── AB ── ON ── FED ── QC
                       └─────┘ (no direct link from QC to ON, AB or BC)

The demo submits a handful of realistic observations (one AMBER to a subset, one
retraction), shows who received what, when, and who could read what. Then mutual aid
(:func:`aid_scene`): BC's hospitals are hit, BC asks FED and QC (RED) for help, both
offer, BC accepts QC, ON shares a Sigma rule every node can export, BC closes with a
bilingual summary; ON and AB relay the thread sealed. It verifies every ledger and
exits 0 (or stays up with ``--keep``).
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

from agent.cli.client import ApiError, render_table
from agent.cli.examples import epilog
from agent.cli.lang import _, current_lang
from agent.cli.localfed import FedNode, LocalFederation, wait_for, wait_idle
from protocol.errors import EntraideError

__all__ = ["aid_scene", "demo_command", "run_demo"]

NODES = [("FED", "Gouvernement du Canada"), ("QC", "Québec"), ("ON", "Ontario"),
         ("AB", "Alberta"), ("BC", "British Columbia")]
# Who dials whom: not all directly connected, so entries are relayed.
LINKS = [("QC", "FED"), ("FED", "ON"), ("ON", "AB"), ("AB", "BC")]
SYNC_TIMEOUT_S = 60.0
DEMO_DATA = Path(__file__).resolve().parent / "demo_data"


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
        _say(_("Setting up five nodes in {root} (init, peer cards, tokens):").format(root=root))
        fed.set_up(on_node=lambda n: _say(
            f"  {n.name:<4} {n.jurisdiction:<24} " + _("fingerprint") + f" {n.fingerprint}"))
        _say(_("Links dialled: {links} (every node trusts every other as an author)").format(
            links=", ".join(f"{a}→{b}" for a, b in LINKS)))
        fed.start()

        def linked() -> bool:
            for a, b in LINKS:
                peers = by_name[a].call("GET", "/api/v1/status")["peers"]
                if not any(p["name"] == b and p["connected"] for p in peers):
                    return False
            return True

        link_s = wait_for(linked, SYNC_TIMEOUT_S, "every link to connect")
        _say(_("All five nodes are up; every link connected {ms} ms later.").format(
            ms=f"{link_s * 1000:.0f}"))
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
                    cells.append(_("author"))
                else:
                    how = _("read") if node.visible(entry_id) else _("sealed")
                    cells.append(f"{how} {received[node.name] * 1000:.0f} ms")
            value = result.get("value", body["value"])
            rows.append([f"{author}: {body['tlp']} {body['type']}", *cells])
            _say(_("{author} shared {tlp} {type} {value}").format(
                author=author, tlp=f"{body['tlp']:<6}", type=body["type"], value=value))
        author, body, entry_id = submitted[-1]
        t0 = time.monotonic()
        by_name[author].call("POST", f"/api/v1/observations/{entry_id}/retract",
                             {"reason": "false positive: a CDN shared by many tenants"})
        total = len(SUBMISSIONS) + 1
        retract_s = wait_for(lambda: all(n.entries() >= total for n in nodes), SYNC_TIMEOUT_S,
                             "the retraction to reach every node")
        _say(_("{author} retracted its {type} observation (everywhere after {ms} ms)").format(
            author=author, type=body["type"], ms=f"{retract_s * 1000:.0f}") + "\n")
        _say(_("Who received what, how long after submission, and who could read it:"))
        _say(render_table([_("observation"), *[n.name for n in nodes]], rows))
        _say(_("read: verified, stored and readable there. sealed: verified and stored, but "
               "encrypted for its audience only.") + "\n")

        aid_scene(nodes)
        _say("")

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
        _say(render_table([_("node"), _("entries"), _("listed"), _("retractions"),
                           _("connected to"), _("ledger verify")], timing_rows))
        indicator = urllib.parse.quote("203.0.113.7", safe="")
        agg = by_name["BC"].call("GET", f"/api/v1/indicators/ipv4-addr/{indicator}")
        _say("\n" + _("BC looks up 203.0.113.7: reported by {origins}, first seen {first}")
             .format(origins=", ".join(agg["origins"]), first=agg["first_seen"]))
        broken = [r[0] for r in timing_rows if r[-1] != "ok"]
        if broken:
            _say(_("ledger verification FAILED on {nodes}").format(nodes=", ".join(broken)))
            return 1
        if keep:
            _say("\n" + _("The federation keeps running (Ctrl-C to stop):"))
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


AID_REQUEST: dict[str, Any] = {
    "title": "Ransomware in BC hospitals / Rançongiciel dans des hôpitaux de la C.-B.",
    "severity": "critical",
    "description": {"en": "Electronic health records are down in three hospitals.",
                    "fr": "Les dossiers médicaux électroniques sont en panne dans trois "
                          "hôpitaux."},
    "needs": [{"kind": "forensics", "detail": "disk and memory images of 40 hosts"},
              {"kind": "incident-coordination"}],
    "affected": {"sector": "health", "services": ["EHR", "imaging"],
                 "impact": "surgeries delayed"},
    "mitigations": {"en": "Network segmented; backups offline.",
                    "fr": "Réseau segmenté; sauvegardes hors ligne."},
    "contact": {"name": "BC duty officer / agent de service C.-B.",
                "channel": "+1-250-555-0100"},
    "tlp": "RED", "audience": ["FED", "QC"],
}
AID_HELPERS = ("FED", "QC")


def aid_scene(nodes: list[FedNode]) -> None:
    """Mutual aid, step by step, each step one signed entry (docs/operations.md, "Mutual
    aid"); prints what happens and a table of who could read each step and how long it
    took to reach them ("read": readable there; "sealed": held, relayed, unreadable:
    the request answers 404 there).

    Raises:
        EntraideError: a step did not reach every node in time, or a node outside the
            request's audience could read it.
    """
    by_name = {n.name: n for n in nodes}
    bc = by_name["BC"]
    rid = ""
    rows: list[list[str]] = []

    def thread_ids(node: FedNode) -> set[str]:
        try:
            view = node.call("GET", f"/api/v1/aid/requests/{rid}")
        except ApiError as exc:
            if exc.status == 404:
                return set()
            raise
        return ({view["id"]} | {o["id"] for o in view["offers"]}
                | {u["id"] for u in view["updates"]})

    def rule_readable(node: FedNode, entry_id: str) -> bool:
        try:
            return bool(node.call("GET", f"/api/v1/rules/{entry_id}")["valid"])
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise

    def step(label: str, author: FedNode, path: str, body: Any, readers: set[str],
             is_rule: bool = False) -> dict[str, Any]:
        """Post one entry at ``author``; time its arrival (held) and reading at the others."""
        nonlocal rid
        before = author.entries()
        t0 = time.monotonic()
        result: dict[str, Any] = author.call("POST", path, body)
        entry_id = result["id"]
        if not rid:
            rid = entry_id
        held: dict[str, float] = {}
        read: dict[str, float] = {}
        others = [n for n in nodes if n is not author]
        readers = readers - {author.name}

        def readable(node: FedNode) -> bool:
            return rule_readable(node, entry_id) if is_rule else entry_id in thread_ids(node)

        def arrived() -> bool:
            for node in others:
                if node.name not in held and node.entries() > before:
                    held[node.name] = time.monotonic() - t0
                if (node.name in readers and node.name in held and node.name not in read
                        and readable(node)):
                    read[node.name] = time.monotonic() - t0
            return len(held) == len(others) and readers <= set(read)

        wait_for(arrived, SYNC_TIMEOUT_S, f"{label} to reach every node", interval=0.01)
        cells = []
        for node in nodes:
            if node is author:
                cells.append(_("author"))
            elif node.name in read:
                cells.append(_("read") + f" {read[node.name] * 1000:.0f} ms")
            else:
                if readable(node):
                    raise EntraideError(f"{node.name} could read {label}")
                cells.append(_("sealed") + f" {held[node.name] * 1000:.0f} ms")
        rows.append([f"{author.name}: {label}", *cells])
        return result

    everyone = {n.name for n in nodes}
    thread = set(AID_HELPERS) | {"BC"}
    _say(_("Mutual aid: BC's hospitals are hit by ransomware at 3 a.m."))
    step(_("RED aid request"), bc, "/api/v1/aid/requests", AID_REQUEST, set(AID_HELPERS))
    _say(_("BC asks {helpers} (RED) for forensics and incident coordination: request "
           "{id}").format(helpers=_(" and ").join(AID_HELPERS), id=rid[:16]))
    path = f"/api/v1/aid/requests/{rid}"
    qc_offer = step(_("offer forensics (fr)"), by_name["QC"], path + "/offers", {
        "kinds": ["forensics"], "people": 2, "on_site": False,
        "detail": {"fr": "Deux analystes en criminalistique, en français, dès maintenant",
                   "en": "Two forensic analysts, in French, right now"},
        "contact": {"name": "CSIRT Québec"}}, thread)["id"]
    _say(_("QC offers forensics: « Deux analystes en criminalistique, en français, "
           "dès maintenant »"))
    step(_("offer coordination"), by_name["FED"], path + "/offers", {
        "kinds": ["incident-coordination"], "people": 1,
        "detail": {"en": "A coordinator from the federal operations centre",
                   "fr": "Un coordonnateur du centre des opérations fédéral"}}, thread)
    _say(_("FED offers incident coordination"))
    accepted = step(_("accepts QC's offer"), bc, f"{path}/offers/{qc_offer}/accept",
                    {"note": {"en": "Thank you, please start", "fr": "Merci, allez-y"}},
                    set(AID_HELPERS))
    _say(_("BC accepts QC's offer: the request is {status}").format(
        status=accepted["status"]))
    sigma = (DEMO_DATA / "anydesk_silent_install.yml").read_text(encoding="utf-8")
    rule = step(_("GREEN sigma rule"), by_name["ON"], "/api/v1/rules", {
        "rule_type": "sigma", "name": "AnyDesk Silent Installation", "text": sigma,
        "description": {"en": "Remote access used by the ransomware operators",
                        "fr": "Accès à distance utilisé par les opérateurs du rançongiciel"},
        "tlp": "GREEN"}, everyone - {"ON"}, is_rule=True)
    exports = []
    for node in nodes:
        text = node.cli("rules", "export", "--type", "sigma").stdout
        if "AnyDesk Silent Installation" not in text:
            raise EntraideError(f"{node.name}'s Sigma export lacks ON's rule {rule['id']}")
        exports.append(node.name)
    _say(_("ON shares the SigmaHQ rule 'AnyDesk Silent Installation'; checked by pySigma "
           "on receipt, it is in the Sigma export of {nodes} (entraide rules export "
           "--type sigma)").format(nodes=", ".join(exports)))
    closed = step(_("closes with a summary"), bc, path + "/close", {
        "summary": {"en": "EHR restored from offline backups; QC's images found the entry "
                          "point (AnyDesk).",
                    "fr": "Dossiers rétablis depuis les sauvegardes hors ligne; les images de "
                          "QC ont révélé le point d'entrée (AnyDesk)."}}, set(AID_HELPERS))
    summary = closed["summary"]
    first, second = ("fr", "en") if current_lang() == "fr" else ("en", "fr")
    _say(_("BC closes the request ({status}):").format(status=closed["status"])
         + f"\n  {first}: {summary[first]}\n  {second}: {summary[second]}")
    sealed = [n.name for n in nodes if n.name not in thread]
    for name in sealed:
        try:
            by_name[name].call("GET", path)
            raise EntraideError(f"{name} could read BC's RED request")
        except ApiError as exc:
            if exc.status != 404:
                raise
    _say("\n" + _("Who could read each step of the thread, and how long it took to reach "
                  "them:"))
    _say(render_table([_("aid step"), *[n.name for n in nodes]], rows))
    _say(_("Times count from the author's POST (its engine check included: ON's first Sigma "
           "rule loads pySigma)."))
    _say(_("{nodes} hold the request sealed and relay it: GET /api/v1/aid/requests/{id}... "
           "answers 404 there.").format(nodes=_(" and ").join(sealed), id=rid[:16]))


def demo_command(argv: list[str], data_dir: Path) -> int:
    """``entraide demo [--keep]`` (``--data-dir`` is ignored: the demo makes its own)."""
    parser = argparse.ArgumentParser(
        prog="entraide demo", epilog=epilog("demo"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=_("A local federation of five jurisdictions, end to end: real nodes on "
                      "127.0.0.1, observations, a retraction, then mutual aid."))
    parser.add_argument("--keep", action="store_true",
                        help=_("leave the federation running; print each node's API URL "
                               "and token"))
    parser.add_argument("--dir", type=Path, help=_("put the five data dirs here (kept)"))
    args = parser.parse_args(argv)
    return run_demo(keep=args.keep, root=args.dir)
