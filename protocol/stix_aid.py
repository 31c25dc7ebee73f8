"""A request for assistance as STIX 2.1: an ``incident`` with the OASIS Incident Core
extension (docs/protocol.md, "STIX mapping").

The incident carries the request's title, description (English first; the other
language in the Entraide extension), needs as ``incident_types``-free labels, and the
Incident Core extension (``extension-definition--ef765651-680c-498d-9894-99799f2fa126``)
with ``determination: suspected`` and ``investigation_status: new``: what a request
says when it is raised. Its thread (offers, acceptance, closure) stays in Entraide:
each is sealed to the request's audience and a TAXII client reads the request only.
Every object built here passes stix2-validator (tests/protocol/test_stix_aid.py).
"""

from __future__ import annotations

from typing import Any

from protocol.aid import AidRequest
from protocol.entries import TLP
from protocol.stix_common import (
    EXTENSION_ID,
    entry_stix_id,
    format_ms,
    identity_id,
    tlp_marking,
)

__all__ = ["INCIDENT_CORE_EXTENSION_ID", "aid_request_to_stix"]

INCIDENT_CORE_EXTENSION_ID = "extension-definition--ef765651-680c-498d-9894-99799f2fa126"
"""The OASIS CTI Incident Core extension (stix-common-objects, incident-core)."""


def aid_request_to_stix(request: AidRequest, *, entry_id: str, origin: str, seq: int,
                        ts: int, tlp: TLP) -> dict[str, Any]:
    """The ``incident`` of a request carried by entry ``entry_id`` (64 hex) of ``origin``."""
    stamp = format_ms(ts)
    obj: dict[str, Any] = {
        "type": "incident", "spec_version": "2.1", "id": entry_stix_id("incident", entry_id),
        "created": stamp, "modified": stamp, "created_by_ref": identity_id(origin),
        "name": request.title,
        "labels": [f"severity:{request.severity.value}",
                   *(f"need:{kind.value}" for kind in request.need_kinds)],
        "external_references": [{"source_name": "entraide", "external_id": entry_id}],
        "object_marking_refs": [tlp_marking(tlp)],
    }
    description = request.description
    if description.en is not None:
        obj["description"] = description.en
    else:
        obj["description"], obj["lang"] = description.fr, "fr"
    entraide: dict[str, Any] = {
        "extension_type": "property-extension", "kind": "aid-request", "entry": entry_id,
        "origin": origin, "seq": seq, "tlp": tlp.value,
        "description": description.model_dump(exclude_none=True),
        "needs": [n.model_dump(exclude_none=True) for n in request.needs],
        "contact": request.contact.model_dump(exclude_none=True),
    }
    if request.affected is not None:
        entraide["affected"] = request.affected.model_dump(mode="json", exclude_none=True)
    if request.mitigations is not None:
        entraide["mitigations"] = request.mitigations.model_dump(exclude_none=True)
    if request.related:
        entraide["related"] = list(request.related)
    if request.respond_by is not None:
        entraide["respond_by"] = request.respond_by.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    obj["extensions"] = {
        INCIDENT_CORE_EXTENSION_ID: {"extension_type": "property-extension",
                                     "determination": "suspected",
                                     "investigation_status": "new"},
        EXTENSION_ID: entraide,
    }
    return obj
