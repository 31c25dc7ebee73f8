"""The API's error messages in the reader's language (``Accept-Language``, English by
default; docs/operations.md, "Languages").

Messages are made in English where an error is raised, often deep in the node, which
does not know who reads them; the error middleware (agent/api/app.py) translates the
formatted text with :func:`agent.i18n.localize` and sets ``Content-Language``. This
module lists the templates of the messages raised below the API layer (and the
validation messages of pydantic that bodies most often meet), so ``scripts/i18n``
extracts them into the ``entraide`` catalog; each spells the text its raise site
formats, placeholders standing for the values. Messages already written in both
languages ("... / ...") are left as they are.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from agent.i18n import DEFAULT_LANG, N_, localize

__all__ = ["TEMPLATES", "localized_message", "validation_message"]

TEMPLATES = (
    # agent/config/tokens.py
    N_("a bearer token is required (Authorization: Bearer <token>)"),
    N_("authenticate with an Entraide API token: 'Authorization: Bearer <token>', or HTTP "
       "Basic with the token as password"),
    N_("unknown token"),
    N_("this needs a token with the {scope} scope; this one has {has}"),
    N_("no token named {name}"),
    # agent/node, agent/config/trust.py, agent/storage/cursors.py
    N_("no entry {id}"),
    N_("no observation {id}"),
    N_("no such observation"),
    N_("no fork recorded for origin {origin}"),
    N_("no fork recorded for {name} (not a peer name nor a key)"),
    N_("only the origin that wrote an entry can retract it"),
    N_("{id} is already retracted"),
    N_("no peer named {name} in the trust list"),
    N_("{name} is not a peer in the trust list nor this node's name"),
    N_("an audience applies only to AMBER, AMBER+STRICT and RED, not {tlp}"),
    N_("RED needs an explicit audience (peer names)"),
    N_("the audience is empty"),
    N_("invalid cursor"),
    N_("invalid cursor for the {kind} list"),
    N_("invalid cursor for a list ordered by time"),
    N_("the node is not started"),
    N_("the node is shutting down"),
    # agent/errors.py StorageFullError (a full disk: 507 storage_full)
    N_("the disk holding the ledger is full: nothing was stored; free space and retry"),
    # agent/config/trust.py, protocol/cards.py (the trust list, API and CLI alike)
    N_("peer {name} has this node's own key; a node does not trust itself"),
    N_("peer name {name} is this node's own name"),
    N_("peer name {name} is already in the trust list"),
    N_("peer name {name} clashes with {other} (names are compared ignoring case)"),
    N_("key of peer {name} is already trusted as {other}"),
    N_("key of peer {name} has the same key id as {other}; one of them must change keys"),
    N_("trust list over {n} peers"),
    N_("peer card checksum does not match: the card was mistyped or cut"),
    N_("peer card checksum must be 8 lowercase hex characters"),
    N_("peer card key must be 43 base64url characters"),
    N_("peer card contains non-ASCII characters"),
    N_("unsupported peer card version {version}"),
    N_("peer URL must start with http:// or https://, not {url}"),
    N_("peer URL has no host: {url}"),
    N_("peer URL must not carry a user name or password"),
    N_("peer URL must not carry a query or fragment"),
    N_("peer URL port must be 1-65535"),
    # agent/node/keys.py, protocol/handover.py (key rotation and compromise)
    N_("give the compromise's start as a seq or as a time, one of them"),
    N_("the compromise's seq must be 1 or more"),
    N_("no new key to hand over to: {error}"),
    N_("{path}: holds {fingerprint}, not the key named"),
    N_("a key cannot hand over to itself"),
    N_("the new key's countersignature does not verify"),
    # agent/api, agent/web/common.py
    N_("the body is over {limit} bytes"),
    N_("the body is empty; a JSON object is expected"),
    N_("the body is not UTF-8: {reason}"),
    N_("the body is not valid JSON: {reason}"),
    N_("the body must be a JSON object"),
    N_("the body must be a JSON object: one observation, or {\"observations\": [...]}"),
    N_("a batch holds at most {max} observations, not {n}"),
    N_("this route takes no query parameters"),
    N_("query parameter {name} is given twice"),
    N_("invalid stream position (Last-Event-ID)"),
    N_("at most {n} stream clients at once"),
    N_("bad peer card: {reason}"),
    N_("unknown TLP {tlp}"),
    N_("supersedes must be an entry id: 64 hex digits"),
    N_("playbooks have no type"),
    N_("reason must be text of at most 4096 characters"),
    N_("internal error (see the node's log)"),
    N_("this node's API does not answer to that Host; list the name in [api] "
       "allowed_hosts of entraide.toml to reach it by name"),
    N_("requests from that Origin are refused (a web page on another site)"),
    N_("Not Found"),
    N_("Method Not Allowed"),
    # protocol/indicators.py (inside a validation message)
    N_("unknown indicator type {type}; known types: {known}"),
    N_("{kind}: value is empty"),
    N_("{kind}: value must be a string"),
    N_("{kind}: value is over {n} characters"),
    N_("is not an IPv4 address ({reason})"),
    N_("is an IPv6 address; use the type ipv6-addr"),
    N_("is not an IPv6 address (an IPv4 address? use the type ipv4-addr)"),
    N_("is not a domain name"),
    N_("is not an absolute URL (scheme://host/...)"),
    N_("has no host"),
    # pydantic (validation of request bodies and queries)
    N_("Field required"),
    N_("Extra inputs are not permitted"),
    N_("Input should be a valid integer"),
    N_("Input should be a valid string"),
    N_("Input should be a valid boolean"),
    N_("Input should be a valid list"),
    N_("Input should be a valid dictionary"),
    N_("Input should be greater than or equal to {n}"),
    N_("Input should be less than or equal to {n}"),
    N_("String should have at most {n} characters"),
    N_("String should have at least {n} characters"),
    N_("List should have at most {n} items after validation, not {m}"),
    N_("List should have at least {n} item after validation, not {m}"),
    N_("Input should be {choices}"),
    N_("invalid {what}: {details}"),
)


def localized_message(message: str, lang: str) -> str:
    """``message`` (English, formatted) in ``lang`` where the catalog has it."""
    return localize(message, lang)


def validation_message(exc: ValidationError, lang: str, english: str) -> str:
    """A request's validation error in ``lang``: ``english`` (the message the API has
    always given) when ``lang`` is English, else each field's reason translated."""
    if lang == DEFAULT_LANG:
        return english
    parts = []
    for error in exc.errors(include_url=False, include_input=False)[:5]:
        location = ".".join(str(part) for part in error["loc"])
        ctx: dict[str, Any] = error.get("ctx") or {}
        reason = str(ctx["error"]) if error["type"] == "value_error" and "error" in ctx \
            else error["msg"]
        reason = localize(reason, lang)
        parts.append(f"{location} : {reason}" if location else reason)
    return "; ".join(parts)
