"""``entraide import FILE``: share a file of indicators through the running node, with
progress on stderr and a summary.

The file's kind is recognised from its content:

- a MISP event (JSON with ``Event``): handed to ``entraide import misp``
  (agent/cli/misp.py), which keeps MISP's semantics (``to_ids``, objects, tags);
- a STIX 2.1 bundle (JSON, ``"type": "bundle"``): its objects are posted to the node's
  TAXII ``local`` collection in envelopes, so they are kept exactly as given (their TLP
  comes from their markings);
- CSV with a header naming a ``value`` column (optional ``type``, ``tlp``,
  ``confidence``, ``severity``, ``tags`` separated by ``;``, ``description``,
  ``description_fr``, ``valid_until``);
- otherwise text: one indicator per line, ``#`` starts a comment, the type from
  ``--type`` or recognised from the value.

Observations go in batches sent with ``"partial": true``: the node keeps the valid
items and reports each refused one with its reason, and items identical once
normalised (``evil.com`` and ``EVIL.com``) are shared once. A (type, value) pair
repeated in the file, or reported a duplicate by the node, is counted as repeated.
``--refang`` undoes defanging (``hxxp://``, ``[.]``) and says how many values it
refanged. Nothing is sent for a file that cannot be read.
"""

from __future__ import annotations

import argparse
import csv
import io
import ipaddress
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.cli.client import _client, _common, call_api
from agent.cli.examples import epilog
from agent.cli.lang import _
from protocol.errors import EntraideError
from protocol.indicators import IndicatorType
from protocol.matching import refang

__all__ = ["guess_type", "import_command", "read_indicators"]

BATCH = 200
ENVELOPE = 100
# A file bigger than this is not an indicator list this command should read at once.
MAX_FILE_BYTES = 64 * 1024 * 1024
TAXII_LOCAL = "/taxii2/entraide/collections/local/objects/"
MEDIA_TAXII = "application/taxii+json;version=2.1"

_CVE = re.compile(r"cve-\d{4}-\d{4,}", re.IGNORECASE)
_AS = re.compile(r"as\d{1,10}", re.IGNORECASE)
_HEX = re.compile(r"[0-9a-fA-F]+")
_HASHES = {128: IndicatorType.FILE_SHA512, 64: IndicatorType.FILE_SHA256,
           40: IndicatorType.FILE_SHA1, 32: IndicatorType.FILE_MD5}


def guess_type(value: str) -> str:
    """The indicator type a bare value most likely is (the node still checks it)."""
    text = value.strip()
    if _CVE.fullmatch(text):
        return IndicatorType.CVE.value
    if _AS.fullmatch(text):
        return IndicatorType.AUTONOMOUS_SYSTEM.value
    if "://" in text:
        return IndicatorType.URL.value
    if "@" in text:
        return IndicatorType.EMAIL_ADDR.value
    try:
        address = ipaddress.ip_network(text, strict=False)
        return (IndicatorType.IPV4_ADDR if address.version == 4
                else IndicatorType.IPV6_ADDR).value
    except ValueError:
        pass
    if _HEX.fullmatch(text) and len(text) in _HASHES:
        return _HASHES[len(text)].value
    return IndicatorType.DOMAIN_NAME.value


@dataclass
class Indicators:
    """What a CSV or text file holds: the observations to send, in file order."""

    items: list[dict[str, Any]] = field(default_factory=list)
    repeated: int = 0


_CSV_FIELDS = {"type", "value", "tlp", "confidence", "severity", "tags", "description",
               "description_fr", "valid_until"}


def read_indicators(text: str, *, forced_type: str | None, tlp: str | None,
                    audience: list[str] | None, refanged: bool = False) -> Indicators:
    """The observations of a CSV or text file (see the module docstring); with
    ``refanged``, a value's type is recognised from its refanged form (the node
    refangs it).

    Raises:
        EntraideError: a CSV header with an unknown column, or a bad confidence.
    """
    found = Indicators()
    seen: set[tuple[str, str]] = set()
    first = next((line for line in text.splitlines() if line.strip()), "")
    rows: list[dict[str, str]]
    if "," in first and "value" in [c.strip().lower() for c in first.split(",")]:
        reader = csv.DictReader(io.StringIO(text))
        columns = {(c or "").strip().lower() for c in reader.fieldnames or ()}
        unknown = sorted(columns - _CSV_FIELDS)
        if unknown:
            raise EntraideError(_("unknown CSV column(s): {columns} (known: {known})").format(
                columns=", ".join(unknown), known=", ".join(sorted(_CSV_FIELDS))))
        rows = [{(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
                for row in reader]
    else:
        rows = [{"value": line.split("#", 1)[0].strip()} for line in text.splitlines()]
    for line, row in enumerate(rows, start=1):
        value = row.get("value", "")
        if not value:
            continue
        kind = forced_type or row.get("type") or guess_type(
            refang(value) if refanged else value)
        if (kind, value) in seen:
            found.repeated += 1
            continue
        seen.add((kind, value))
        item: dict[str, Any] = {"type": kind, "value": value}
        if row.get("tlp") or tlp:
            item["tlp"] = (row.get("tlp") or tlp or "").upper()
        if audience:
            item["audience"] = audience
        if row.get("confidence"):
            try:
                item["confidence"] = int(row["confidence"])
            except ValueError as exc:
                raise EntraideError(_("row {line}: confidence {value!r} is not a number")
                                    .format(line=line, value=row["confidence"])) from exc
        for key in ("severity", "valid_until"):
            if row.get(key):
                item[key] = row[key]
        if row.get("tags"):
            item["tags"] = [t.strip() for t in row["tags"].split(";") if t.strip()]
        description = {lang: row[col] for lang, col in (("en", "description"),
                                                          ("fr", "description_fr"))
                       if row.get(col)}
        if description:
            item["description"] = description
        found.items.append(item)
    return found


class _Progress:
    """``done/total`` on stderr: rewritten in place on a terminal, a line per step
    otherwise (a log file)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.tty = sys.stderr.isatty()

    def show(self, done: int) -> None:
        width = 30
        filled = width * done // self.total if self.total else width
        text = "[{bar}] {done}/{total}".format(bar="#" * filled + "." * (width - filled),
                                              done=done, total=self.total)
        print(("\r" + text) if self.tty else text, end="" if self.tty else "\n",
              file=sys.stderr, flush=True)

    def end(self) -> None:
        if self.tty:
            print(file=sys.stderr, flush=True)


def import_command(argv: list[str], data_dir: Path) -> int:
    """``entraide import FILE [--type T] [--tlp T] [--to N,...]`` (or ``import misp ...``)."""
    if argv[:1] == ["misp"]:
        from agent.cli import misp

        return misp.import_misp_command(argv[1:], data_dir)
    parser = argparse.ArgumentParser(
        prog="entraide import", epilog=epilog("import"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=_("Share every indicator of a file via the running node: CSV (a "
                      "header with a value column), text (one indicator per line), a STIX "
                      "2.1 bundle or a MISP event. Progress goes to stderr, a summary to "
                      "stdout."))
    parser.add_argument("file", metavar="FILE", help=_("the file to import ('-' for stdin)"))
    parser.add_argument("--type", help=_("indicator type of every value (default: from the "
                                         "CSV's type column, else recognised)"))
    parser.add_argument("--tlp", help=_("TLP of items without their own (default: the "
                                        "node's, GREEN; STIX objects keep their markings)"))
    parser.add_argument("--to", help=_("audience: peer names, comma-separated"))
    parser.add_argument("--refang", action="store_true",
                        help=_("undo defanging first (hxxp://, [.], (.), [dot], [:]//)"))
    _common(parser)
    args = parser.parse_args(argv)
    text = _read(args.file)
    document: Any = None
    if text.lstrip().startswith(("{", "[")):
        try:
            document = json.loads(text)
        except ValueError as exc:
            raise EntraideError(_("{file}: not JSON ({error})").format(file=args.file,
                                                                       error=exc)) from exc
    if _is_misp(document):
        from agent.cli import misp

        extra = (["--tlp", args.tlp] if args.tlp else []) + (["--to", args.to] if args.to
                                                                 else [])
        passed = [args.file, *extra, *(["--json"] if args.json else []),
                  *(["--token", args.token] if args.token else []),
                  *(["--api", args.api] if args.api else [])]
        return misp.import_misp_command(passed, data_dir)
    base, token = _client(args, data_dir)
    if isinstance(document, dict) and document.get("type") == "bundle":
        summary = _post_bundle(base, token, document)
    elif document is not None:
        raise EntraideError(_("{file}: JSON that is neither a STIX 2.1 bundle nor a MISP "
                              "event").format(file=args.file))
    else:
        audience = [n.strip() for n in (args.to or "").split(",") if n.strip()] or None
        found = read_indicators(text, forced_type=args.type, tlp=args.tlp, audience=audience,
                                refanged=args.refang)
        summary = _post_observations(base, token, found, refang=args.refang)
    if args.json:
        print(json.dumps(summary, ensure_ascii=False))
    else:
        print(_("{shared} shared, {refused} refused, {repeated} repeated in the file "
                "(of {total})").format(**summary))
        if summary.get("refanged"):
            print(_("{count} defanged value(s) refanged").format(count=summary["refanged"]))
    for item in summary["refused_items"]:
        print(_("refused: {type} {value!r}: {reason}").format(**item), file=sys.stderr)
    return 0 if not summary["refused"] else 1


def _read(name: str) -> str:
    if name == "-":
        raw = sys.stdin.buffer.read(MAX_FILE_BYTES + 1)
    else:
        with open(name, "rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    if len(raw) > MAX_FILE_BYTES:
        raise EntraideError(_("{file}: over {limit} bytes; split it").format(
            file=name, limit=MAX_FILE_BYTES))
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise EntraideError(_("{path}: not UTF-8 text (byte {at})").format(
            path=name, at=exc.start)) from None


def _is_misp(document: Any) -> bool:
    if isinstance(document, list):
        return bool(document) and all(isinstance(d, dict) and "Event" in d for d in document)
    return isinstance(document, dict) and ("Event" in document or "response" in document)


def _post_observations(base: str, token: str, found: Indicators, *,
                       refang: bool = False) -> dict[str, Any]:
    items = found.items
    progress = _Progress(len(items))
    ids: list[str] = []
    refused: list[dict[str, Any]] = []
    repeated = found.repeated
    refanged = 0
    for start in range(0, len(items), BATCH):
        chunk = items[start:start + BATCH]
        body: dict[str, Any] = {"observations": chunk, "partial": True}
        if refang:
            body["refang"] = True
        answer = call_api(base, token, "POST", "/api/v1/observations", body)
        refanged += len(answer.get("refanged") or ())
        for result in answer["results"]:
            item = chunk[result["index"]]
            if result["status"] == "stored":
                ids.append(result["id"])
            elif result["status"] == "duplicate":
                repeated += 1
            else:
                refused.append({"type": item["type"], "value": item["value"],
                                "reason": result.get("reason") or ""})
        progress.show(min(start + BATCH, len(items)))
    progress.end()
    return {"total": len(items) + found.repeated, "shared": len(ids), "ids": ids,
            "refused": len(refused), "refused_items": refused, "repeated": repeated,
            "refanged": refanged}


def _post_bundle(base: str, token: str, bundle: dict[str, Any]) -> dict[str, Any]:
    objects = bundle.get("objects")
    if not isinstance(objects, list):
        raise EntraideError(_("the STIX bundle has no objects list"))
    progress = _Progress(len(objects))
    shared = 0
    refused: list[dict[str, Any]] = []
    for start in range(0, len(objects), ENVELOPE):
        chunk = objects[start:start + ENVELOPE]
        status = call_api(base, token, "POST", TAXII_LOCAL, {"objects": chunk},
                          content_type=MEDIA_TAXII, accept=MEDIA_TAXII)
        shared += int(status.get("success_count", 0))
        for failure in status.get("failures") or ():
            refused.append({"type": str(failure.get("id", "?")).split("--")[0],
                            "value": failure.get("id", "?"),
                            "reason": failure.get("message", "")})
        progress.show(min(start + ENVELOPE, len(objects)))
    progress.end()
    return {"total": len(objects), "shared": shared, "ids": [], "refused": len(refused),
            "refused_items": refused, "repeated": 0}
