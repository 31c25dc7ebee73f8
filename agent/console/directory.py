"""The console's expertise directory (mutual aid, docs/operations.md "Mutual aid"):
every member's newest signed capability profile, the filter "who can help with this
need, in this language, now?", and this node's own profile, published by an admin.

Like every console page, it is the API's answer rendered (``GET /api/v1/capabilities``)
and its one change is one API call (``PUT /api/v1/capabilities``, admin), then a
redirect to the page that shows the result.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from agent.config.tokens import Scope
from agent.console.backend import BackendError
from agent.console.core import (
    CONSOLE_PREFIX,
    N_,
    Route,
    api,
    done,
    form,
    gettext,
    render,
)
from agent.console.manage import NEED_KINDS

__all__ = ["DIRECTORY_ROUTES", "profile_body"]

_LANGUAGE = re.compile(r"[A-Za-z]{2,3}")
PROFILE_TLPS = ("GREEN", "AMBER", "CLEAR")


def _text(value: str | None, limit: int) -> str:
    return (value or "").strip()[:limit]


def _filters(request: web.Request) -> tuple[dict[str, str], dict[str, str]]:
    """The page's filters as shown, and the API query they make (bad ones dropped)."""
    query = request.query
    shown = {"need": query.get("need", ""), "language": query.get("language", "").strip()[:3],
             "available": "true" if query.get("available") == "true" else ""}
    api_query: dict[str, str] = {}
    if shown["need"] in NEED_KINDS:
        api_query["need"] = shown["need"]
    if _LANGUAGE.fullmatch(shown["language"]):
        api_query["language"] = shown["language"].lower()
    if shown["available"]:
        api_query["available"] = "true"
    return shown, api_query


async def _page(request: web.Request, *, http_status: int = 200,
                values: dict[str, Any] | None = None, error: str | None = None
                ) -> web.Response:
    shown, query = _filters(request)
    listing = await api(request, "GET", "/api/v1/capabilities", query=query)
    status = await api(request, "GET", "/api/v1/status")
    me = status.get("key")
    own = None
    if values is None:  # this node's profile, whatever the filters (the form starts from it)
        mine = await api(request, "GET", "/api/v1/capabilities")
        own = next((c for c in mine["capabilities"] if c.get("origin") == me), None)
        values = _form_values(own)
    return render(request, "capabilities.html", http_status=http_status,
                  profiles=listing["capabilities"], filters=shown, kinds=NEED_KINDS,
                  me=me, values=values, tlps=PROFILE_TLPS, error=error,
                  filtered=bool(query))


def _form_values(profile: dict[str, Any] | None) -> dict[str, Any]:
    """The own-profile form's fields from a published profile (or empty ones)."""
    profile = profile or {}
    contact = profile.get("contact") or {}
    detail = profile.get("detail") or {}
    return {"skills": list(profile.get("skills") or []),
            "languages": ", ".join(profile.get("languages") or []),
            "hours": profile.get("hours") or "",
            "available": bool(profile.get("available", True)),
            "contact_name": contact.get("name") or "",
            "contact_channel": contact.get("channel") or "",
            "detail_en": detail.get("en") or "" if isinstance(detail, dict) else "",
            "detail_fr": detail.get("fr") or "" if isinstance(detail, dict) else "",
            "tlp": "GREEN"}


def profile_body(data: Any) -> dict[str, Any]:
    """The ``PUT /api/v1/capabilities`` body of the own-profile form (the API checks
    every field; languages are comma-separated tags)."""
    body: dict[str, Any] = {
        "skills": [kind for kind in data.getall("skills", []) if kind in NEED_KINDS],
        "languages": [t.strip().lower() for t in _text(data.get("languages"), 200).split(",")
                      if t.strip()][:8],
        "available": data.get("available") == "yes",
        "tlp": data.get("tlp") if data.get("tlp") in PROFILE_TLPS else "GREEN",
    }
    if _text(data.get("hours"), 200):
        body["hours"] = _text(data.get("hours"), 200)
    detail = {lang: _text(data.get(f"detail_{lang}"), 4000) for lang in ("en", "fr")}
    if any(detail.values()):
        body["detail"] = {k: v for k, v in detail.items() if v}
    if _text(data.get("contact_name"), 200):
        body["contact"] = {"name": _text(data.get("contact_name"), 200)}
        if _text(data.get("contact_channel"), 200):
            body["contact"]["channel"] = _text(data.get("contact_channel"), 200)
    return body


async def capabilities_page(request: web.Request) -> web.StreamResponse:
    """GET /console/capabilities?need=&language=&available=true."""
    return await _page(request)


async def capabilities_publish(request: web.Request) -> web.StreamResponse:
    """POST /console/capabilities: publish this node's profile (admin)."""
    data = form(request)
    body = profile_body(data)
    try:
        await api(request, "PUT", "/api/v1/capabilities", body=body)
    except BackendError as exc:
        if exc.status != 422:
            raise
        values = {**_form_values(None), **{k: v for k, v in data.items() if k != "skills"},
                  "skills": body["skills"], "available": body["available"]}
        return await _page(request, http_status=422, values=values, error=exc.message)
    return done(request, f"{CONSOLE_PREFIX}/capabilities",
                gettext(request)(N_("This node's profile is published.")))


DIRECTORY_ROUTES: tuple[Route, ...] = (
    Route("GET", "/capabilities", capabilities_page),
    Route("POST", "/capabilities", capabilities_publish, Scope.ADMIN),
)
