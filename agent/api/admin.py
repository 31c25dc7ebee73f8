"""Local API handlers for the node itself: status, the trust list, forks, ledger
verification.

Peer changes made here are written to ``peers.toml`` atomically (under the data-dir
lock the CLI also takes) and applied at once: a removed peer's sessions end and its
later entries are refused. Clearing a fork lifts its origin's quarantine at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from aiohttp import web

from agent.api.models import PeerAdd, PeerUpdate
from agent.config.settings import PeerEntry
from agent.errors import ConfigError, UnknownAudienceError, UnknownForkError
from agent.i18n import N_
from agent.storage.types import bodies_json
from agent.web.common import NODE, ApiError, json_response, read_json
from protocol.cards import parse_card
from protocol.errors import KeyFormatError

__all__ = ["add_peer", "clear_fork", "get_peer", "list_forks", "list_peers", "remove_peer",
           "status", "update_peer", "verify_ledger"]


@contextlib.contextmanager
def _peer_input() -> Iterator[None]:
    """A bad card or peer field in a request body is 422 ``invalid`` (a ConfigError's
    subclasses keep their own mapping: a duplicate name is 409)."""
    try:
        yield
    except KeyFormatError as exc:
        raise ApiError(422, "invalid", f"bad peer card: {exc}") from exc
    except ConfigError as exc:
        if type(exc) is not ConfigError:
            raise
        raise ApiError(422, "invalid", str(exc)) from exc


async def status(request: web.Request) -> web.Response:
    """GET /api/v1/status."""
    return json_response(await request.app[NODE].status())


async def list_peers(request: web.Request) -> web.Response:
    """GET /api/v1/peers: the trust list in force, with each peer's session state."""
    return json_response({"peers": request.app[NODE].peers()})


async def get_peer(request: web.Request) -> web.Response:
    """GET /api/v1/peers/{name}."""
    node = request.app[NODE]
    return json_response(node.peer_json(node.peer(request.match_info["name"])))


async def add_peer(request: web.Request) -> web.Response:
    """POST /api/v1/peers: trust a peer (from a card, or a name and a key)."""
    node = request.app[NODE]
    data = await read_json(request)
    if not isinstance(data, dict):
        raise ApiError(422, "invalid", "the body must be a JSON object")
    body = PeerAdd.model_validate(data)
    with _peer_input():
        if body.card is not None:
            entry = PeerEntry.from_card(parse_card(body.card), body.jurisdiction)
        else:
            assert body.name is not None and body.key is not None
            entry = PeerEntry.build(name=body.name, key=body.key, url=body.url,
                                    jurisdiction=body.jurisdiction)
    await node.add_peer(entry)
    return json_response(node.peer_json(entry), status=201,
                         headers={"Location": f"/api/v1/peers/{entry.name}"})


async def update_peer(request: web.Request) -> web.Response:
    """PATCH /api/v1/peers/{name}: change a trusted peer's URL, key (or both, from its
    card) or jurisdiction, as ``entraide peers update`` does; applied live (a new key
    ends the sessions of the old one)."""
    node = request.app[NODE]
    name = request.match_info["name"]
    current = node.peer(name)
    data = await read_json(request)
    if not isinstance(data, dict):
        raise ApiError(422, "invalid", "the body must be a JSON object")
    body = PeerUpdate.model_validate(data)
    url, key = body.url, body.key
    with _peer_input():
        if body.card is not None:
            card = parse_card(body.card)
            if card.name != name:
                raise ApiError(422, "invalid", N_("this card is another peer's (its name "
                                                  "differs)"))
            key, url = card.key.text, card.url or ""
        entry = current.updated(url=url, key=key, jurisdiction=body.jurisdiction)
    await node.members.replace_peer(name, entry)
    return json_response(node.peer_json(entry))


async def remove_peer(request: web.Request) -> web.Response:
    """DELETE /api/v1/peers/{name}: stop trusting a peer, now."""
    node = request.app[NODE]
    name = request.match_info["name"]
    shown = node.peer_json(node.peer(name))
    await node.remove_peer(name)
    shown["connected"] = False
    return json_response({"removed": shown})


async def list_forks(request: web.Request) -> web.Response:
    """GET /api/v1/forks: every fork recorded, oldest first, with its proof."""
    return json_response({"forks": await request.app[NODE].forks()})


async def clear_fork(request: web.Request) -> web.Response:
    """POST /api/v1/forks/{origin}/clear: lift the origin's quarantine (peer name or key)."""
    node = request.app[NODE]
    text = request.match_info["origin"]
    try:
        origin = node.key_of(text)
    except UnknownAudienceError as exc:
        raise UnknownForkError(f"no fork recorded for {text[:70]!r} (not a peer name nor "
                               "a key)") from exc
    return json_response(await node.clear_fork(origin))


async def verify_ledger(request: web.Request) -> web.Response:
    """GET /api/v1/ledger/verify: re-check every signature and chain."""
    node = request.app[NODE]
    report = await node.verify_ledger()
    return json_response({
        "ok": report.ok, "entries": report.entries, "origins": report.origins,
        "fork_proofs": report.fork_proofs, "bodies": bodies_json(report.bodies),
        "problems": [{"origin": None if p.origin is None else p.origin.text,
                      "origin_name": None if p.origin is None else node.name_of(p.origin),
                      "seq": p.seq, "what": p.what} for p in report.problems],
    })
