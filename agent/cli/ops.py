"""CLI commands of the operations list (docs/operations.md) that talk to the running
node's local API: ``retract``, ``sighting``, ``status``, ``stream`` and ``import``.

They find the API and a token as ``submit`` does (agent/cli/client.py). With ``--json``
each prints exactly what the API answered (``stream --json``: one observation or aid
event per line, the stream's ``data``). ``import`` is in agent/cli/bulk.py.
"""

from __future__ import annotations

import argparse
import json
import urllib.parse
from pathlib import Path
from typing import Any

from agent.cli.client import _client, _common, call_api, open_stream, print_result
from agent.cli.examples import epilog
from agent.cli.lang import _
from protocol.errors import EntraideError

__all__ = ["ops_command"]

# Seconds the stream may stay silent; the node sends a heartbeat every 15 s.
_STREAM_TIMEOUT_S = 120.0
# A stream line longer than this is not the node's (an observation is a few KB).
_MAX_LINE = 4 * 1024 * 1024


def _parser(word: str, description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=f"entraide {word}", description=description,
                                   epilog=epilog(word),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def _quoted(entry_id: str) -> str:
    return urllib.parse.quote(entry_id, safe="")


def retract_command(argv: list[str], data_dir: Path) -> int:
    """``entraide retract ID [--reason TEXT]``."""
    parser = _parser("retract", _("Withdraw one of this node's observations: every node "
                                  "marks it retracted (it stays in the ledger)."))
    parser.add_argument("id", metavar="ID", help=_("the observation's id (64 hex)"))
    parser.add_argument("--reason", help=_("why it is withdrawn (shared with the retraction)"))
    _common(parser)
    args = parser.parse_args(argv)
    base, token = _client(args, data_dir)
    body = {"reason": args.reason} if args.reason else {}
    result = call_api(base, token, "POST", f"/api/v1/observations/{_quoted(args.id)}/retract",
                      body)
    return print_result(args, result, _("retracted {of}: retraction {id} (seq {seq})").format(
        of=result["of"][:16], id=result["id"][:16], seq=result["seq"]))


def sighting_command(argv: list[str], data_dir: Path) -> int:
    """``entraide sighting ID [--count N] [--seen-at T] [--note TEXT] [--tlp T] [--to N,...]``."""
    parser = _parser("sighting", _("Tell the federation this node saw an observation's "
                                   "indicator. The sighting takes at least the "
                                   "observation's TLP and audience."))
    parser.add_argument("id", metavar="ID", help=_("the observation's id (64 hex)"))
    parser.add_argument("--count", type=int, default=1,
                        help=_("how many times it was seen (default 1)"))
    parser.add_argument("--seen-at", metavar="TIME",
                        help=_("when, RFC 3339, e.g. 2026-03-01T12:00:00Z"))
    parser.add_argument("--note", help=_("a note for the readers"))
    parser.add_argument("--tlp", help=_("a TLP at least the observation's (default: its TLP)"))
    parser.add_argument("--to", help=_("audience: peer names, comma-separated (default: "
                                       "the observation's)"))
    _common(parser)
    args = parser.parse_args(argv)
    base, token = _client(args, data_dir)
    body: dict[str, Any] = {"of": args.id, "count": args.count}
    for key, value in (("seen_at", args.seen_at), ("note", args.note)):
        if value:
            body[key] = value
    if args.tlp:
        body["tlp"] = args.tlp.upper()
    if args.to:
        body["audience"] = [name.strip() for name in args.to.split(",") if name.strip()]
    result = call_api(base, token, "POST", "/api/v1/sightings", body)
    return print_result(args, result, _("sighting {id} of {of} (seq {seq}, {tlp})").format(
        id=result["id"][:16], of=result["of"][:16], seq=result["seq"], tlp=result["tlp"]))


def status_command(argv: list[str], data_dir: Path) -> int:
    """``entraide status [--json]``."""
    parser = _parser("status", _("The running node: its identity, its peers (connected or "
                                 "not, last seen, lag in entries each way), its ledger and "
                                 "its forks."))
    _common(parser)
    args = parser.parse_args(argv)
    base, token = _client(args, data_dir)
    status = call_api(base, token, "GET", "/api/v1/status")
    if args.json:
        print(json.dumps(status, ensure_ascii=False))
        return 0
    print(render_status(status))
    return 0


def _count(value: Any) -> str:
    """A peer's lag in entries (docs/operations.md, "Peer lag"), "-" when not known."""
    return str(value) if isinstance(value, int) else "-"


def render_status(status: dict[str, Any]) -> str:
    """The text of ``entraide status``."""
    from agent.cli.client import render_table

    ledger = status.get("ledger") or {}
    where = f" ({status['jurisdiction']})" if status.get("jurisdiction") else ""
    lines = [
        f"{status['name']}{where}",
        "  " + _("fingerprint") + f"  {status['fingerprint']}",
        "  " + _("key") + f"  {status['key']}",
        "  " + _("ledger: {entries} entries from {origins} origins").format(
            entries=ledger.get("entries", 0), origins=ledger.get("origins", 0)),
    ]
    peers = status.get("peers") or []
    if peers:
        lines.append("")
        lines.append(render_table(
            [_("peer"), _("connected"), _("last seen"), _("lag"), _("we lack"), "url"],
            [[p["name"], _("yes") if p.get("connected") else _("no"),
              p.get("last_seen") or "-", _count(p.get("lag_entries")),
              _count(p.get("behind_entries")), p.get("url") or "-"] for p in peers]))
    else:
        lines.append(_("no peers yet: add one with 'entraide peers add --card CARD'"))
    forks = status.get("forks") or []
    quarantined = [f for f in forks if f.get("cleared") is None]
    if quarantined:
        lines.append("")
        for fork in quarantined:
            lines.append(_("FORK: {origin} signed two entries at seq {seq} (detected "
                           "{detected}); see 'entraide forks list'").format(
                origin=fork.get("origin_name") or fork["origin"], seq=fork["seq"],
                detected=fork["detected"]))
    return "\n".join(lines)


def stream_command(argv: list[str], data_dir: Path) -> int:
    """``entraide stream [--type T] [--value V] [--origin N] [--tlp T] [--json]``."""
    parser = _parser("stream", _("Print new observations (and mutual-aid events) as they "
                                 "reach this node, until interrupted."))
    parser.add_argument("--type", help=_("only this indicator type"))
    parser.add_argument("--value", help=_("only this indicator value (with --type)"))
    parser.add_argument("--origin", help=_("only this origin: peer name or ed25519 key"))
    parser.add_argument("--tlp", help=_("only this TLP"))
    parser.add_argument("--last-event-id", metavar="ID",
                        help=_("resume after this event id (the id: line of the "
                               "node's event stream)"))
    parser.add_argument("--count", type=int, metavar="N",
                        help=_("stop after N events (default: never)"))
    _common(parser)
    args = parser.parse_args(argv)
    base, token = _client(args, data_dir)
    params = {k: v for k, v in (("type", args.type), ("value", args.value),
                                ("origin", args.origin), ("tlp", args.tlp)) if v}
    path = "/api/v1/stream" + ("?" + urllib.parse.urlencode(params) if params else "")
    seen = 0
    with open_stream(base, token, path, args.last_event_id, _STREAM_TIMEOUT_S) as response:
        for event, event_id, data in _events(response):
            if args.json:
                print(json.dumps(data, ensure_ascii=False), flush=True)
            else:
                print(_event_line(event, event_id, data), flush=True)
            seen += 1
            if args.count is not None and seen >= args.count:
                break
    return 0


def _events(response: Any) -> Any:
    """(event, id, data) of each Server-Sent Event, until the stream ends."""
    event, event_id, data, size = "message", "", list[str](), 0
    while True:
        raw = response.readline(_MAX_LINE)
        if not raw:
            return
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if data:
                yield event, event_id, json.loads("\n".join(data))
            event, data, size = "message", [], 0
            continue
        field, _colon, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            event = value
        elif field == "id":
            event_id = value
        elif field == "data":
            data.append(value)
            size += len(value)
            if size > _MAX_LINE:
                raise EntraideError(_("the node's stream sent an event over {limit} bytes")
                                    .format(limit=_MAX_LINE))


def _event_line(event: str, event_id: str, data: dict[str, Any]) -> str:
    if event == "observation":
        retracted = "  " + _("retracted") if data.get("retracted") else ""
        return (f"{data.get('origin_name') or data.get('origin', '?')[:16]}  "
                f"{data.get('tlp', '')}  {data.get('type', '')}  {data.get('value', '')}  "
                f"{str(data.get('id', ''))[:16]}{retracted}")
    return f"{event}  {data.get('kind', '')}  {str(data.get('id', ''))[:16]}  " \
           f"{data.get('title') or ''}".rstrip()


def import_command(argv: list[str], data_dir: Path) -> int:
    from agent.cli.bulk import import_command as run_import

    return run_import(argv, data_dir)


_COMMANDS = {"retract": retract_command, "sighting": sighting_command,
             "status": status_command, "stream": stream_command, "import": import_command}


def ops_command(word: str, argv: list[str], data_dir: Path) -> int:
    """Run the command ``word`` (one of retract, sighting, status, stream, import)."""
    return _COMMANDS[word](argv, data_dir)

