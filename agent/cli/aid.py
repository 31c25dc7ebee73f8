"""``entraide aid ...`` and ``entraide capabilities ...``: mutual aid through the running
node's local API (routes: agent/api/aid.py; rules: protocol/aid.py).

Commands (help and output in English and French)::

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

Errors are one line on stderr (the API's message, in both languages) and exit 1.
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
from protocol.aid import NeedKind

__all__ = ["aid_command", "capabilities_command"]

_KINDS = ", ".join(k.value for k in NeedKind)


def _text(args: argparse.Namespace, name: str) -> dict[str, str] | None:
    """``{"en", "fr"}`` from ``--NAME-en`` and ``--NAME-fr`` (None when neither)."""
    found = {lang: getattr(args, f"{name}_{lang}") for lang in ("en", "fr")}
    found = {k: v for k, v in found.items() if v}
    return found or None


def _bilingual(parser: argparse.ArgumentParser, name: str, what: str, quoi: str,
               required: bool = False) -> None:
    parser.add_argument(f"--{name}-en", metavar="TEXT", help=f"{what} in English")
    parser.add_argument(f"--{name}-fr", metavar="TEXTE", help=f"{quoi} en français"
                        + (" (one of the two is required / l'un des deux est requis)"
                           if required else ""))


def _need(text: str) -> dict[str, str]:
    kind, _, detail = text.partition(":")
    return {"kind": kind.strip(), **({"detail": detail.strip()} if detail.strip() else {})}


def _show(r: dict[str, Any]) -> str:
    lines = [
        f"{r['title']}  [{r['severity']}]  {r.get('tlp', '')}",
        f"  id: {r['id']}",
        f"  from / de: {r.get('origin_name') or r['origin']}    status / statut: {r['status']}"
        + ("    OVERDUE / EN RETARD" if r.get("overdue") else ""),
        "  needs / besoins: " + ", ".join(
            n["kind"] + (f" ({n['detail']})" if n.get("detail") else "") for n in r["needs"]),
        f"  {localized(r.get('description'))}",
        f"  contact: {r['contact']['name']} {r['contact'].get('channel') or ''}".rstrip(),
    ]
    if r.get("respond_by"):
        lines.append(f"  respond by / répondre avant: {r['respond_by']}")
    for o in r.get("offers", []):
        who = o.get("origin_name") or o["origin"]
        lines.append(f"  offer / offre {o['id'][:16]}  {who}  {o['status']}  "
                     f"{', '.join(o['kinds'])}  {localized(o.get('detail'))}".rstrip())
    for u in r.get("updates", []):
        text = localized(u.get("note") or u.get("summary") or u.get("reason"))
        lines.append(f"  {u['kind']}  {u.get('origin_name') or u['origin']}  {text}".rstrip())
    if r.get("invalid"):
        lines.append(f"  entries without effect / entrées sans effet: {len(r['invalid'])}")
    return "\n".join(lines)


def aid_command(argv: list[str], data_dir: Path) -> int:
    """``entraide aid ACTION ...`` (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="entraide aid",
        description="Requests for assistance during an incident / demandes d'assistance "
                    "pendant un incident.")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = actions.add_parser("request", help="ask peers for help / demander de l'aide")
    p.add_argument("--title", required=True, help="one line / une ligne")
    p.add_argument("--severity", required=True, choices=["low", "medium", "high", "critical"])
    p.add_argument("--need", action="append", required=True, metavar="KIND[:DETAIL]",
                   help=f"repeatable / répétable; KIND: {_KINDS}")
    _bilingual(p, "description", "what happened", "ce qui s'est passé", required=True)
    _bilingual(p, "mitigations", "mitigations already taken", "mesures déjà prises")
    p.add_argument("--contact", required=True, metavar="NAME", help="who to call / qui appeler")
    p.add_argument("--channel", help="phone, Signal, bridge line / téléphone, Signal, pont")
    p.add_argument("--sector", help="affected sector / secteur touché")
    p.add_argument("--services", help="affected services, comma-separated / services touchés")
    p.add_argument("--impact", help="impact / répercussions")
    p.add_argument("--related", help="related entry ids, comma-separated / entrées liées")
    p.add_argument("--respond-by", metavar="TIME", help="RFC 3339, e.g. 2026-12-04T06:00:00Z")
    p.add_argument("--tlp", default="AMBER", choices=["AMBER", "AMBER+STRICT", "RED"],
                   help="default AMBER / par défaut AMBER")
    p.add_argument("--to", help="audience: peer names, comma-separated (RED needs it) / "
                                "destinataires (requis pour RED)")
    _common(p)

    p = actions.add_parser("list", help="requests this node can read / demandes lisibles")
    p.add_argument("--status", choices=["open", "in-progress", "closed"])
    p.add_argument("--mine", action="store_true", help="only this node's / seulement les nôtres")
    p.add_argument("--need", help=f"one of / parmi: {_KINDS}")
    _common(p)

    p = actions.add_parser("show", help="one request and its thread / une demande")
    p.add_argument("id", metavar="ID")
    _common(p)

    p = actions.add_parser("offer", help="offer help / offrir de l'aide")
    p.add_argument("id", metavar="ID")
    p.add_argument("--kind", required=True, help=f"comma-separated / séparés par des "
                                                 f"virgules: {_KINDS}")
    _bilingual(p, "detail", "what you offer", "ce que vous offrez")
    p.add_argument("--people", type=int, help="how many people / combien de personnes")
    p.add_argument("--on-site", action="store_true", help="can go on site / peut se déplacer")
    p.add_argument("--from", dest="available_from", metavar="TIME", help="RFC 3339")
    p.add_argument("--until", dest="available_until", metavar="TIME", help="RFC 3339")
    p.add_argument("--contact", metavar="NAME")
    p.add_argument("--channel")
    _common(p)

    for name, text in (("accept", "accept an offer (requester) / accepter une offre"),
                       ("withdraw", "withdraw your offer / retirer votre offre")):
        p = actions.add_parser(name, help=text)
        p.add_argument("id", metavar="ID")
        p.add_argument("offer", metavar="OFFER")
        _bilingual(p, "note", "a note", "une note")
        _common(p)

    p = actions.add_parser("update", help="post a note or set the status / note ou statut")
    p.add_argument("id", metavar="ID")
    p.add_argument("--status", choices=["open", "in-progress"])
    _bilingual(p, "note", "the note", "la note", required=True)
    _common(p)

    p = actions.add_parser("close", help="close with a summary (requester) / fermer")
    p.add_argument("id", metavar="ID")
    _bilingual(p, "summary", "the summary", "le résumé", required=True)
    _common(p)

    p = actions.add_parser("suggest", help="who can help now / qui peut aider maintenant")
    p.add_argument("--need", required=True, help=f"one of / parmi: {_KINDS}")
    p.add_argument("--language", help="e.g. fr")
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
        found = api("GET", f"{root}?{urllib.parse.urlencode(params)}")["requests"]
        return print_result(args, found, render_table(
            ["id", "from/de", "status/statut", "severity", "offers/offres", "title/titre"],
            [[r["id"][:16], r.get("origin_name") or r["origin"][:16],
              r["status"] + (" OVERDUE" if r.get("overdue") else ""), r["severity"],
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
    return print_result(args, got, "audience / destinataires: " + (",".join(got["audience"])
                                                            or "(none / aucun)"))


def capabilities_command(argv: list[str], data_dir: Path) -> int:
    """``entraide capabilities set|list`` (the expertise directory)."""
    parser = argparse.ArgumentParser(
        prog="entraide capabilities",
        description="The expertise directory / le répertoire d'expertise.")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = actions.add_parser("set", help="publish this node's profile (admin token) / "
                                       "publier le profil de ce nœud")
    p.add_argument("--skills", required=True, help=f"comma-separated / parmi: {_KINDS}")
    p.add_argument("--languages", default="", help="e.g. fr,en")
    p.add_argument("--hours", help='e.g. "24/7" or "Mon-Fri 8-17 ET / lun-ven 8 h-17 h HE"')
    p.add_argument("--contact", metavar="NAME")
    p.add_argument("--channel")
    p.add_argument("--unavailable", action="store_true",
                   help="not taking requests now / indisponible pour l'instant")
    _bilingual(p, "detail", "what you can do", "ce que vous pouvez faire")
    _common(p)
    p = actions.add_parser("list", help="who can help / qui peut aider")
    p.add_argument("--need")
    p.add_argument("--language")
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
    found = call_api(base, token, "GET",
                     f"/api/v1/capabilities?{urllib.parse.urlencode(params)}")["capabilities"]
    return print_result(args, found, render_table(
        ["member/membre", "skills/compétences", "languages/langues", "hours/heures",
         "available/disponible"],
        [[c.get("origin_name") or c["origin"][:16], ",".join(c.get("skills", [])),
          ",".join(c.get("languages", [])), c.get("hours") or "",
          "yes/oui" if c.get("available", True) else "no/non"] for c in found]))
