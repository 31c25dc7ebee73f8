"""The console's one way to the node: the node's own local API, called over loopback
with the signed-in reader's token.

The console reimplements no rule of the API: the same authentication, scopes, checks,
error codes and messages apply to a page as to ``curl``, so a read token that sees a
page can change nothing through it, whatever the page offers.

Invariants:
- Requests go to the listener that received the reader's request (its own socket
  address), with the reader's ``Host`` (already accepted by the API's Host check) and
  language; answers are capped at ``MAX_ANSWER`` bytes.
- Every failure is a :class:`BackendError` with the API's status, code and message
  (already in the reader's language), or one of this module's own messages, marked for
  the ``console`` catalog and translated where the error page shows it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web

from agent.i18n import N_
from agent.jsoncodec import JSONDecodeError, loads
from protocol.errors import EntraideError

__all__ = ["BACKEND", "MAX_ANSWER", "Backend", "BackendError"]

log = logging.getLogger(__name__)

MAX_ANSWER = 8 * 1024 * 1024


class BackendError(EntraideError):
    """The API refused a call: its HTTP status, error code and (localized) message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class Backend:
    """One HTTP client session per console app, opened on first use."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=120, sock_connect=10),
                auto_decompress=True)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    @staticmethod
    def base(request: web.Request) -> str:
        """The URL of the listener ``request`` came in on."""
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        if not sockname:
            raise BackendError(503, "unavailable", N_("The node's listener is gone."))
        host, port = sockname[0], sockname[1]
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"{request.scheme}://{host}:{port}"

    @staticmethod
    def headers(request: web.Request, token: str, lang: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}", "Host": request.host,
                "Accept-Language": lang}

    async def call(self, request: web.Request, token: str, lang: str, method: str,
                   path: str, *, body: Any = None,
                   query: dict[str, str] | None = None) -> Any:
        """One API call; its JSON answer (or text, for a text answer).

        Raises:
            BackendError: any status over 299, with the API's code and message.
        """
        url = self.base(request) + path
        kwargs: dict[str, Any] = {"headers": self.headers(request, token, lang),
                                  "params": query or None, "allow_redirects": False}
        if body is not None:
            kwargs["json"] = body
        try:
            async with self._client().request(method, url, **kwargs) as resp:
                data = await resp.content.read(MAX_ANSWER + 1)
                if len(data) > MAX_ANSWER:
                    raise BackendError(502, "too_large", N_("The node's answer is too large."))
                value: Any
                if resp.content_type == "application/json":
                    try:
                        value = loads(data)
                    except JSONDecodeError as exc:
                        raise BackendError(502, "bad_answer",
                                           N_("The node's answer is not JSON.")) from exc
                else:
                    value = data.decode("utf-8", "replace")
                if resp.status >= 300:
                    error = value.get("error", {}) if isinstance(value, dict) else {}
                    raise BackendError(resp.status, str(error.get("code", "http_error")),
                                       str(error.get("message", resp.reason or "")))
                return value
        except aiohttp.ClientError as exc:
            log.warning("console: the node's API is unreachable: %s", exc)
            raise BackendError(503, "unavailable",
                               N_("The node's API cannot be reached; try again.")) from exc

    @asynccontextmanager
    async def stream(self, request: web.Request, token: str, lang: str,
                     query: dict[str, str], last_event_id: str | None
                     ) -> AsyncIterator[aiohttp.ClientResponse]:
        """The API's event stream, open (raises BackendError when refused)."""
        headers = self.headers(request, token, lang)
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id[:200]
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        try:
            async with self._client().get(self.base(request) + "/api/v1/stream",
                                          headers=headers, params=query,
                                          timeout=timeout) as resp:
                if resp.status != 200:
                    data = await resp.content.read(64 * 1024)
                    try:
                        error = loads(data).get("error", {})
                    except (JSONDecodeError, AttributeError):
                        error = {}
                    raise BackendError(resp.status, str(error.get("code", "http_error")),
                                       str(error.get("message", "")))
                yield resp
        except aiohttp.ClientError as exc:
            log.warning("console: the node's API is unreachable: %s", exc)
            raise BackendError(503, "unavailable",
                               N_("The node's API cannot be reached; try again.")) from exc


def segment(text: str) -> str:
    """``text`` as one path segment."""
    return quote(text, safe="")


BACKEND = web.AppKey("console_backend", Backend)
