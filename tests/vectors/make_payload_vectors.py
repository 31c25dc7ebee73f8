"""Regenerate tests/vectors/payloads.json (run by hand only when the format changes).

    .venv/bin/python tests/vectors/make_payload_vectors.py > tests/vectors/payloads.json

Each vector is an API input (deliberately not in canonical form), the canonical JSON
dump it normalises to, and the exact payload bytes: the interop contract for bodies.
"""

from __future__ import annotations

import json

from protocol.payloads import encode_payload, parse_payload_json

INPUTS = [
    {"type": "ipv4-addr", "value": " 203.0.113.7 ", "confidence": 80, "severity": "high",
     "description": {"en": "Scanner", "fr": "Balayeur"}, "tags": [" ransomware", "ransomware"],
     "valid_until": "2026-12-31T00:00:00-05:00", "references": ["HTTPS://Example.COM"]},
    {"kind": "observation", "type": "domain-name", "value": "Bücher.Example.",
     "first_seen": "2026-01-01T00:00:00.250Z", "last_seen": "2026-01-02T00:00:00Z"},
    {"kind": "observation", "type": "url", "value": "HTTP://Québec.Example:80/Chemin?q=1"},
    {"kind": "sighting", "of": "AB" * 32, "count": 3, "seen_at": "2026-05-01T08:00:00Z",
     "note": "Seen at the perimeter"},
    {"kind": "retraction", "of": "cd" * 32, "reason": "False positive"},
    {"kind": "alert", "title": "Rançongiciel — hôpital régional", "severity": "critical",
     "description": {"fr": "Besoin d'aide en criminalistique"}, "contact": "soc@example.ca",
     "related": ["ab" * 32], "needs": ["forensics"]},
    {"kind": "rule", "rule_type": "yara", "name": "Example_Loader",
     "text": "rule Example_Loader {\n\tcondition: true\n}\n"},
    {"type": "indicator", "spec_version": "2.1",
     "id": "indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f", "pattern_type": "stix",
     "pattern": "[ipv4-addr:value = '203.0.113.7']", "valid_from": "2026-01-02T00:00:00Z",
     "created": "2026-01-02T00:00:00.000Z", "modified": "2026-01-02T00:00:00.000Z",
     "x_score": 1.5},
    # mutual aid and the expertise directory (protocol/aid.py)
    {"kind": "aid-request", "title": "Hôpitaux touchés par un rançongiciel",
     "severity": "critical", "description": {"en": "EHR down", "fr": "DME en panne"},
     "needs": [{"kind": "forensics", "detail": "disk images"},
               {"kind": "incident-coordination"}],
     "affected": {"sector": "health", "services": ["EHR"], "impact": "3 hospitals"},
     "contact": {"name": "BC duty officer", "channel": "+1-250-555-0100"},
     "related": ["ab" * 32], "respond_by": "2026-12-01T06:00:00-05:00"},
    {"kind": "aid-offer", "request": "ab" * 32, "kinds": ["forensics"], "people": 2,
     "on_site": True, "detail": {"fr": "Deux analystes"}, "contact": {"name": "CSIRT QC"}},
    {"kind": "aid-withdraw", "request": "ab" * 32, "offer": "cd" * 32},
    {"kind": "aid-accept", "request": "ab" * 32, "offer": "cd" * 32},
    {"kind": "aid-update", "request": "ab" * 32, "status": "in-progress",
     "note": {"en": "Imaging started", "fr": "Imagerie commencée"}},
    {"kind": "aid-close", "request": "ab" * 32, "summary": {"en": "Restored"}},
    {"kind": "capabilities", "skills": ["forensics", "recovery"], "languages": ["fr", "en"],
     "hours": "24/7", "contact": {"name": "SOC", "channel": "soc@example.ca"}},
    # a CACAO 2.0 playbook, carried as canonical JSON text (protocol/payload_models.py)
    {"kind": "playbook", "playbook_json": json.dumps(
        {"type": "playbook", "spec_version": "cacao-2.0",
         "id": "playbook--7d2e0ba4-7d5c-4b4e-9d2b-4b1c1f0f6a11",
         "name": "Isoler un poste compromis", "created": "2026-01-02T00:00:00.000Z"},
        sort_keys=True, separators=(",", ":"), ensure_ascii=False)},
    # erasure and its receipt (protocol/erasure.py)
    {"kind": "erasure", "of": "AB" * 32, "reason": "Citizen's request (Law 25)"},
    {"kind": "erasure-receipt", "of": "ab" * 32, "erasure": "cd" * 32},
    # key rotation (protocol/handover.py; the keys are tests/vectors/handover.json's)
    {"kind": "handover", "new_key": "ed25519:9cxXRhBtFDMO76nkcflbf0aMGKg1Hc1Mwd6i9_If3FY",
     "countersig": "sOvr7fDofI6-s8eOH7ur-HuhLcDBN52CPZTW2VzIxBI-"
                   "iGRsO0iCeS2J6bN-gs6CeFSC9uTgFyrtWoUykiKIAQ"},
]


def main() -> None:
    vectors = []
    for obj in INPUTS:
        payload = parse_payload_json(obj)
        vectors.append({
            "kind": payload.kind,
            "input": obj,
            "canonical": payload.model_dump(mode="json", exclude_none=True),
            "encoded": encode_payload(payload).hex(),
        })
    print(json.dumps(vectors, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
