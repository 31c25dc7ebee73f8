"""Real nodes for the scenarios: ``entraide run`` processes set up through the CLI
(:class:`agent.cli.localfed.LocalFederation`), extra author-only origins in their trust
lists, ledgers filled directly before a node starts, and an aiohttp client.

Entries that scenarios pre-generate are real: CLEAR observation payloads, signed by
real origin identities, chained; they are signed in the bench setup (not timed).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from agent.cli.localfed import FedNode, LocalFederation
from agent.config.datadir import DataDir
from agent.config.settings import PeerEntry, edit_trust_list, load_node_config
from agent.metrics import parse_text
from agent.storage.ledger import Ledger
from protocol.entries import TLP, VerifiedEntry, sign_entry
from protocol.keys import Identity, PublicKey
from protocol.payloads import LocalizedText, Observation, encode_payload

__all__ = [
    "Client",
    "FedNode",
    "LocalFederation",
    "add_origins",
    "connect",
    "fill_ledger",
    "identity",
    "ipv4",
    "metrics",
    "observation_body",
    "open_ledger",
    "sign_chain",
    "wait_until",
]


def identity(label: str) -> Identity:
    """A fixed identity per label, so runs are comparable."""
    return Identity(hashlib.blake2b(b"entraide-bench/" + label.encode(), digest_size=32).digest())


def ipv4(i: int) -> str:
    """A distinct public-looking IPv4 address for each ``i`` below 2**24."""
    return f"{11 + (i >> 16) % 200}.{(i >> 8) & 255}.{i & 255}.{7 + (i >> 24)}"


def observation_body(value: str, *, tag: str = "bench", description: str | None = None) -> bytes:
    """The payload bytes of a CLEAR observation of an IPv4 address."""
    return encode_payload(Observation(
        type="ipv4-addr", value=value, confidence=70, severity="medium", tags=(tag,),
        description=LocalizedText(en=description) if description else None))


def sign_chain(ident: Identity, count: int, *, head: tuple[int, bytes] | None = None,
               value: Callable[[int], str] = ipv4, tag: str = "bench",
               now_ms: int | None = None) -> list[VerifiedEntry]:
    """``count`` CLEAR observation entries continuing ``ident``'s chain after ``head``;
    the observed value is ``value(seq)``."""
    seq, prev = (0, None) if head is None else head
    ts = int(time.time() * 1000) if now_ms is None else now_ms
    out = []
    for _ in range(count):
        seq += 1
        entry = sign_entry(ident, seq=seq, prev=prev, now_ms=ts + seq, tlp=TLP.CLEAR,
                           audience=None, body=observation_body(value(seq), tag=tag))
        out.append(entry)
        prev = entry.hash
    return out


def add_origins(node: FedNode, origins: Iterable[tuple[str, PublicKey]]) -> None:
    """Trust ``origins`` (name, key) as authors in ``node``'s peers.toml (no URL)."""
    dd = DataDir(node.data_dir)
    me = PublicKey.from_text(node.key)
    entries = [PeerEntry.build(name=name, key=key.text) for name, key in origins]

    def change(trust: Any) -> Any:
        for entry in entries:
            trust = trust.with_peer(entry, own_key=me, own_name=node.name)
        return trust

    edit_trust_list(dd, change, own_key=me, own_name=node.name)


@contextlib.asynccontextmanager
async def open_ledger(node: FedNode) -> AsyncIterator[Ledger]:
    """The (stopped) node's own ledger, opened directly; every origin is accepted."""
    dd = DataDir(node.data_dir)
    path = load_node_config(dd).ledger_path(dd)
    ledger = await Ledger.open(path, identity=dd.load_identity(None),
                               is_trusted_origin=lambda _key: True)
    try:
        yield ledger
    finally:
        await ledger.close()


async def fill_ledger(ledger: Ledger, entries: Sequence[VerifiedEntry],
                      batch: int = 5000) -> None:
    """Ingest ``entries`` (already in chain order per origin) in batches."""
    for at in range(0, len(entries), batch):
        chunk = entries[at:at + batch]
        result = await ledger.ingest(chunk)
        if result.stored != len(chunk):
            raise RuntimeError(f"ledger stored {result.stored} of {len(chunk)}: {result}")


class Client:
    """An aiohttp client of one node's API (JSON, bearer token)."""

    def __init__(self, node: FedNode, concurrency: int = 64) -> None:
        self.base = node.api
        self.headers = {"Authorization": f"Bearer {node.token}",
                        "Content-Type": "application/json"}
        self._connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
        self.session = aiohttp.ClientSession(connector=self._connector, headers=self.headers)

    async def close(self) -> None:
        await self.session.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def request(self, method: str, path: str, body: Any = None,
                      expect: int | tuple[int, ...] = (200, 201)) -> Any:
        data = None if body is None else json.dumps(body)
        async with self.session.request(method, self.base + path, data=data) as resp:
            raw = await resp.read()
            ok = (expect,) if isinstance(expect, int) else expect
            if resp.status not in ok:
                raise RuntimeError(f"{method} {path}: HTTP {resp.status}: {raw[:300]!r}")
            return json.loads(raw) if raw else None

    async def text(self, path: str) -> str:
        async with self.session.get(self.base + path) as resp:
            resp.raise_for_status()
            return await resp.text()


async def metrics(client: Client) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """The node's /metrics, parsed."""
    return parse_text(await client.text("/metrics"))


def metric(parsed: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str,
           **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for key, value in parsed.get(name, {}).items():
        have = dict(key)
        if all(have.get(k) == v for k, v in labels.items()):
            total += value
    return total


def histogram_quantile(before: dict[str, dict[tuple[tuple[str, str], ...], float]],
                       after: dict[str, dict[tuple[tuple[str, str], ...], float]],
                       name: str, q: float, **labels: str) -> float:
    """The ``q`` quantile (seconds) of histogram ``name`` over what was observed between
    two scrapes, interpolated inside its bucket as Prometheus's ``histogram_quantile``
    does; NaN if nothing was observed."""
    counts: dict[float, float] = {}
    for parsed, sign in ((after, 1), (before, -1)):
        for key, value in parsed.get(f"{name}_bucket", {}).items():
            have = dict(key)
            if all(have.get(k) == v for k, v in labels.items()):
                bound = float(have["le"])
                counts[bound] = counts.get(bound, 0.0) + sign * value
    bounds = sorted(counts)
    if not bounds or counts[bounds[-1]] <= 0:
        return math.nan
    rank = q * counts[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        if counts[bound] >= rank:
            if math.isinf(bound):
                return lower
            inside = counts[bound] - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, counts[bound]
    return lower


async def connect(client: Client, peer: FedNode) -> None:
    """Give the node ``peer``'s card (URL included) through the API: it dials at once.

    ``peer`` was trusted as an author only (no URL); it is removed and added back.
    """
    await client.request("DELETE", f"/api/v1/peers/{peer.name}", expect=200)
    await client.request("POST", "/api/v1/peers", {"card": peer.card}, expect=201)


async def wait_until(check: Callable[[], Any], *, timeout: float, what: str,
                     interval: float = 0.05) -> float:
    """Await ``check()`` (sync or async) until truthy; return when (perf_counter)."""
    deadline = time.perf_counter() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        now = time.perf_counter()
        if value:
            return now
        if now > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(interval)


def new_federation(root: Path, names: Sequence[str], links: Sequence[tuple[str, str]] = ()
                   ) -> LocalFederation:
    """Nodes ``names`` initialised through the CLI; only ``links`` (a dials b) carry URLs."""
    fed = LocalFederation(root, [(n, f"Bench {n}") for n in names], links)
    fed.set_up()
    return fed
