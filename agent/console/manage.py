"""The console's trust list and forks (admin), mutual-aid board, rules library and
tokens (admin).

Trust-list changes go through the API like every other change. Tokens have no API
route (they are managed on the node's own machine with ``entraide token``); the
console, which runs inside the node and lets only an admin session reach these
routes, uses the node's token store directly.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from agent.config.tokens import Scope
from agent.console.backend import BackendError, segment
from agent.console.core import (
    CONSOLE_PREFIX,
    LANG,
    N_,
    PageError,
    Route,
    api,
    done,
    form,
    gettext,
    render,
)
from agent.console.pages import SEVERITIES, TLPS
from agent.i18n import localize
from agent.web.common import NODE
from protocol.aid import NeedKind, RequestStatus
from protocol.cards import parse_card
from protocol.errors import EntraideError

__all__ = ["MANAGE_ROUTES", "NEED_KINDS"]

NEED_KINDS = tuple(kind.value for kind in NeedKind)
RULE_TYPES = ("yara", "sigma", "suricata", "snort")
AID_STATUSES = tuple(status.value for status in RequestStatus)


def _text(value: str | None, limit: int = 4000) -> str:
    return (value or "").strip()[:limit]


# --- trust list and forks -------------------------------------------------------------


async def trust_page(request: web.Request) -> web.StreamResponse:
    peers = await api(request, "GET", "/api/v1/peers")
    forks = await api(request, "GET", "/api/v1/forks")
    return render(request, "trust.html", peers=peers["peers"], forks=forks["forks"],
                  card=None, card_text="")


async def trust_preview(request: web.Request) -> web.StreamResponse:
    """POST /console/trust/preview: read a card and show its fingerprint to check by
    phone before the peer is trusted; nothing changes yet."""
    text = _text(form(request).get("card"))
    peers = await api(request, "GET", "/api/v1/peers")
    forks = await api(request, "GET", "/api/v1/forks")
    try:
        card = parse_card(text)
    except EntraideError as exc:
        return render(request, "trust.html", http_status=422, peers=peers["peers"],
                      forks=forks["forks"], card=None, card_text=text,
                      error=gettext(request)(N_("This card cannot be read: {reason}"))
                      .format(reason=localize(str(exc), request[LANG])))
    shown = {"name": card.name, "key": card.key.text, "fingerprint": card.key.fingerprint,
             "url": card.url}
    return render(request, "trust.html", peers=peers["peers"], forks=forks["forks"],
                  card=shown, card_text=text)


async def trust_add(request: web.Request) -> web.StreamResponse:
    data = form(request)
    _ = gettext(request)
    if data.get("confirmed") != "yes":
        raise PageError(422, _("Confirm the fingerprint with the peer's administrator first."))
    body: dict[str, Any] = {"card": _text(data.get("card"))}
    if _text(data.get("jurisdiction")):
        body["jurisdiction"] = _text(data.get("jurisdiction"), 100)
    peer = await api(request, "POST", "/api/v1/peers", body=body)
    return done(request, f"{CONSOLE_PREFIX}/trust",
                _(N_("{name} is trusted; the node applies it at once.")).format(
                    name=peer["name"]))


def _peer_name(request: web.Request) -> str:
    name = request.match_info["name"]
    if not 0 < len(name) <= 64:
        raise PageError(404, gettext(request)(N_("No such peer.")))
    return name


async def _edit_page(request: web.Request, name: str, *, http_status: int = 200,
                     values: dict[str, str] | None = None, card: dict[str, Any] | None = None,
                     card_text: str = "", error: str | None = None) -> web.Response:
    peer = await api(request, "GET", f"/api/v1/peers/{segment(name)}")
    shown = values if values is not None else {
        "url": peer.get("url") or "", "jurisdiction": peer.get("jurisdiction") or ""}
    return render(request, "trust_edit.html", http_status=http_status, peer=peer,
                  values=shown, card=card, card_text=card_text, error=error)


async def trust_edit(request: web.Request) -> web.StreamResponse:
    """GET /console/trust/{name}/edit: a peer's URL and jurisdiction, and its new key
    from a new card."""
    return await _edit_page(request, _peer_name(request))


async def trust_update(request: web.Request) -> web.StreamResponse:
    """POST /console/trust/{name}/update: PATCH the peer's URL and jurisdiction (an
    empty URL: trusted as an author, not dialled)."""
    name = _peer_name(request)
    data = form(request)
    values = {"url": _text(data.get("url"), 2048), "jurisdiction": _text(data.get("jurisdiction"),
                                                                          100)}
    try:
        await api(request, "PATCH", f"/api/v1/peers/{segment(name)}", body=values)
    except BackendError as exc:
        if exc.status != 422:
            raise
        return await _edit_page(request, name, http_status=422, values=values,
                                error=exc.message)
    return done(request, f"{CONSOLE_PREFIX}/trust",
                gettext(request)(N_("{name} is updated; the node applies it at once."))
                .format(name=name))


async def trust_key_preview(request: web.Request) -> web.StreamResponse:
    """POST /console/trust/{name}/card: read the peer's new card and show its new
    fingerprint (and the old one) to check by phone; nothing changes yet."""
    name = _peer_name(request)
    text = _text(form(request).get("card"))
    _ = gettext(request)
    try:
        card = parse_card(text)
    except EntraideError as exc:
        return await _edit_page(request, name, http_status=422, card_text=text, error=_(
            N_("This card cannot be read: {reason}")).format(
                reason=localize(str(exc), request[LANG])))
    if card.name != name:
        return await _edit_page(request, name, http_status=422, card_text=text, error=_(
            N_("This card is {card}'s, not {name}'s.")).format(card=card.name, name=name))
    shown = {"name": card.name, "key": card.key.text, "fingerprint": card.key.fingerprint,
             "url": card.url}
    return await _edit_page(request, name, card=shown, card_text=text)


async def trust_key(request: web.Request) -> web.StreamResponse:
    """POST /console/trust/{name}/key: the new card, confirmed by phone: PATCH it."""
    name = _peer_name(request)
    data = form(request)
    _ = gettext(request)
    if data.get("confirmed") != "yes":
        raise PageError(422, _("Confirm the fingerprint with the peer's administrator first."))
    await api(request, "PATCH", f"/api/v1/peers/{segment(name)}",
              body={"card": _text(data.get("card"))})
    return done(request, f"{CONSOLE_PREFIX}/trust",
                _(N_("{name}'s new key is trusted; the node applies it at once.")).format(
                    name=name))


async def trust_remove(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    await api(request, "DELETE", f"/api/v1/peers/{segment(name)}")
    return done(request, f"{CONSOLE_PREFIX}/trust",
                gettext(request)(N_("{name} is no longer trusted.")).format(name=name))


async def fork_clear(request: web.Request) -> web.StreamResponse:
    origin = request.match_info["origin"]
    await api(request, "POST", f"/api/v1/forks/{segment(origin)}/clear")
    return done(request, f"{CONSOLE_PREFIX}/trust",
                gettext(request)(N_("The fork is cleared; this origin's entries are "
                                    "accepted again.")))


# --- mutual aid -----------------------------------------------------------------------


async def aid_page(request: web.Request) -> web.StreamResponse:
    query: dict[str, str] = {}
    status = request.query.get("status", "")
    if status in AID_STATUSES:
        query["status"] = status
    listing = await api(request, "GET", "/api/v1/aid/requests", query=query)
    return render(request, "aid.html", requests=listing["requests"], chosen=status,
                  statuses=AID_STATUSES, kinds=NEED_KINDS, severities=SEVERITIES, tlps=TLPS)


async def aid_create(request: web.Request) -> web.StreamResponse:
    data = form(request)
    description = {lang: _text(data.get(f"description_{lang}")) for lang in ("en", "fr")}
    body: dict[str, Any] = {
        "title": _text(data.get("title"), 200), "severity": data.get("severity", ""),
        "description": {k: v for k, v in description.items() if v},
        "needs": [{"kind": kind} for kind in data.getall("needs", [])][:16],
        "tlp": data.get("tlp") or "AMBER",
        "contact": {"name": _text(data.get("contact_name"), 200)},
    }
    if _text(data.get("contact_channel")):
        body["contact"]["channel"] = _text(data.get("contact_channel"), 200)
    audience = [a.strip() for a in _text(data.get("audience")).split(",") if a.strip()]
    if audience:
        body["audience"] = audience
    created = await api(request, "POST", "/api/v1/aid/requests", body=body)
    return done(request, f"{CONSOLE_PREFIX}/aid/{created['id']}",
                gettext(request)(N_("Your request for assistance is sent.")))


def _aid_id(request: web.Request) -> str:
    rid = request.match_info["id"]
    if len(rid) != 64 or any(c not in "0123456789abcdef" for c in rid):
        raise PageError(404, gettext(request)(N_("No such request.")))
    return rid


async def aid_detail(request: web.Request) -> web.StreamResponse:
    rid = _aid_id(request)
    thread = await api(request, "GET", f"/api/v1/aid/requests/{rid}")
    status = await api(request, "GET", "/api/v1/status")
    return render(request, "aid_detail.html", r=thread, kinds=NEED_KINDS,
                  statuses=AID_STATUSES, me=status.get("key"))


async def aid_offer(request: web.Request) -> web.StreamResponse:
    rid = _aid_id(request)
    data = form(request)
    body: dict[str, Any] = {"kinds": data.getall("kinds", [])[:16] or ["other"]}
    if _text(data.get("detail")):
        body["detail"] = {request[LANG]: _text(data.get("detail"))}
    await api(request, "POST", f"/api/v1/aid/requests/{rid}/offers", body=body)
    return done(request, f"{CONSOLE_PREFIX}/aid/{rid}",
                gettext(request)(N_("Your offer is sent.")))


async def aid_accept(request: web.Request) -> web.StreamResponse:
    rid = _aid_id(request)
    offer = request.match_info["offer"]
    await api(request, "POST", f"/api/v1/aid/requests/{rid}/offers/{segment(offer)}/accept")
    return done(request, f"{CONSOLE_PREFIX}/aid/{rid}",
                gettext(request)(N_("The offer is accepted.")))


async def aid_withdraw(request: web.Request) -> web.StreamResponse:
    rid = _aid_id(request)
    offer = request.match_info["offer"]
    await api(request, "POST", f"/api/v1/aid/requests/{rid}/offers/{segment(offer)}/withdraw")
    return done(request, f"{CONSOLE_PREFIX}/aid/{rid}",
                gettext(request)(N_("Your offer is withdrawn.")))


async def aid_update(request: web.Request) -> web.StreamResponse:
    rid = _aid_id(request)
    data = form(request)
    body: dict[str, Any] = {"note": {request[LANG]: _text(data.get("note"))}}
    if data.get("status") in AID_STATUSES[:2]:
        body["status"] = data["status"]
    await api(request, "POST", f"/api/v1/aid/requests/{rid}/updates", body=body)
    return done(request, f"{CONSOLE_PREFIX}/aid/{rid}",
                gettext(request)(N_("The update is posted.")))


async def aid_close(request: web.Request) -> web.StreamResponse:
    rid = _aid_id(request)
    summary = _text(form(request).get("summary"))
    await api(request, "POST", f"/api/v1/aid/requests/{rid}/close",
              body={"summary": {request[LANG]: summary}})
    return done(request, f"{CONSOLE_PREFIX}/aid/{rid}",
                gettext(request)(N_("The request is closed.")))


# --- rules ----------------------------------------------------------------------------


async def rules_page(request: web.Request) -> web.StreamResponse:
    kind = request.query.get("type", "")
    query = {"type": kind} if kind in RULE_TYPES else {}
    listing = await api(request, "GET", "/api/v1/rules", query=query)
    return render(request, "rules.html", rules=listing["rules"], kind=kind, types=RULE_TYPES)


async def rules_export(request: web.Request) -> web.StreamResponse:
    kind = request.query.get("type", "")
    if kind not in RULE_TYPES:
        raise PageError(422, gettext(request)(N_("Choose a rule type to export.")))
    text = await api(request, "GET", "/api/v1/rules/export", query={"type": kind})
    suffix = {"yara": "yar", "sigma": "yml", "suricata": "rules", "snort": "rules"}[kind]
    return web.Response(text=str(text), content_type="text/plain", charset="utf-8", headers={
        "Content-Disposition": f'attachment; filename="entraide-{kind}.{suffix}"'})


# --- tokens ---------------------------------------------------------------------------


async def tokens_page(request: web.Request) -> web.StreamResponse:
    store = request.config_dict[NODE].tokens
    records = sorted((r.to_json() for r in store.records()), key=lambda r: r["name"])
    return render(request, "tokens.html", tokens=records, created=None,
                  scopes=[s.value for s in Scope])


async def token_create(request: web.Request) -> web.StreamResponse:
    data = form(request)
    store = request.config_dict[NODE].tokens
    try:
        scope = Scope(data.get("scope", ""))
    except ValueError as exc:
        raise PageError(422, gettext(request)(N_("Choose a scope."))) from exc
    name = _text(data.get("name"), 64) or None
    try:
        token = store.create(scope, name)
    except EntraideError as exc:
        raise PageError(422, localize(str(exc), request[LANG])) from exc
    records = sorted((r.to_json() for r in store.records()), key=lambda r: r["name"])
    # Shown once, on this answer only (no-store), as the CLI does.
    return render(request, "tokens.html", tokens=records, created=token,
                  scopes=[s.value for s in Scope])


async def token_revoke(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    try:
        request.config_dict[NODE].tokens.revoke(name)
    except EntraideError as exc:
        raise PageError(404, localize(str(exc), request[LANG])) from exc
    return done(request, f"{CONSOLE_PREFIX}/tokens",
                gettext(request)(N_("The token {name} is revoked.")).format(name=name))


MANAGE_ROUTES: tuple[Route, ...] = (
    Route("GET", "/trust", trust_page, Scope.ADMIN),
    Route("POST", "/trust/preview", trust_preview, Scope.ADMIN),
    Route("POST", "/trust/add", trust_add, Scope.ADMIN),
    Route("GET", "/trust/{name}/edit", trust_edit, Scope.ADMIN),
    Route("POST", "/trust/{name}/update", trust_update, Scope.ADMIN),
    Route("POST", "/trust/{name}/card", trust_key_preview, Scope.ADMIN),
    Route("POST", "/trust/{name}/key", trust_key, Scope.ADMIN),
    Route("POST", "/trust/{name}/remove", trust_remove, Scope.ADMIN),
    Route("POST", "/forks/{origin}/clear", fork_clear, Scope.ADMIN),
    Route("GET", "/aid", aid_page),
    Route("POST", "/aid", aid_create, Scope.WRITE),
    Route("GET", "/aid/{id}", aid_detail),
    Route("POST", "/aid/{id}/offers", aid_offer, Scope.WRITE),
    Route("POST", "/aid/{id}/offers/{offer}/accept", aid_accept, Scope.WRITE),
    Route("POST", "/aid/{id}/offers/{offer}/withdraw", aid_withdraw, Scope.WRITE),
    Route("POST", "/aid/{id}/updates", aid_update, Scope.WRITE),
    Route("POST", "/aid/{id}/close", aid_close, Scope.WRITE),
    Route("GET", "/rules", rules_page),
    Route("GET", "/rules/export", rules_export),
    Route("POST", "/tokens", token_create, Scope.ADMIN),
    Route("GET", "/tokens", tokens_page, Scope.ADMIN),
    Route("POST", "/tokens/{name}/revoke", token_revoke, Scope.ADMIN),
)
