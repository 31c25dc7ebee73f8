"""``entraide aid ...`` and ``entraide capabilities ...``: mutual aid through the running
node's local API (routes: agent/api/aid.py; rules: protocol/aid.py).

Commands (help and output in the CLI's language, agent/cli/lang.py)::

    entraide aid request --title T --severity S --need KIND[:DETAIL] ... --contact NAME
                         [--description-en/-fr ...] [--tlp AMBER|RED] [--to QC,FED] ...
    entraide aid list [--status open|in-progress|closed] [--mine] [--need KIND]
    entraide aid show ID
    entraide aid offer ID --kind KIND[,KIND] [--detail-en/-fr ...] [--people N] [--on-site]
    entraide aid accept ID OFFER | withdraw ID OFFER
    entraide aid update ID --note-en/-fr ... [--status open|in-progress]
    entraide aid close ID --summary-en/-fr ...
    entraide aid suggest --need KIND [--language fr]
    entraide capabilities set --skills K,K --languages fr,en [--hours H] [--contact NAME]
    entraide capabilities list [--need KIND] [--language fr]

Errors are one line on stderr (the API's message) and exit 1.
"""

from __future__ import annotations

import argparse
import urllib.parse
from pathlib import Path
from typing import Any

from agent.cli.client import (
    _client,
    _common,
    _csv,
    call_api,
    localized,
    print_result,
    render_table,
)
from agent.cli.examples import epilog
from agent.cli.lang import _
from protocol.aid import NeedKind

__all__ = ["aid_command", "capabilities_command"]

_KINDS = ", ".join(k.value for k in NeedKind)


def _text(args: argparse.Namespace, name: str) -> dict[str, str] | None:
    """``{"en", "fr"}`` from ``--NAME-en`` and ``--NAME-fr`` (None when neither)."""
    found = {lang: getattr(args, f"{name}_{lang}") for lang in ("en", "fr")}
    found = {k: v for k, v in found.items() if v}
    return found or None


def _bilingual(parser: argparse.ArgumentParser, name: str, what: str,
               required: bool = False) -> None:
    # ``what`` is already in the reader's language.
    parser.add_argument(f"--{name}-en", metavar="TEXT",
                        help=_("{what}, in English").format(what=what))
    parser.add_argument(f"--{name}-fr", metavar="TEXT",
                        help=_("{what}, in French").format(what=what)
                        + (" " + _("(one of the two is required)") if required else ""))


def _need(text: str) -> dict[str, str]:
    kind, _, detail = text.partition(":")
    return {"kind": kind.strip(), **({"detail": detail.strip()} if detail.strip() else {})}


def _show(r: dict[str, Any]) -> str:
    lines = [
        f"{r['title']}  [{r['severity']}]  {r.get('tlp', '')}",
        f"  id: {r['id']}",
        "  " + _("from: {origin}").format(origin=r.get("origin_name") or r["origin"])
        + "    " + _("status: {status}").format(status=r["status"])
        + ("    " + _("OVERDUE") if r.get("overdue") else ""),
        "  " + _("needs: {needs}").format(needs=", ".join(
            n["kind"] + (f" ({n['detail']})" if n.get("detail") else "") for n in r["needs"])),
        f"  {localized(r.get('description'))}",
        f"  contact: {r['contact']['name']} {r['contact'].get('channel') or ''}".rstrip(),
    ]
    if r.get("respond_by"):
        lines.append("  " + _("respond by: {when}").format(when=r["respond_by"]))
    for o in r.get("offers", []):
        who = o.get("origin_name") or o["origin"]
        lines.append(("  " + _("offer {id}").format(id=o["id"][:16])
                      + f"  {who}  {o['status']}  {', '.join(o['kinds'])}  "
                      f"{localized(o.get('detail'))}").rstrip())
    for u in r.get("updates", []):
        text = localized(u.get("note") or u.get("summary") or u.get("reason"))
        lines.append(f"  {u['kind']}  {u.get('origin_name') or u['origin']}  {text}".rstrip())
    if r.get("invalid"):
        lines.append("  " + _("entries without effect: {n}").format(n=len(r["invalid"])))
    return "\n".join(lines)


def aid_command(argv: list[str], data_dir: Path) -> int:
    """``entraide aid ACTION ...`` (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="entraide aid", epilog=epilog("aid"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=_("Requests for assistance during an incident."))
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    kinds = _("one of: {kinds}").format(kinds=_KINDS)
    request_id = _("the request's id (64 hex)")

    p = actions.add_parser("request", help=_("ask peers for help"))
    p.add_argument("--title", required=True, help=_("one line"))
    p.add_argument("--severity", required=True, choices=["low", "medium", "high", "critical"],
                   help=_("how bad it is"))
    p.add_argument("--need", action="append", required=True, metavar="KIND[:DETAIL]",
                   help=_("repeatable; KIND {kinds}").format(kinds=kinds))
    _bilingual(p, "description", _("what happened"), required=True)
    _bilingual(p, "mitigations", _("mitigations already taken"))
    p.add_argument("--contact", required=True, metavar="NAME", help=_("who to call"))
    p.add_argument("--channel", help=_("phone, Signal, bridge line"))
    p.add_argument("--sector", help=_("affected sector"))
    p.add_argument("--services", help=_("affected services, comma-separated"))
    p.add_argument("--impact", help=_("impact"))
    p.add_argument("--related", help=_("related entry ids, comma-separated"))
    p.add_argument("--respond-by", metavar="TIME",
                   help=_("RFC 3339 time, e.g. 2026-12-31T00:00:00Z"))
    p.add_argument("--tlp", default="AMBER", choices=["AMBER", "AMBER+STRICT", "RED"],
                   help=_("TLP (default AMBER)"))
    p.add_argument("--to", help=_("audience: peer names, comma-separated (RED needs it)"))
    _common(p)

    p = actions.add_parser("list", help=_("requests this node can read"))
    p.add_argument("--status", choices=["open", "in-progress", "closed"],
                   help=_("only requests in this state"))
    p.add_argument("--mine", action="store_true", help=_("only this node's"))
    p.add_argument("--need", help=kinds)
    _common(p)

    p = actions.add_parser("show", help=_("one request and its thread"))
    p.add_argument("id", metavar="ID", help=request_id)
    _common(p)

    p = actions.add_parser("offer", help=_("offer help"))
    p.add_argument("id", metavar="ID", help=request_id)
    p.add_argument("--kind", required=True,
                   help=_("comma-separated, {kinds}").format(kinds=kinds))
    _bilingual(p, "detail", _("what you offer"))
    p.add_argument("--people", type=int, help=_("how many people"))
    p.add_argument("--on-site", action="store_true", help=_("can go on site"))
    p.add_argument("--from", dest="available_from", metavar="TIME",
                   help=_("available from, RFC 3339"))
    p.add_argument("--until", dest="available_until", metavar="TIME",
                   help=_("available until, RFC 3339"))
    p.add_argument("--contact", metavar="NAME", help=_("who to call"))
    p.add_argument("--channel", help=_("phone, Signal, bridge line"))
    _common(p)

    for name, text in (("accept", _("accept an offer (requester)")),
                       ("withdraw", _("withdraw your offer"))):
        p = actions.add_parser(name, help=text)
        p.add_argument("id", metavar="ID", help=request_id)
        p.add_argument("offer", metavar="OFFER", help=_("the offer's id"))
        _bilingual(p, "note", _("a note"))
        _common(p)

    p = actions.add_parser("update", help=_("post a note or set the status"))
    p.add_argument("id", metavar="ID", help=request_id)
    p.add_argument("--status", choices=["open", "in-progress"], help=_("the new status"))
    _bilingual(p, "note", _("the note"), required=True)
    _common(p)

    p = actions.add_parser("close", help=_("close with a summary (requester)"))
    p.add_argument("id", metavar="ID", help=request_id)
    _bilingual(p, "summary", _("the summary"), required=True)
    _common(p)

    p = actions.add_parser("suggest", help=_("who can help now"))
    p.add_argument("--need", required=True, help=kinds)
    p.add_argument("--language", help=_("e.g. fr"))
    _common(p)

    args = parser.parse_args(argv)
    base, token = _client(args, data_dir)
    root = "/api/v1/aid/requests"

    def api(method: str, path: str, body: Any = None) -> Any:
        return call_api(base, token, method, path, body)

    if args.action == "request":
        body: dict[str, Any] = {
            "title": args.title, "severity": args.severity,
            "needs": [_need(n) for n in args.need],
            "description": _text(args, "description") or {},
            "contact": {"name": args.contact, **({"channel": args.channel}
                                                 if args.channel else {})},
            "tlp": args.tlp}
        if _text(args, "mitigations"):
            body["mitigations"] = _text(args, "mitigations")
        affected = {k: v for k, v in (("sector", args.sector), ("impact", args.impact),
                                      ("services", _csv(args.services))) if v}
        if affected:
            body["affected"] = affected
        for key, value in (("related", _csv(args.related)), ("audience", _csv(args.to)),
                           ("respond_by", args.respond_by)):
            if value:
                body[key] = value
        created = api("POST", root, body)
        audience = ", ".join(created.get("audience") or [])
        return print_result(args, created, f"{created['id']}  {created['status']}  "
                                     f"{created.get('tlp')} -> {audience}")
    if args.action == "list":
        params = {k: v for k, v in (("status", args.status), ("need", args.need)) if v}
        if args.mine:
            params["mine"] = "true"
        answer = api("GET", f"{root}?{urllib.parse.urlencode(params)}")
        found = answer["requests"]
        return print_result(args, answer, render_table(
            ["id", _("from"), _("status"), _("severity"), _("offers"), _("title")],
            [[r["id"][:16], r.get("origin_name") or r["origin"][:16],
              r["status"] + (" " + _("OVERDUE") if r.get("overdue") else ""), r["severity"],
              str(r.get("offer_count", 0)), r["title"]] for r in found]))
    if args.action == "show":
        got = api("GET", f"{root}/{args.id}")
        return print_result(args, got, _show(got))
    if args.action == "offer":
        offer: dict[str, Any] = {"kinds": _csv(args.kind), "on_site": args.on_site}
        for key, value in (("detail", _text(args, "detail")), ("people", args.people),
                           ("available_from", args.available_from),
                           ("available_until", args.available_until)):
            if value:
                offer[key] = value
        if args.contact:
            offer["contact"] = {"name": args.contact,
                                **({"channel": args.channel} if args.channel else {})}
        created = api("POST", f"{root}/{args.id}/offers", offer)
        return print_result(args, created, f"{created['id']}  {created['status']}")
    if args.action in ("accept", "withdraw"):
        note = _text(args, "note")
        key = "note" if args.action == "accept" else "reason"
        got = api("POST", f"{root}/{args.id}/offers/{args.offer}/{args.action}",
                  {key: note} if note else {})
        return print_result(args, got, _show(got))
    if args.action == "update":
        update: dict[str, Any] = {"note": _text(args, "note") or {}}
        if args.status:
            update["status"] = args.status
        got = api("POST", f"{root}/{args.id}/updates", update)
        return print_result(args, got, _show(got))
    if args.action == "close":
        got = api("POST", f"{root}/{args.id}/close", {"summary": _text(args, "summary") or {}})
        return print_result(args, got, _show(got))
    params = {"need": args.need, **({"language": args.language} if args.language else {})}
    got = api("GET", f"/api/v1/aid/suggest?{urllib.parse.urlencode(params)}")
    return print_result(args, got, _("audience: {names}").format(
        names=",".join(got["audience"]) or _("(none)")))


def capabilities_command(argv: list[str], data_dir: Path) -> int:
    """``entraide capabilities set|list`` (the expertise directory)."""
    parser = argparse.ArgumentParser(
        prog="entraide capabilities", epilog=epilog("capabilities"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=_("The expertise directory."))
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    kinds = _("one of: {kinds}").format(kinds=_KINDS)
    p = actions.add_parser("set", help=_("publish this node's profile (admin token)"))
    p.add_argument("--skills", required=True,
                   help=_("comma-separated, {kinds}").format(kinds=kinds))
    p.add_argument("--languages", default="", help=_("e.g. fr,en"))
    p.add_argument("--hours", help=_('e.g. "24/7" or "Mon-Fri 8-17 ET"'))
    p.add_argument("--contact", metavar="NAME", help=_("who to call"))
    p.add_argument("--channel", help=_("phone, Signal, bridge line"))
    p.add_argument("--unavailable", action="store_true",
                   help=_("not taking requests now"))
    _bilingual(p, "detail", _("what you can do"))
    _common(p)
    p = actions.add_parser("list", help=_("who can help"))
    p.add_argument("--need", help=kinds)
    p.add_argument("--language", help=_("e.g. fr"))
    _common(p)
    args = parser.parse_args(argv)
    base, token = _client(args, data_dir)
    if args.action == "set":
        body: dict[str, Any] = {"skills": _csv(args.skills), "languages": _csv(args.languages),
                                "available": not args.unavailable}
        for key, value in (("hours", args.hours), ("detail", _text(args, "detail"))):
            if value:
                body[key] = value
        if args.contact:
            body["contact"] = {"name": args.contact,
                               **({"channel": args.channel} if args.channel else {})}
        got = call_api(base, token, "PUT", "/api/v1/capabilities", body)
        return print_result(args, got, f"{got['id']}  {got['updated']}")
    params = {k: v for k, v in (("need", args.need), ("language", args.language)) if v}
    answer = call_api(base, token, "GET",
                      f"/api/v1/capabilities?{urllib.parse.urlencode(params)}")
    found = answer["capabilities"]
    return print_result(args, answer, render_table(
        [_("member"), _("skills"), _("languages"), _("hours"), _("available")],
        [[c.get("origin_name") or c["origin"][:16], ",".join(c.get("skills", [])),
          ",".join(c.get("languages", [])), c.get("hours") or "",
          _("yes") if c.get("available", True) else _("no")] for c in found]))
