"""Builders for the node and API tests: real data dirs, real keys, a real HTTP server on
127.0.0.1 (aiohttp's TestServer on port 0), real SQLite files."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient, TestServer

from agent.api.app import create_app
from agent.config.datadir import DataDir
from agent.config.settings import NodeConfig, PeerEntry, TrustList, create_node, save_trust_list
from agent.config.tokens import Scope, TokenStore
from agent.node.node import Node
from agent.web.common import ApiSettings
from protocol.keys import Identity


def identity(label: str) -> Identity:
    """A fixed identity per label, so failures replay."""
    return Identity(hashlib.blake2b(b"api-test-" + label.encode(), digest_size=32).digest())


def make_data_dir(root: Path, name: str, peers: tuple[str, ...] = ()) -> DataDir:
    """A node initialised in ``root/name`` trusting ``peers`` (by name, fixed keys)."""
    dd = DataDir(root / name.lower())
    me = identity(name)
    create_node(dd, NodeConfig(name=name, jurisdiction=f"Jurisdiction {name}"), me)
    entries = [PeerEntry.build(name=p, key=identity(p).public_key.text,
                               url=f"http://127.0.0.1:1/{p.lower()}") for p in peers]
    save_trust_list(dd, TrustList(entries))
    return dd


@dataclass
class Api:
    """A started node and a client of its API, with one token per scope."""

    node: Node
    client: TestClient[Any, Any]
    tokens: dict[str, str] = field(default_factory=dict)

    def auth(self, scope: str | None) -> dict[str, str]:
        return {} if scope is None else {"Authorization": f"Bearer {self.tokens[scope]}"}

    async def call(self, method: str, path: str, *, scope: str | None = "admin",
                   json_body: Any = None, data: bytes | str | None = None,
                   headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """One request; returns (status, decoded JSON or text)."""
        all_headers = {**self.auth(scope), **(headers or {})}
        kwargs: dict[str, Any] = {"headers": all_headers}
        if json_body is not None:
            kwargs["data"] = json.dumps(json_body)
            all_headers.setdefault("Content-Type", "application/json")
        elif data is not None:
            kwargs["data"] = data
        async with self.client.request(method, path, **kwargs) as resp:
            text = await resp.text()
            if resp.content_type == "application/json":
                return resp.status, json.loads(text)
            return resp.status, text

    async def submit(self, body: dict[str, Any], scope: str = "write") -> dict[str, Any]:
        status, result = await self.call("POST", "/api/v1/observations", scope=scope,
                                         json_body=body)
        assert status == 201, result
        return result  # type: ignore[no-any-return]


@asynccontextmanager
async def running_api(root: Path, name: str = "QC", peers: tuple[str, ...] = ("ON", "FED"),
                      settings: ApiSettings | None = None,
                      **node_options: Any) -> AsyncIterator[Api]:
    """Start a node in ``root`` and serve its API on 127.0.0.1 (a real socket)."""
    dd = make_data_dir(root, name, peers) if not (root / name.lower()).exists() \
        else DataDir(root / name.lower())
    store = TokenStore(dd)
    tokens = {scope.value: store.create(scope) for scope in Scope}
    node_options.setdefault("trust_poll_interval", 0.05)
    async with Node.open(dd, **node_options) as node:
        app = create_app(node, settings=settings)
        server = TestServer(app, host="127.0.0.1", port=0)
        client = TestClient(server, timeout=aiohttp.ClientTimeout(total=30))
        await client.start_server()
        try:
            yield Api(node, client, tokens)
        finally:
            await client.close()


def obs(value: str = "203.0.113.7", type: str = "ipv4-addr", **fields: Any) -> dict[str, Any]:
    """An observation body as a tool would submit it."""
    return {"type": type, "value": value, **fields}


def ip(n: int) -> str:
    return f"198.51.{n // 256 % 256}.{n % 256}"
