"""A real node with its API and the web console mounted as ``entraide run`` mounts it
(agent/composition.py), served on 127.0.0.1, and a signed-in browser-like client."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from html import unescape
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient, TestServer

from agent.api.app import create_app
from agent.config.datadir import DataDir
from agent.config.tokens import Scope, TokenStore
from agent.console.app import mount_console
from agent.node.node import Node
from tests.agent._api_helpers import make_data_dir

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@dataclass
class Console:
    """A started node, its API+console server, one token per scope."""

    node: Node
    server: TestServer
    tokens: dict[str, str] = field(default_factory=dict)
    clients: list[TestClient[Any, Any]] = field(default_factory=list)

    async def browser(self, lang: str = "en") -> TestClient[Any, Any]:
        """A new client with its own cookies, as a new browser would be."""
        client = TestClient(self.server, timeout=aiohttp.ClientTimeout(total=30),
                            headers={"Accept-Language": lang})
        await client.start_server()
        self.clients.append(client)
        return client

    async def signed_in(self, scope: str, lang: str = "en") -> TestClient[Any, Any]:
        client = await self.browser(lang)
        status, _page = await sign_in(client, self.tokens[scope])
        assert status == 200, _page
        return client


async def page(client: TestClient[Any, Any], path: str) -> tuple[int, str]:
    async with client.get(path) as resp:
        return resp.status, await resp.text()


def csrf_of(text: str) -> str:
    found = CSRF.search(text)
    assert found, text[:2000]
    return unescape(found.group(1))


async def post(client: TestClient[Any, Any], path: str, data: dict[str, Any],
               *, csrf_from: str | None = None) -> tuple[int, str]:
    """POST a form with the CSRF token of the page ``csrf_from`` (default: ``path``'s
    own page, or the status page); follows the redirect like a browser."""
    if "csrf" not in data:
        _status, text = await page(client, csrf_from or "/console/status")
        data = {**data, "csrf": csrf_of(text)}
    async with client.post(path, data=data) as resp:
        return resp.status, await resp.text()


async def sign_in(client: TestClient[Any, Any], token: str) -> tuple[int, str]:
    _status, text = await page(client, "/console/login")
    return await post(client, "/console/login", {"token": token, "csrf": csrf_of(text),
                                                 "next": "/console/status"})


@asynccontextmanager
async def running_console(root: Path, name: str = "QC", peers: tuple[str, ...] = ("ON",)
                          ) -> AsyncIterator[Console]:
    dd = make_data_dir(root, name, peers) if not (root / name.lower()).exists() \
        else DataDir(root / name.lower())
    store = TokenStore(dd)
    tokens = {scope.value: store.create(scope) for scope in Scope}
    async with Node.open(dd, trust_poll_interval=0.05) as node:
        app = create_app(node)
        mount_console(app)
        server = TestServer(app, host="127.0.0.1", port=0)
        await server.start_server()
        console = Console(node, server, tokens)
        try:
            yield console
        finally:
            for client in console.clients:
                await client.close()
            await server.close()
