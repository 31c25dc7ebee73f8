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
from agent.cli.examples import epilog
from agent.cli.lang import _
from agent.misp.convert import export_misp
from protocol.errors import EntraideError

__all__ = ["export_misp_command", "import_misp_command"]

_PAGE = 1000


def import_misp_command(argv: list[str], data_dir: Path) -> int:
    """``entraide import misp FILE [--tlp T] [--to N,...]``."""
    parser = argparse.ArgumentParser(
        prog="entraide import misp", epilog=epilog("import misp"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=_("Share the indicators of a MISP event JSON file as this node's "
                      "observations (docs/misp.md: what is kept, mapped and refused)."))
    parser.add_argument("file", metavar="FILE", help=_("MISP event JSON ('-' for stdin)"))
    parser.add_argument("--tlp",
                        help=_("TLP of attributes without a tlp:* tag (default GREEN; AMBER "
                               "for e-mail addresses and user accounts)"))
    parser.add_argument("--to", help=_("audience for AMBER/RED attributes: peer names, "
                                       "comma-separated"))
    _common(parser)
    args = parser.parse_args(argv)
    if (args.tlp or "").upper() == "RED" and not args.to:
        print(_("error: --tlp RED needs an audience (--to NAME,...)"), file=sys.stderr)
        return 1
    base, token = _client(args, data_dir)
    text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text(encoding="utf-8")
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise EntraideError(_("{file}: not JSON ({error})").format(file=args.file,
                                                                   error=exc)) from exc
    params = {"tlp": args.tlp.upper()} if args.tlp else {}
    if args.to:
        params["audience"] = args.to
    result = call_api(base, token, "POST",
                      "/api/v1/import/misp?" + urllib.parse.urlencode(params), document)
    if args.json:
        print(json.dumps(result))
        return 0
    print(_("imported {imported} of {attributes} attributes from {events} event(s); "
            "{already} already shared, {repeated} repeated, {context} context (to_ids "
            "false, not shared)").format(
        imported=result["imported"], attributes=result["attributes"],
        events=result["events"], already=result["already_shared"],
        repeated=result["repeated"], context=len(result["context"])))
    labels = {"mapped": _("mapped"), "unsupported": _("unsupported"), "invalid": _("invalid")}
    for what, label in labels.items():
        for item in result[what]:
            print(_("{what}: {type} {value!r}: {reason}").format(what=label, **item),
                  file=sys.stderr)
    return 0


def export_misp_command(argv: list[str], data_dir: Path) -> int:
    """``entraide export misp [--type T] [--origin N] [--since T] [-o FILE]``."""
    parser = argparse.ArgumentParser(
        prog="entraide export misp", epilog=epilog("export misp"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=_("Write the observations this node can read as MISP event JSON: one "
                      "event per source MISP event (its uuid, info and attributes' uuids "
                      "kept), one more for the rest; several events are written as a MISP "
                      "REST search answer (docs/misp.md)."))
    parser.add_argument("--type", help=_("only this indicator type"))
    parser.add_argument("--origin", help=_("only this origin: peer name or ed25519 key"))
    parser.add_argument("--tlp", help=_("only this TLP"))
    parser.add_argument("--since", help=_("RFC 3339 time or ms since the epoch"))
    parser.add_argument("--limit", type=int, default=10_000,
                        help=_("at most this many observations, newest first (default "
                               "10000)"))
    parser.add_argument("--include-retracted", action="store_true",
                        help=_("list retracted observations too"))
    parser.add_argument("--no-rules", action="store_true",
                        help=_("leave out the shared detection rules (yara, sigma, snort; "
                               "left out too with --type)"))
    parser.add_argument("--info", help=_("the event's info line"))
    parser.add_argument("-o", "--output", help=_("write here instead of stdout"))
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
        print(_("wrote {count} attributes to {path}").format(count=len(observations),
                                                            path=args.output),
              file=sys.stderr)
    else:
        print(text)
    return 0
