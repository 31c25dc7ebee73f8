"""The console's core: the route type, the page helpers (render, api, form, done), sign-in
and out, the language switch, and one middleware that
every console request passes: it picks the reader's language, finds the session,
sends a reader without one to the sign-in page, checks the CSRF token of every POST
and the session's scope against the route's, and turns every failure into a page in
the reader's language with the right status. The pages themselves are in
``pages.py`` (reading) and ``manage.py`` (trust list, aid, tokens); ``app.py`` builds the
app from all three.

Invariants:
- Every answer carries a strict Content-Security-Policy (``default-src 'self'``, no
  inline script or style, ``frame-ancestors 'none'``), ``X-Content-Type-Options:
  nosniff``, ``Referrer-Policy: same-origin`` (not ``no-referrer``: with it Chromium
  sends ``Origin: null`` on a form's POST, which the API's Origin check refuses) and,
  for pages, ``Cache-Control: no-store``. Nothing is loaded from another origin.
- A POST is refused (403, nothing changed) without the session's CSRF token, or when
  the route needs a scope the session's token lacks; the API called next checks the
  scope again.
- The API's Host and Origin checks (agent/api/app.py) run before any of this.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web
from multidict import MultiDict, MultiDictProxy

from agent.config.tokens import Scope
from agent.console.backend import BACKEND, BackendError
from agent.console.render import environment
from agent.console.session import COOKIE, LANG_COOKIE, PRE_COOKIE, Session, SessionStore
from agent.i18n import LANGS, negotiate, translation
from agent.web.common import NODE

__all__ = [
    "CONSOLE_PREFIX",
    "CORE_ROUTES",
    "FORM",
    "LANG",
    "N_",
    "ROUTE_TABLE",
    "SESSION",
    "SESSIONS",
    "STATIC",
    "PageError",
    "Route",
    "api",
    "console_middleware",
    "done",
    "form",
    "gettext",
    "redirect",
    "render",
    "security_headers",
]

log = logging.getLogger(__name__)

CONSOLE_PREFIX = "/console"
STATIC = Path(__file__).parent / "static"
SESSIONS = web.AppKey("console_sessions", SessionStore)
SESSION = web.RequestKey("console_session", Session)
LANG = web.RequestKey("console_lang", str)
FORM = web.RequestKey("console_form", MultiDictProxy[str])

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
       "object-src 'none'")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def N_(message: str) -> str:
    """Mark ``message`` for the catalog; it is translated where it is shown."""
    return message


@dataclass(frozen=True)
class Route:
    """One console route; ``scope`` None: no session needed (sign-in, language)."""

    method: str
    path: str
    handler: Handler
    scope: Scope | None = Scope.READ


class PageError(Exception):
    """A request the console refuses: shown as an error page with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# --- helpers the pages use ------------------------------------------------------------


def gettext(request: web.Request) -> Callable[[str], str]:
    return translation(request.get(LANG, "en"), "console").gettext


def render(request: web.Request, template: str, http_status: int = 200, *,
           show_flash: bool = True, **context: Any) -> web.Response:
    """``template`` in the reader's language, with the session and page chrome, answered
    with ``http_status``; the session's pending message is shown (and forgotten) unless
    ``show_flash`` is false (an error page keeps it for the next page)."""
    lang = request.get(LANG, "en")
    session = request.get(SESSION)
    flash = None
    if session is not None and show_flash:
        flash, session.flash = session.flash, None
    here = request.path_qs
    other = "fr" if lang == "en" else "en"
    text = environment(lang).get_template(template).render(
        lang=lang, session=session, csrf=session.csrf if session else "",
        flash=flash, path=request.path, prefix=CONSOLE_PREFIX,
        switch_url=f"{CONSOLE_PREFIX}/lang?" + urlencode({"to": other, "next": here}),
        other_lang=other, admin=bool(session and session.allows(Scope.ADMIN)),
        writer=bool(session and session.allows(Scope.WRITE)), **context)
    return web.Response(text=text, status=http_status, content_type="text/html",
                        charset="utf-8")


async def api(request: web.Request, method: str, path: str, *, body: Any = None,
              query: dict[str, str] | None = None) -> Any:
    """Call the node's API as the signed-in reader (see backend.py)."""
    session = request[SESSION]
    return await request.app[BACKEND].call(request, session.token, request[LANG], method,
                                           path, body=body, query=query)


def form(request: web.Request) -> MultiDictProxy[str]:
    """The POST form, read and checked by the middleware."""
    return request[FORM]


def redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def done(request: web.Request, location: str, message: str | None = None) -> web.Response:
    """A redirect after a change (post/redirect/get), with ``message`` shown next."""
    if message is not None and SESSION in request:
        request[SESSION].flash = message
    return redirect(location)


def safe_next(target: str | None) -> str:
    """A same-console path to go back to, never another site."""
    if (not target or not target.startswith(CONSOLE_PREFIX + "/") or target.startswith("//")
            or "\\" in target or len(target) > 2000):
        return CONSOLE_PREFIX + "/"
    return target


# --- sign in and out, language --------------------------------------------------------


async def login_page(request: web.Request) -> web.StreamResponse:
    pre = request.cookies.get(_named(request, PRE_COOKIE)) or secrets.token_urlsafe(32)
    response = render(request, "login.html", pre=pre,
                      next=safe_next(request.query.get("next")))
    _cookie(request, response, _named(request, PRE_COOKIE), pre, max_age=3600)
    return response


async def login(request: web.Request) -> web.StreamResponse:
    data = request[FORM]
    token = (data.get("token") or "").strip()
    _ = gettext(request)
    record = request.config_dict[NODE].tokens.authenticate(token) if 0 < len(token) < 200 \
        else None
    if record is None:
        pre = request.cookies.get(_named(request, PRE_COOKIE), "")
        return render(request, "login.html", http_status=401, pre=pre,
                      next=safe_next(data.get("next")),
                      error=_("This token is not valid on this node."))
    sid, _session = request.app[SESSIONS].open(token, Scope(record.scope), record.name)
    response = redirect(safe_next(data.get("next")))
    _cookie(request, response, _named(request, COOKIE), sid)
    response.del_cookie(_named(request, PRE_COOKIE), path=CONSOLE_PREFIX + "/")
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    request.app[SESSIONS].close(request.cookies.get(_named(request, COOKIE)))
    response = redirect(CONSOLE_PREFIX + "/login")
    response.del_cookie(_named(request, COOKIE), path=CONSOLE_PREFIX + "/")
    return response


async def switch_lang(request: web.Request) -> web.StreamResponse:
    """GET /console/lang?to=fr&next=PATH: remember the language, back to the page."""
    to = request.query.get("to", "")
    response = redirect(safe_next(request.query.get("next")))
    if to in LANGS:
        _cookie(request, response, LANG_COOKIE, to, max_age=365 * 86400)
    return response


async def home(request: web.Request) -> web.StreamResponse:
    return redirect(CONSOLE_PREFIX + "/status")


def _named(request: web.Request, base: str) -> str:
    """A session cookie's name on this listener: browsers share cookies between the
    ports of one host, so two nodes on one machine (a local federation) would otherwise
    sign each other's readers out. The language cookie is shared on purpose."""
    return f"{base}_{request.url.port or 0}"


def _cookie(request: web.Request, response: web.StreamResponse, name: str, value: str,
            max_age: int | None = None, http_only: bool = True) -> None:
    response.set_cookie(name, value, path=CONSOLE_PREFIX + "/", httponly=http_only,
                        samesite="Strict", secure=request.secure, max_age=max_age)


# --- the middleware -------------------------------------------------------------------

ROUTE_TABLE = web.AppKey("console_routes", dict[web.AbstractRoute, Route])


def _language(request: web.Request) -> str:
    chosen = request.cookies.get(LANG_COOKIE)
    if chosen in LANGS:
        return chosen
    return negotiate(request.headers.get("Accept-Language"))


def _session(request: web.Request) -> Session | None:
    """The reader's live session, its token checked again: a token revoked (or whose
    scope changed) since sign-in ends the session or narrows it at once."""
    sessions = request.app[SESSIONS]
    sid = request.cookies.get(_named(request, COOKIE))
    session = sessions.get(sid)
    if session is None:
        return None
    record = request.config_dict[NODE].tokens.authenticate(session.token)
    if record is None:
        sessions.close(sid)
        return None
    session.scope = Scope(record.scope)
    return session


def _error_page(request: web.Request, status: int, message: str) -> web.Response:
    return render(request, "error.html", http_status=status, show_flash=False,
                  status_code=status, message=message)


@web.middleware
async def console_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request[LANG] = _language(request)
    _ = gettext(request)
    try:
        route = request.app[ROUTE_TABLE].get(request.match_info.route)
        if route is None or route.scope is None:
            if request.method == "POST":
                await _check_post(request, None)
            return await handler(request)
        session = _session(request)
        if session is None:
            if request.method == "GET":
                return redirect(f"{CONSOLE_PREFIX}/login?next={quote(request.path_qs)}")
            raise PageError(401, _("Your session has ended; sign in again."))
        request[SESSION] = session
        if request.method == "POST":
            await _check_post(request, session)
        if not session.allows(route.scope):
            raise PageError(403, _("Your token's scope does not allow this."))
        return await handler(request)
    except PageError as exc:
        return _error_page(request, exc.status, exc.message)
    except BackendError as exc:  # the API's message, or backend.py's (in the catalog)
        return _error_page(request, exc.status, _(exc.message))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error_page(request, exc.status, exc.reason)
    except Exception:
        log.exception("console error on %s %s", request.method, request.path)
        return _error_page(request, 500, _("Something went wrong; the node's log says what."))


async def _check_post(request: web.Request, session: Session | None) -> None:
    _ = gettext(request)
    try:
        data = await request.post()
    except (ValueError, web.HTTPException) as exc:
        raise PageError(400, _("This form could not be read.")) from exc
    fields = MultiDictProxy(MultiDict([(k, v) for k, v in data.items() if isinstance(v, str)]))
    request[FORM] = fields
    given = fields.get("csrf")
    if session is None:
        expected = request.cookies.get(_named(request, PRE_COOKIE))
        ok = bool(expected) and given is not None and secrets.compare_digest(
            given.encode(), (expected or "").encode())
    else:
        ok = session.csrf_ok(given)
    if not ok:
        raise PageError(403, _("This form has expired; reload the page and try again."))


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["X-Frame-Options"] = "DENY"
    if not request.path.startswith(CONSOLE_PREFIX + "/static/"):
        response.headers["Cache-Control"] = "no-store"


CORE_ROUTES: tuple[Route, ...] = (
    Route("GET", "/", home),
    Route("GET", "/login", login_page, None),
    Route("POST", "/login", login, None),
    Route("POST", "/logout", logout),
    Route("GET", "/lang", switch_lang, None),
)
