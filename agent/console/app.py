"""The web console's aiohttp app, mounted at ``/console/`` on the local API listener
(docs/operations.md, "The web console").

:func:`console_app` builds it from one route table (method, path, handler, scope: the
core's sign-in and language routes, ``pages.py``'s, ``manage.py``'s and
``directory.py``'s) and the core's
middleware (core.py states the security invariants); :func:`mount_console` adds it to
the API app, whose Host and Origin checks then apply to the console too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from agent.console.backend import BACKEND, Backend
from agent.console.core import (
    CONSOLE_PREFIX,
    CORE_ROUTES,
    ROUTE_TABLE,
    SESSIONS,
    STATIC,
    Route,
    console_middleware,
    redirect,
    security_headers,
)
from agent.console.directory import DIRECTORY_ROUTES
from agent.console.manage import MANAGE_ROUTES
from agent.console.pages import PAGE_ROUTES
from agent.console.session import SessionStore

__all__ = ["CONSOLE_PREFIX", "ROUTES", "console_app", "mount_console"]

ROUTES: tuple[Route, ...] = (*CORE_ROUTES, *PAGE_ROUTES, *MANAGE_ROUTES, *DIRECTORY_ROUTES)


def console_app(*, sessions: SessionStore | None = None) -> web.Application:
    """The console sub-app. Mount it with :func:`mount_console` on an API app, whose
    ``NODE`` (agent/web/common.py) it reads the tokens from."""
    app = web.Application(middlewares=[console_middleware])
    app[SESSIONS] = sessions or SessionStore()
    app[BACKEND] = Backend()
    table: dict[web.AbstractRoute, Route] = {}
    for route in ROUTES:
        table[app.router.add_route(route.method, route.path, route.handler)] = route
    app.router.add_static("/static/", STATIC, name="static")
    app[ROUTE_TABLE] = table
    app.on_response_prepare.append(security_headers)
    app.cleanup_ctx.append(_backend_context)
    return app


async def _backend_context(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[BACKEND].close()


def mount_console(app: web.Application, sessions: SessionStore | None = None
                  ) -> web.Application:
    """Serve the console at ``/console/`` on the API app ``app``; returns the sub-app."""
    console = console_app(sessions=sessions)
    app.add_subapp(CONSOLE_PREFIX, console)
    app.router.add_get(CONSOLE_PREFIX, _to_console)
    return console


async def _to_console(request: web.Request) -> web.StreamResponse:
    return redirect(CONSOLE_PREFIX + "/")
