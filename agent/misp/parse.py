"""MISP event JSON in: attributes (plain, composite, inside objects) as observations
(docs/misp.md has the fidelity table: every MISP type kept, mapped or refused, and why).

What MISP says about an attribute beyond its indicator travels in the observation's
tags under the reserved ``x-misp:`` prefix (:data:`META_PREFIX`), so that an export
gives MISP back the same attribute (uuid, type, category, timestamp, object, event uuid,
info and date) and a re-import into MISP updates rather than duplicates:

    x-misp:uuid=<attribute uuid>    x-misp:type=hostname       x-misp:category=...
    x-misp:ts=<unix seconds>        x-misp:event=<event uuid>  x-misp:info=<event info>
    x-misp:date=<event date>        x-misp:object=<uuid>       x-misp:object-name=file
    x-misp:relation=sha256          x-misp:filename=<name>     x-misp:port=443
    x-misp:part-of=<uuid>           (the second indicator of a domain|ip attribute)

Invariants:
- An attribute with ``to_ids: false`` is context, never an indicator: it is not shared,
  and it is listed in ``context`` with its reason. Only ``to_ids: true`` attributes (or
  attributes that do not say, as MISP's own default for indicator types) are shared.
- Nothing is dropped silently: each attribute is shared, repeated, context,
  unsupported or invalid, and the last three are listed with a reason; a part of an
  attribute that cannot be carried (a filename or info too long for a tag) is listed
  in ``mapped`` with what was lost.
- Provenance tags an Entraide export writes (``entraide:origin=...``) and ``tlp:*``
  tags are not turned into observation tags, so a round trip does not pile them up.
- An attribute's free text (its comment) is its English description, unless it is in
  the bilingual form an export writes (``en``, a blank line, ``[fr] fr``), which is
  split back into both languages.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from agent.i18n import N_
from protocol.entries import TLP
from protocol.errors import PayloadError
from protocol.indicators import PERSONAL_DATA_TYPES, IndicatorType
from protocol.payloads import (
    MAX_DESCRIPTION_CHARS,
    MAX_TAG_CHARS,
    MAX_TAGS,
    Observation,
    format_validation_error,
)
from protocol.stix import stix_uuid

__all__ = [
    "COMPOSITE_TYPES",
    "META_PREFIX",
    "TLP_ORDER",
    "TO_TYPE",
    "MispImport",
    "fr_marker",
    "join_meta",
    "meta_tags_of",
    "parse_misp",
    "split_comment",
]

META_PREFIX = "x-misp:"
"""Tags with this prefix carry MISP's attribute metadata (see the module docstring)."""
_PROVENANCE_PREFIX = "entraide:"

TO_TYPE: dict[str, IndicatorType | None] = {
    "ip-src": None, "ip-dst": None,  # v4 or v6, told by the value
    "domain": IndicatorType.DOMAIN_NAME, "hostname": IndicatorType.DOMAIN_NAME,
    "url": IndicatorType.URL,
    "email-src": IndicatorType.EMAIL_ADDR, "email-dst": IndicatorType.EMAIL_ADDR,
    "email": IndicatorType.EMAIL_ADDR,
    "md5": IndicatorType.FILE_MD5, "sha1": IndicatorType.FILE_SHA1,
    "sha256": IndicatorType.FILE_SHA256, "sha512": IndicatorType.FILE_SHA512,
    "vulnerability": IndicatorType.CVE, "AS": IndicatorType.AUTONOMOUS_SYSTEM,
    "target-user": IndicatorType.USER_ACCOUNT,  # personal data (docs/privacy.md)
}

COMPOSITE_TYPES: dict[str, tuple[str, str]] = {
    # MISP type: (type of the indicator part, what the other part is)
    "filename|md5": ("md5", "filename"), "filename|sha1": ("sha1", "filename"),
    "filename|sha256": ("sha256", "filename"), "filename|sha512": ("sha512", "filename"),
    "ip-dst|port": ("ip-dst", "port"), "ip-src|port": ("ip-src", "port"),
    "hostname|port": ("hostname", "port"), "domain|ip": ("domain", "ip"),
}
"""Composite MISP types Entraide takes: the indicator is one part, the other part is kept
in a ``x-misp:`` tag (``domain|ip`` gives two indicators, the IP ``x-misp:part-of`` the
domain's attribute)."""

_TLP_TAGS = {"tlp:white": TLP.CLEAR, "tlp:clear": TLP.CLEAR, "tlp:green": TLP.GREEN,
             "tlp:amber": TLP.AMBER, "tlp:amber+strict": TLP.AMBER_STRICT, "tlp:red": TLP.RED}
TLP_ORDER = (TLP.CLEAR, TLP.GREEN, TLP.AMBER, TLP.AMBER_STRICT, TLP.RED)
_SEVERITY = {"1": "high", "2": "medium", "3": "low"}
_MAX_EVENTS = 1000
_MAX_NESTING = 8  # lists and {"response": ...} around the events
_FR_MARKER = "\n\n[fr] "
_MAX_CHUNKS = 8


def fr_marker() -> str:
    """What separates the English and the French of an exported comment."""
    return _FR_MARKER


def meta_tags_of(key: str, text: str) -> list[str] | None:
    """``text`` as ``x-misp:key=...`` tags: one, or for a longer text (an event's info,
    a long filename) up to :data:`_MAX_CHUNKS` numbered ones (``x-misp:info.2=...``)
    that :func:`join_meta` puts back together; None if it does not fit or is not one
    line. A chunk never ends in whitespace (tags are stripped)."""
    if not text or not text.isprintable():
        return None
    tags: list[str] = []
    rest = text
    while rest:
        prefix = f"{META_PREFIX}{key}{'.' + str(len(tags) + 1) if tags else ''}="
        cut = MAX_TAG_CHARS - len(prefix)
        if cut <= 0 or len(tags) == _MAX_CHUNKS:
            return None
        if cut < len(rest):
            while cut > 1 and rest[cut - 1].isspace():
                cut -= 1
        chunk, rest = rest[:cut], rest[cut:]
        if chunk.isspace() or chunk != chunk.rstrip():
            return None
        tags.append(prefix + chunk)
    return tags


def join_meta(tags: Sequence[str]) -> dict[str, str]:
    """The ``x-misp:`` metadata in ``tags`` (see :func:`meta_tags_of`) as ``{key: text}``."""
    parts: dict[str, dict[int, str]] = {}
    for tag in tags:
        if not tag.startswith(META_PREFIX):
            continue
        name, _, text = tag[len(META_PREFIX):].partition("=")
        key, _, number = name.partition(".")
        index = int(number) if number.isdigit() else 1
        parts.setdefault(key, {}).setdefault(index, text)
    return {key: "".join(chunks[i] for i in sorted(chunks)) for key, chunks in parts.items()}


def split_comment(comment: str) -> dict[str, str]:
    """A MISP comment as ``{"en", "fr"}`` (see the module docstring); empty parts left out."""
    if comment.startswith(_FR_MARKER.lstrip("\n")):
        return {"fr": comment[len(_FR_MARKER) - 2:].strip()}
    en, found, fr = comment.partition(_FR_MARKER)
    texts = {"en": en.strip(), "fr": fr.strip() if found else ""}
    return {k: v[:MAX_DESCRIPTION_CHARS] for k, v in texts.items() if v}


@dataclass
class MispImport:
    """What a MISP document yields: observations to share, and what was not taken.

    Each list item is ``{"type", "value", "reason"}``. ``context`` holds the
    ``to_ids: false`` attributes, ``mapped`` the shared ones that lost a part.
    """

    items: list[tuple[Observation, TLP]] = field(default_factory=list)
    unsupported: list[dict[str, str]] = field(default_factory=list)
    invalid: list[dict[str, str]] = field(default_factory=list)
    context: list[dict[str, str]] = field(default_factory=list)
    mapped: list[dict[str, str]] = field(default_factory=list)
    repeated: int = 0
    events: int = 0
    attributes: int = 0


def _events(document: Any, depth: int = 0) -> Iterator[Mapping[str, Any]]:
    # A search answer is {"response": [...]}: a few levels at most, never a deep
    # recursion on a hostile document (found by the fuzzer: RecursionError).
    if depth > _MAX_NESTING:
        return
    if isinstance(document, list):
        for item in document:
            yield from _events(item, depth + 1)
    elif isinstance(document, Mapping):
        if "response" in document:
            yield from _events(document["response"], depth + 1)
        elif isinstance(document.get("Event"), Mapping):
            yield document["Event"]
        elif "Attribute" in document or "Object" in document:
            yield document


def _tags(holder: Mapping[str, Any]) -> list[str]:
    tags = holder.get("Tag") or []
    if not isinstance(tags, list):
        return []
    return [t["name"] for t in tags if isinstance(t, Mapping) and isinstance(t.get("name"), str)]


def _tlp_of(tags: Sequence[str]) -> TLP | None:
    found = [_TLP_TAGS[t.strip().lower()] for t in tags if t.strip().lower() in _TLP_TAGS]
    return max(found, key=TLP_ORDER.index) if found else None


def _text(holder: Mapping[str, Any], key: str) -> str | None:
    value = holder.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    return value.strip() if isinstance(value, str) and value.strip() else None


@dataclass(frozen=True)
class _Event:
    tags: list[str]
    tlp: TLP | None
    severity: str | None
    meta: list[tuple[str, str]]


def parse_misp(document: Any, *, default_tlp: TLP | None = None) -> MispImport:
    """The observations of MISP events (see the module docstring).

    An attribute's TLP is its ``tlp:*`` tag's, else its event's, else ``default_tlp``;
    without one, GREEN, or AMBER for a personal-data type (``email-addr``,
    ``user-account``: docs/privacy.md).

    Raises:
        PayloadError: the document holds no MISP event, or more than 1,000 events.
    """
    result = MispImport()
    seen: set[tuple[str, str]] = set()
    events = list(_events(document))
    if not events:
        raise PayloadError(N_('no MISP event found: expected {"Event": {...}}, a list of '
                              'events, or a REST search answer {"response": [...]}'))
    if len(events) > _MAX_EVENTS:
        raise PayloadError(N_("at most {max} events per import, not {n}").format(
            max=_MAX_EVENTS, n=len(events)))
    for raw in events:
        result.events += 1
        tags = _tags(raw)
        meta = [(k, v) for k, v in (("event", _text(raw, "uuid")), ("date", _text(raw, "date")),
                                    ("info", _text(raw, "info"))) if v]
        event = _Event(tags, _tlp_of(tags) or default_tlp,
                       _SEVERITY.get(str(raw.get("threat_level_id", ""))), meta)
        for attribute, obj in _attributes(raw):
            if attribute.get("deleted") is True:
                continue
            result.attributes += 1
            for item in _attribute(attribute, obj, event, result):
                key = (item[0].type.value, item[0].value)
                if key in seen:
                    result.repeated += 1
                    continue
                seen.add(key)
                result.items.append(item)
    return result


def _list(holder: Mapping[str, Any], key: str) -> list[Any]:
    """``holder[key]`` when it is a list, else nothing (a hostile ``"Attribute": true``
    made the parser raise TypeError: found by the fuzzer)."""
    value = holder.get(key)
    return value if isinstance(value, list) else []


def _attributes(event: Mapping[str, Any]
                ) -> Iterator[tuple[Mapping[str, Any], Mapping[str, Any] | None]]:
    for attribute in _list(event, "Attribute"):
        if isinstance(attribute, Mapping):
            yield attribute, None
    for obj in _list(event, "Object"):
        if isinstance(obj, Mapping) and obj.get("deleted") is not True:
            for attribute in _list(obj, "Attribute"):
                if isinstance(attribute, Mapping):
                    yield attribute, obj


def _filename_of(obj: Mapping[str, Any] | None) -> str | None:
    """The filename a MISP ``file`` object gives its hashes."""
    if obj is None or obj.get("name") != "file":
        return None
    for attribute in obj.get("Attribute") or []:
        if (isinstance(attribute, Mapping) and attribute.get("object_relation") == "filename"
                and isinstance(attribute.get("value"), str)):
            return str(attribute["value"])
    return None


def _attribute(attribute: Mapping[str, Any], obj: Mapping[str, Any] | None, event: _Event,
               result: MispImport) -> list[tuple[Observation, TLP]]:
    misp_type = str(attribute.get("type", ""))[:64]
    value = attribute.get("value")
    report = {"type": misp_type, "value": str(value)[:200]}
    if not isinstance(value, str):
        result.invalid.append({**report, "reason": N_("the value is not a string")})
        return []
    to_ids = attribute.get("to_ids", True)
    if to_ids is False or (isinstance(to_ids, str) and to_ids.lower() in ("0", "false")):
        result.context.append({**report, "reason": N_(
            "to_ids is false: context, not an indicator; not shared")})
        return []
    parts: list[tuple[str, str, list[tuple[str, str]]]] = []  # (type, value, extra meta)
    if misp_type in COMPOSITE_TYPES:
        first_type, other = COMPOSITE_TYPES[misp_type]
        left, sep, right = value.partition("|")
        if not sep:
            result.invalid.append({**report, "reason": N_(
                "a {type} value holds a '|'").format(type=misp_type)})
            return []
        if other == "filename":
            parts.append((first_type, right, [("filename", left)]))
        elif other == "port":
            parts.append((first_type, left, [("port", right)]))
        else:  # domain|ip: two indicators, the IP a part of the domain's attribute
            parts.append((first_type, left, [("ip", right)]))
            parts.append(("ip-dst", right, []))
    elif misp_type in TO_TYPE:
        name = _filename_of(obj)
        parts.append((misp_type, value, [("filename", name)] if name else []))
    else:
        result.unsupported.append({**report, "reason": N_(
            "MISP type {type} has no Entraide indicator type").format(type=repr(misp_type))})
        return []
    tags = _tags(attribute)
    tlp = _tlp_of(tags) or event.tlp
    uuid = _text(attribute, "uuid")
    meta = [("uuid", uuid), ("type", misp_type), ("category", _text(attribute, "category")),
            ("ts", _text(attribute, "timestamp"))]
    if obj is not None:
        meta += [("object", _text(obj, "uuid")), ("object-name", _text(obj, "name")),
                 ("relation", _text(attribute, "object_relation"))]
    base = [(k, v) for k, v in [*meta, *event.meta] if v]
    labels = [t.strip() for t in [*event.tags, *tags]
              if t.strip().lower() not in _TLP_TAGS
              and not t.strip().startswith((_PROVENANCE_PREFIX, META_PREFIX))
              and 0 < len(t.strip()) <= MAX_TAG_CHARS]
    comment = _text(attribute, "comment")
    seen_at = {k: attribute[k] for k in ("first_seen", "last_seen")
               if isinstance(attribute.get(k), str) and attribute[k]}
    out = []
    for index, (part_type, part_value, extra) in enumerate(parts):
        part_meta = base
        if index:  # its own uuid and type, and the attribute it is a part of
            part_meta = [(k, v) for k, v in base if k not in ("uuid", "type")] + [
                ("uuid", stix_uuid(f"misp-part:{uuid}:{part_value}")),
                ("type", part_type), ("part-of", uuid or "")]
        item = _observation(part_type, part_value, [*part_meta, *extra], labels, comment,
                            seen_at, event, report, result)
        if item is not None:
            out.append((item, tlp or (TLP.AMBER if item.type.value in PERSONAL_DATA_TYPES
                                      else TLP.GREEN)))
    return out


def _observation(misp_type: str, value: str, meta: list[tuple[str, str]],
                 labels: list[str], comment: str | None, seen_at: dict[str, Any],
                 event: _Event, report: dict[str, str], result: MispImport) -> Observation | None:
    kind = TO_TYPE[misp_type] or (
        IndicatorType.IPV6_ADDR if ":" in value else IndicatorType.IPV4_ADDR)
    meta_tags: list[str] = []
    lost = []
    for key, text in meta:
        tags = meta_tags_of(key, text)
        if tags is None:
            lost.append(key)
        else:
            meta_tags += tags
    room = MAX_TAGS - len(meta_tags)
    kept = list(dict.fromkeys(labels))
    if len(kept) > room:
        lost.append(N_("{n} tags (at most {max})").format(n=len(kept) - room, max=MAX_TAGS))
    fields: dict[str, Any] = {"type": kind.value, "value": value,
                              "tags": [*meta_tags, *kept[:room]], **seen_at}
    if comment:
        fields["description"] = split_comment(comment)
    if event.severity is not None:
        fields["severity"] = event.severity
    try:
        observation = Observation.model_validate(fields)
    except ValidationError as exc:
        result.invalid.append({**report, "reason": format_validation_error(exc, "observation")})
        return None
    except PayloadError as exc:
        result.invalid.append({**report, "reason": str(exc)})
        return None
    if lost:
        result.mapped.append({**report, "reason": N_("shared without: {lost}").format(
            lost=", ".join(lost))})
    return observation
