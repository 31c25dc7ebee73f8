"""STIX 2.1 basics shared by both directions of the mapping: ids, timestamps, TLP.

Ids: every UUIDv5 Entraide derives (``stix_uuid``) is under one fixed namespace, so the
object derived from an entry (``entry_stix_id``) and an origin's identity
(``identity_id``) have the same STIX id on every node. Timestamps: ``parse_timestamp``
reads STIX's ``YYYY-MM-DDTHH:MM:SS[.s+]Z`` into microseconds and ``format_us`` writes
them back. TLP: the TLP 2.0 marking definitions written, and the TLP 2.0 and 1.0 ones
read (docs/operations.md, "TAXII 2.1, STIX 2.1 and MISP").

Nothing here reads a clock: every time is given.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

from protocol.entries import TLP
from protocol.errors import PayloadError

__all__ = [
    "EXTENSION_ID",
    "IDENTITY_EPOCH",
    "MAX_STIX_COUNT",
    "RESERVED_TAG_PREFIXES",
    "SCO_TYPES",
    "TLP1_MARKINGS",
    "TLP2_MARKINGS",
    "TLP_BY_MARKING",
    "entry_stix_id",
    "format_ms",
    "format_us",
    "identity_id",
    "parse_timestamp",
    "stix_uuid",
    "tlp_marking",
    "tlp_of_markings",
    "version_of",
]

_NAMESPACE = bytes.fromhex("c0f8a3d47e214b9a9f3e5d2b8c6a1e47")

TLP2_MARKINGS: dict[TLP, str] = {
    TLP.CLEAR: "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487",
    TLP.GREEN: "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb",
    TLP.AMBER: "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421",
    TLP.AMBER_STRICT: "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003",
    TLP.RED: "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1",
}
"""TLP 2.0 marking definitions (the OASIS TLP 2.0 extension's objects)."""

TLP1_MARKINGS: dict[str, TLP] = {
    "marking-definition--613f2e26-407d-48c7-9eca-b8e91df99dc9": TLP.CLEAR,  # TLP:WHITE
    "marking-definition--34098fce-860f-48ae-8e50-ebd3cc5e41da": TLP.GREEN,
    "marking-definition--f88d31f6-486f-44da-b317-01333bde0b82": TLP.AMBER,
    "marking-definition--5e57c739-391a-4eb3-b6be-7d15ca92d5ed": TLP.RED,
}
"""STIX 2.1's predefined TLP 1.0 markings, accepted on import and mapped to TLP 2.0."""

TLP_BY_MARKING: dict[str, TLP] = {**{v: k for k, v in TLP2_MARKINGS.items()}, **TLP1_MARKINGS}
"""Every TLP marking-definition id read (TLP 2.0 and 1.0) and the TLP it stands for."""
_TLP_ORDER = (TLP.CLEAR, TLP.GREEN, TLP.AMBER, TLP.AMBER_STRICT, TLP.RED)

IDENTITY_EPOCH = "2020-01-01T00:00:00.000Z"
"""``created``/``modified`` of origin identities: fixed, so every node writes the same."""

RESERVED_TAG_PREFIXES = ("stix-id:", "stix-created:", "stix-modified:")
"""Tags that carry a posted indicator's STIX identity; not shown as labels."""

SCO_TYPES = frozenset({
    "artifact", "autonomous-system", "directory", "domain-name", "email-addr",
    "email-message", "file", "ipv4-addr", "ipv6-addr", "mac-addr", "mutex",
    "network-traffic", "process", "software", "url", "user-account",
    "windows-registry-key", "x509-certificate",
})
MAX_STIX_COUNT = 999_999_999  # STIX 2.1 §5.2: sighting count range



def stix_uuid(name: str) -> str:
    """RFC 4122 version 5 UUID of ``name`` under Entraide's namespace."""
    raw = bytearray(hashlib.sha1(_NAMESPACE + name.encode("utf-8")).digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x50
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


EXTENSION_ID = "extension-definition--" + stix_uuid("extension:entraide/v1")
"""The property extension holding what STIX has no property for."""


def entry_stix_id(stix_type: str, entry_id: str) -> str:
    """The deterministic STIX id of the object derived from entry ``entry_id``."""
    return f"{stix_type}--{stix_uuid('entry:' + entry_id.lower())}"


@functools.lru_cache(maxsize=1024)  # a federation has few origins; each object names one
def identity_id(origin: str) -> str:
    """The STIX identity id of an origin (its ``ed25519:...`` key text)."""
    return f"identity--{stix_uuid('origin:' + origin)}"


# --- timestamps ----------------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_TIMESTAMP = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]+)?Z", re.ASCII)


def parse_timestamp(text: object, what: str = "timestamp") -> int:
    """Microseconds since the epoch of a STIX timestamp (``YYYY-MM-DDTHH:MM:SS[.s+]Z``).

    Digits past the microsecond are ignored for ordering (the text is kept as given).

    Raises:
        PayloadError: not a string in that form, or not a real date.
    """
    match = _TIMESTAMP.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise PayloadError(f"{what} must be a STIX timestamp like 2026-01-02T03:04:05.000Z")
    year, month, day, hour, minute, second, fraction = match.groups()
    h, m, s = int(hour), int(minute), int(second)
    try:
        if h > 23 or m > 59 or s > 59:
            datetime(int(year), int(month), int(day), h, m, s)  # raises, saying what
        days = date(int(year), int(month), int(day)).toordinal() - _EPOCH_ORDINAL
    except ValueError as exc:
        raise PayloadError(f"{what} is not a valid date and time ({exc})") from None
    micros = int(fraction[1:7].ljust(6, "0")) if fraction else 0
    return ((days * 24 + h) * 60 + m) * 60_000_000 + s * 1_000_000 + micros


def format_us(us: int, *, taxii: bool = False) -> str:
    """Text of a µs timestamp: STIX form (milliseconds, or microseconds when finer) or,
    with ``taxii``, always six digits as TAXII 2.1 §2 requires."""
    days, micros = divmod(us, 86_400_000_000)
    try:
        day = date.fromordinal(days + _EPOCH_ORDINAL)
    except ValueError:
        raise OverflowError("date value out of range") from None  # as datetime says
    if day.year < 1000:  # strftime's own (platform's) rendering of such years
        text = (_EPOCH + timedelta(microseconds=us)).strftime("%Y-%m-%dT%H:%M:%S")
    else:
        seconds, micros = divmod(micros, 1_000_000)
        minutes, second = divmod(seconds, 60)
        text = (f"{day.year}-{day.month:02d}-{day.day:02d}T"
                f"{minutes // 60:02d}:{minutes % 60:02d}:{second:02d}")
    if taxii or us % 1000:
        return f"{text}.{us % 1_000_000:06d}Z"
    return f"{text}.{us % 1_000_000 // 1000:03d}Z"


def format_ms(ms: int) -> str:
    """STIX timestamp of a ms time (always three fraction digits)."""
    return format_us(ms * 1000)


def version_of(obj: Mapping[str, Any]) -> str | None:
    """The TAXII version of an object: ``modified``, else ``created``, else None."""
    version = obj.get("modified", obj.get("created"))
    return version if isinstance(version, str) else None


# --- TLP -----------------------------------------------------------------------------


def tlp_marking(tlp: TLP) -> str:
    """The TLP 2.0 marking-definition id of a TLP."""
    return TLP2_MARKINGS[TLP(tlp)]


def tlp_of_markings(refs: object) -> TLP | None:
    """The most restrictive TLP among marking refs (TLP 2.0 or 1.0 ids), None if none."""
    if not isinstance(refs, list):
        return None
    found = [TLP_BY_MARKING[r] for r in refs if isinstance(r, str) and r in TLP_BY_MARKING]
    return max(found, key=_TLP_ORDER.index) if found else None

