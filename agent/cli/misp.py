"""``entraide import misp FILE`` and ``entraide export misp``: MISP event JSON through the
running node's local API (agent/misp/convert.py has the mapping).

Both find the API and a token the way ``submit`` and ``query`` do (agent/cli/client.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.cli.client import _client, _common, call_api
from agent.misp.convert import export_misp
from protocol.errors import EntraideError

__all__ = ["export_misp_command", "import_misp_command"]

_PAGE = 1000


def import_misp_command(argv: list[str], data_dir: Path) -> int:
    """``entraide import misp FILE [--tlp T] [--to N,...]``."""
    parser = argparse.ArgumentParser(
        prog="entraide import misp",
        description="Share the indicators of a MISP event JSON file as this node's observations.")
    parser.add_argument("file", metavar="FILE", help="MISP event JSON ('-' for stdin)")
    parser.add_argument("--tlp",
                        help="TLP of attributes without a tlp:* tag (default GREEN; AMBER "
                             "for e-mail addresses and user accounts)")
    parser.add_argument("--to", help="audience for AMBER/RED attributes: peer names, "
                                     "comma-separated")
    _common(parser)
    args = parser.parse_args(argv)
    if (args.tlp or "").upper() == "RED" and not args.to:
        print("error: --tlp RED needs an audience (--to NAME,...) / "
              "erreur : --tlp RED exige un auditoire (--to NOM,...)", file=sys.stderr)
        return 1
    base, token = _client(args, data_dir)
    text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text(encoding="utf-8")
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise EntraideError(f"{args.file}: not JSON ({exc})") from exc
    params = {"tlp": args.tlp.upper()} if args.tlp else {}
    if args.to:
        params["audience"] = args.to
    result = call_api(base, token, "POST",
                      "/api/v1/import/misp?" + urllib.parse.urlencode(params), document)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"imported {result['imported']} of {result['attributes']} attributes from "
          f"{result['events']} event(s); {result['already_shared']} already shared, "
          f"{result['repeated']} repeated, {len(result['context'])} context (to_ids false, "
          f"not shared) / {result['imported']} importés sur {result['attributes']} "
          f"attributs de {result['events']} événement(s); {result['already_shared']} déjà "
          f"partagés, {result['repeated']} répétés, {len(result['context'])} contexte "
          f"(to_ids faux, non partagés)")
    for what in ("mapped", "unsupported", "invalid"):
        for item in result[what]:
            print(f"{what}: {item['type']} {item['value']!r}: {item['reason']}", file=sys.stderr)
    return 0


def export_misp_command(argv: list[str], data_dir: Path) -> int:
    """``entraide export misp [--type T] [--origin N] [--since T] [-o FILE]``."""
    parser = argparse.ArgumentParser(
        prog="entraide export misp",
        description="Write the observations this node can read as MISP event JSON: one "
                    "event per source MISP event (its uuid, info and attributes' uuids "
                    "kept), one more for the rest; several events are written as a REST "
                    "search answer {\"response\": [...]}.")
    parser.add_argument("--type", help="only this indicator type")
    parser.add_argument("--origin", help="only this origin (peer name or key)")
    parser.add_argument("--tlp", help="only this TLP")
    parser.add_argument("--since", help="RFC 3339 time or ms since the epoch")
    parser.add_argument("--limit", type=int, default=10_000,
                        help="at most this many observations, newest first (default 10000)")
    parser.add_argument("--include-retracted", action="store_true")
    parser.add_argument("--no-rules", action="store_true",
                        help="leave out the shared detection rules (yara, sigma, snort; "
                             "left out too with --type)")
    parser.add_argument("--info", help="the event's info line")
    parser.add_argument("-o", "--output", help="write here instead of stdout")
    _common(parser)
    args = parser.parse_args(argv)
    base, token = _client(args, data_dir)
    params = {k: v for k, v in (("type", args.type), ("origin", args.origin),
                                ("tlp", args.tlp), ("since", args.since)) if v}
    if args.include_retracted:
        params["include_retracted"] = "true"
    observations: list[dict[str, Any]] = []
    cursor = None
    while len(observations) < args.limit:
        page_params = {**params, "limit": str(min(_PAGE, args.limit - len(observations)))}
        if cursor:
            page_params["cursor"] = cursor
        page = call_api(base, token, "GET",
                        "/api/v1/observations?" + urllib.parse.urlencode(page_params))
        observations += page["observations"]
        cursor = page.get("next")
        if not cursor:
            break
    rules: list[dict[str, Any]] = []
    cursor = None
    while not args.no_rules and not args.type and len(rules) < args.limit:
        rule_params = {"current": "true", "limit": str(min(_PAGE, 1000))}
        if args.origin:
            rule_params["origin"] = args.origin
        if cursor:
            rule_params["cursor"] = cursor
        page = call_api(base, token, "GET",
                        "/api/v1/rules?" + urllib.parse.urlencode(rule_params))
        rules += [r for r in page["rules"] if r.get("valid", True)]
        cursor = page.get("next")
        if not cursor:
            break
    status = call_api(base, token, "GET", "/api/v1/status")
    info = args.info or f"Entraide export from node {status['name']}"
    text = json.dumps(export_misp(observations, info=info, now=datetime.now(UTC),
                                  rules=rules), ensure_ascii=False, indent=1)
    if args.output:
        Path(args.output).write_text(text + "\n", encoding="utf-8")
        print(f"wrote {len(observations)} attributes to {args.output}", file=sys.stderr)
    else:
        print(text)
    return 0
