"""The console's reading pages and the analyst's changes: node status and ledger
verify, the federation and its links, indicator search, an observation's detail,
submitting an observation, a sighting or a retraction, and the live feed.

Every page is the API's answer (backend.py) rendered; every change is one API call,
then a redirect to the page that shows its result (post/redirect/get).
"""

from __future__ import annotations

import asyncio
import math
import re
from typing import Any

import aiohttp
from aiohttp import web

from agent.config.tokens import Scope
from agent.console.backend import BACKEND, BackendError, segment
from agent.console.core import (
    CONSOLE_PREFIX,
    LANG,
    N_,
    SESSION,
    PageError,
    Route,
    api,
    done,
    form,
    gettext,
    render,
)

__all__ = ["INDICATOR_TYPES", "PAGE_ROUTES", "TLPS", "links_picture"]

INDICATOR_TYPES = ("ipv4-addr", "ipv6-addr", "domain-name", "url", "email-addr",
                   "file:sha256", "file:sha1", "file:md5", "cve", "autonomous-system",
                   "user-account")
TLPS = ("CLEAR", "GREEN", "AMBER", "AMBER+STRICT", "RED")
SEVERITIES = ("low", "medium", "high", "critical")
_ID = re.compile(r"[0-9a-f]{64}")
_STREAM_FILTERS = ("type", "value", "origin", "tlp")


# --- node -----------------------------------------------------------------------------


async def status_page(request: web.Request) -> web.StreamResponse:
    status = await api(request, "GET", "/api/v1/status")
    return render(request, "status.html", status=status, verify=None)


async def verify_page(request: web.Request) -> web.StreamResponse:
    status, verify = await asyncio.gather(api(request, "GET", "/api/v1/status"),
                                          api(request, "GET", "/api/v1/ledger/verify"))
    return render(request, "status.html", status=status, verify=verify)


# --- federation -----------------------------------------------------------------------


def links_picture(me: str, peers: list[dict[str, Any]], size: int = 360
                  ) -> dict[str, Any]:
    """Coordinates of a star picture: this node in the middle, each peer on a circle,
    a solid line to a connected peer and a dashed one to the others."""
    centre = size / 2
    radius = size / 2 - 60 if peers else 0
    placed = []
    for index, peer in enumerate(peers):
        angle = 2 * math.pi * index / max(len(peers), 1) - math.pi / 2
        placed.append({"name": str(peer.get("name", "")), "connected": bool(peer.get("connected")),
                       "forked": bool(peer.get("forked")),
                       "x": round(centre + radius * math.cos(angle), 1),
                       "y": round(centre + radius * math.sin(angle), 1)})
    return {"size": size, "me": me, "cx": centre, "cy": centre, "peers": placed}


async def federation_page(request: web.Request) -> web.StreamResponse:
    status = await api(request, "GET", "/api/v1/status")
    peers = sorted(status.get("peers", []), key=lambda p: str(p.get("name", "")))
    return render(request, "federation.html", status=status, peers=peers,
                  picture=links_picture(str(status.get("name", "")), peers))


# --- search and detail ----------------------------------------------------------------


async def search_page(request: web.Request) -> web.StreamResponse:
    query = request.query
    kind, value = query.get("type", ""), query.get("value", "").strip()
    origin, tlp = query.get("origin", "").strip(), query.get("tlp", "")
    indicator: dict[str, Any] | None = None
    listing: dict[str, Any] | None = None
    if kind and value:
        if kind not in INDICATOR_TYPES:
            raise PageError(422, gettext(request)(N_("Unknown indicator type.")))
        indicator = await api(request, "GET",
                              f"/api/v1/indicators/{segment(kind)}/{segment(value)}")
    else:
        filters = {"limit": "50"}
        if kind in INDICATOR_TYPES:
            filters["type"] = kind
        if origin:
            filters["origin"] = origin[:100]
        if tlp in TLPS:
            filters["tlp"] = tlp
        if query.get("cursor"):
            filters["cursor"] = query["cursor"][:500]
        listing = await api(request, "GET", "/api/v1/observations", query=filters)
    return render(request, "search.html", types=INDICATOR_TYPES, tlps=TLPS, kind=kind,
                  value=value, origin=origin, tlp=tlp, indicator=indicator, listing=listing)


def _entry_id(request: web.Request) -> str:
    entry = request.match_info["id"]
    if not _ID.fullmatch(entry):
        raise PageError(404, gettext(request)(N_("No such observation.")))
    return entry


async def observation_page(request: web.Request) -> web.StreamResponse:
    entry = _entry_id(request)
    observation = await api(request, "GET", f"/api/v1/observations/{entry}")
    indicator = await api(request, "GET", "/api/v1/indicators/"
                          f"{segment(observation['type'])}/{segment(observation['value'])}")
    status = await api(request, "GET", "/api/v1/status")
    own = observation.get("origin") == status.get("key")
    return render(request, "observation.html", o=observation, indicator=indicator, own=own,
                  tlps=TLPS)


async def retract(request: web.Request) -> web.StreamResponse:
    entry = _entry_id(request)
    reason = (form(request).get("reason") or "").strip()
    await api(request, "POST", f"/api/v1/observations/{entry}/retract",
              body={"reason": reason} if reason else None)
    return done(request, f"{CONSOLE_PREFIX}/observations/{entry}",
                gettext(request)(N_("The observation is retracted.")))


async def sighting(request: web.Request) -> web.StreamResponse:
    entry = _entry_id(request)
    data = form(request)
    body: dict[str, Any] = {"of": entry}
    note = (data.get("note") or "").strip()
    if note:
        body["note"] = note
    created = await api(request, "POST", "/api/v1/sightings", body=body)
    return done(request, f"{CONSOLE_PREFIX}/observations/{entry}",
                gettext(request)(N_("Sighting reported: {id}")).format(id=created["id"][:12]))


# --- submit ---------------------------------------------------------------------------


async def submit_page(request: web.Request) -> web.StreamResponse:
    return render(request, "submit.html", types=INDICATOR_TYPES, tlps=TLPS,
                  severities=SEVERITIES, values={})


def observation_body(data: Any) -> dict[str, Any]:
    """The API body of the submit form (the API validates every field)."""
    body: dict[str, Any] = {"type": data.get("type", ""), "value": data.get("value", "").strip(),
                            "tlp": data.get("tlp") or "GREEN"}
    if data.get("confidence"):
        try:
            body["confidence"] = int(data["confidence"])
        except ValueError:
            body["confidence"] = data["confidence"]
    if data.get("severity"):
        body["severity"] = data["severity"]
    description = {lang: data.get(f"description_{lang}", "").strip() for lang in ("en", "fr")}
    if any(description.values()):
        body["description"] = {k: v for k, v in description.items() if v}
    tags = [t.strip() for t in data.get("tags", "").split(",") if t.strip()]
    if tags:
        body["tags"] = tags
    audience = [a.strip() for a in data.get("audience", "").split(",") if a.strip()]
    if audience:
        body["audience"] = audience
    return body


async def submit(request: web.Request) -> web.StreamResponse:
    data = form(request)
    try:
        created = await api(request, "POST", "/api/v1/observations",
                            body=observation_body(data))
    except BackendError as exc:
        if exc.status >= 500 or exc.status in (401, 403):
            raise
        return render(request, "submit.html", http_status=exc.status, types=INDICATOR_TYPES,
                      tlps=TLPS, severities=SEVERITIES, values=dict(data), error=exc.message)
    return done(request, f"{CONSOLE_PREFIX}/observations/{created['id']}",
                gettext(request)(N_("Observation shared.")))


# --- live feed ------------------------------------------------------------------------


async def feed_page(request: web.Request) -> web.StreamResponse:
    return render(request, "feed.html", types=INDICATOR_TYPES, tlps=TLPS,
                  filters={k: request.query.get(k, "") for k in _STREAM_FILTERS})


async def feed_stream(request: web.Request) -> web.StreamResponse:
    """GET /console/stream: the API's event stream, relayed as is, so the page's script
    needs no token (the session cookie is enough; the token stays on the node)."""
    query = {k: v[:200] for k, v in request.query.items() if k in _STREAM_FILTERS and v}
    backend = request.app[BACKEND]
    session = request[SESSION]
    async with backend.stream(request, session.token, request[LANG], query,
                              request.headers.get("Last-Event-ID")) as upstream:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-store",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        try:
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
        except (ConnectionResetError, aiohttp.ClientError):
            pass  # the reader left the page, or the node is stopping: the stream ends
        return response


PAGE_ROUTES: tuple[Route, ...] = (
    Route("GET", "/status", status_page),
    Route("GET", "/verify", verify_page, Scope.ADMIN),
    Route("GET", "/federation", federation_page),
    Route("GET", "/search", search_page),
    Route("GET", "/observations/{id}", observation_page),
    Route("POST", "/observations/{id}/retract", retract, Scope.WRITE),
    Route("POST", "/observations/{id}/sighting", sighting, Scope.WRITE),
    Route("GET", "/submit", submit_page, Scope.WRITE),
    Route("POST", "/submit", submit, Scope.WRITE),
    Route("GET", "/feed", feed_page),
    Route("GET", "/stream", feed_stream),
)
