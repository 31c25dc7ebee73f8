"""protocol/stix_aid.py: a request for assistance as a STIX incident that passes
stix2-validator, with the OASIS Incident Core extension."""

from __future__ import annotations

import stix2
from stix2validator import ValidationOptions, validate_instance

from protocol.aid import AidRequest
from protocol.entries import TLP
from protocol.stix_aid import INCIDENT_CORE_EXTENSION_ID, aid_request_to_stix

ENTRY = "ab" * 32
ORIGIN = "ed25519:" + "A" * 43


def _request(**fields: object) -> AidRequest:
    return AidRequest.model_validate({
        "title": "Ransomware in three hospitals", "severity": "critical",
        "description": {"fr": "DME en panne"},
        "needs": [{"kind": "forensics", "detail": "disk images"}, {"kind": "recovery"}],
        "contact": {"name": "BC duty officer", "channel": "+1-250-555-0100"}, **fields})


def test_stix_aid_request_is_a_valid_incident_with_incident_core() -> None:
    for request in (_request(), _request(
            description={"en": "EHR down", "fr": "DME en panne"},
            affected={"sector": "health", "services": ["EHR"], "impact": "surgeries delayed"},
            mitigations={"en": "segmented"}, related=["cd" * 32],
            respond_by="2026-12-04T06:00:00Z")):
        obj = aid_request_to_stix(request, entry_id=ENTRY, origin=ORIGIN, seq=3,
                                  ts=1_796_000_000_000, tlp=TLP.RED)
        result = validate_instance(obj, ValidationOptions())
        assert result.is_valid, [str(e) for e in result.errors]
        stix2.parse(obj)
        assert obj["type"] == "incident" and obj["name"] == request.title
        core = obj["extensions"][INCIDENT_CORE_EXTENSION_ID]
        assert core["determination"] == "suspected" and core["investigation_status"] == "new"
        assert "need:forensics" in obj["labels"] and "severity:critical" in obj["labels"]


def test_stix_aid_french_only_description_keeps_its_language() -> None:
    obj = aid_request_to_stix(_request(), entry_id=ENTRY, origin=ORIGIN, seq=1, ts=0,
                              tlp=TLP.AMBER)
    assert (obj["description"], obj["lang"]) == ("DME en panne", "fr")
