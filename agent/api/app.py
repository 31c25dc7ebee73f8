"""The local HTTP API (default 127.0.0.1:8470): the aiohttp app local tools talk to.

``create_app(node)`` builds it from :data:`ROUTES`, the one route table that both
registers the handlers and produces ``/api/v1/openapi.json`` (agent/web/openapi.py).
The reference for users is docs/operations.md, "The local HTTP API".

Invariants:
- Every route's scope is in the table; a route with a scope is reachable only with a
  bearer token of that scope or higher (read < write < admin). No token or an
  unknown one: 401; a scope too low: 403.
- Every error, whatever raised it (our checks, pydantic, the node, aiohttp's router
  or body limit), leaves as ``{"error": {"code", "message"}}`` with its status, from
  one middleware; a request that fails changed nothing.
- Bodies are capped at 1 MiB (413), batches at 1,000 items (413).
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import hdrs, web
from pydantic import ValidationError

from agent import __version__
from agent.api.admin import (
    add_peer,
    clear_fork,
    get_peer,
    list_forks,
    list_peers,
    remove_peer,
    status,
    update_peer,
    verify_ledger,
)
from agent.api.aid import AID_ROUTES
from agent.api.erasure import ERASURE_ROUTES
from agent.api.keys import KEY_ROUTES
from agent.api.messages import localized_message, validation_message
from agent.api.models import (
    BatchCreated,
    BatchResults,
    ErrorBody,
    ForkList,
    ForkRecordOut,
    Health,
    IndicatorOut,
    ObservationBatch,
    ObservationList,
    ObservationOut,
    ObservationQuery,
    ObservationSubmit,
    PeerAdd,
    PeerList,
    PeerOut,
    PeerRemoved,
    PeerUpdate,
    RetractionCreated,
    RetractRequest,
    SightingCreated,
    SightingSubmit,
    StatusOut,
    StreamQuery,
    SubmitQuery,
    VerifyOut,
)
from agent.api.observations import (
    get_indicator,
    get_observation,
    list_observations,
    post_observations,
    post_sighting,
    retract_observation,
)
from agent.api.rules import RULE_ROUTES
from agent.api.stream import stream, stream_shutdown
from agent.config.hosts import HostPolicy
from agent.config.tokens import Scope, TokenRecord, authenticate
from agent.errors import (
    AlreadyErasedError,
    AlreadyRetractedError,
    AuthError,
    BelowTargetError,
    ConfigError,
    DuplicatePeerError,
    ErasedError,
    InvalidCursorError,
    KeyHandedOverError,
    NodeExistsError,
    NodeStoppingError,
    NotOwnEntryError,
    RestoringError,
    ScopeError,
    StorageError,
    StorageFullError,
    UnknownAudienceError,
    UnknownEntryError,
    UnknownForkError,
    UnknownPeerError,
    UnknownTokenError,
    UntrustedPeerError,
    WiderAudienceError,
)
from agent.i18n import negotiate
from agent.jsoncodec import dumps
from agent.metrics import CONTENT_TYPE
from agent.misp.convert import MISP_ROUTES
from agent.node.node import Node
from agent.taxii.app import TAXII_PREFIX, TAXII_ROUTES, taxii_app
from agent.web.common import (
    API_SETTINGS,
    MAX_BODY_BYTES,
    NODE,
    STATE,
    ApiError,
    ApiSettings,
    ApiState,
    json_response,
    server_header,
)
from agent.web.failures import FAILURE_LOG, FailureLog
from agent.web.openapi import Operation, openapi_document
from protocol.errors import (
    EncodingError,
    EntraideError,
    KeyFormatError,
    OversizeError,
    PayloadError,
)
from protocol.indicators import shown_value
from protocol.payloads import format_validation_error

__all__ = ["OPENAPI", "ROUTES", "ApiSettings", "create_app", "error_body"]

log = logging.getLogger(__name__)

_OPENAPI_TEXT = web.AppKey("openapi_text", str)
TOKEN = web.RequestKey("token", TokenRecord)
_CLOCK: web.AppKey[Callable[[], float]] = web.AppKey("clock")
_HOSTS = web.AppKey("hosts", HostPolicy)
STREAM_PATH = "/api/v1/stream"


# --- small handlers -------------------------------------------------------------------


async def health(request: web.Request) -> web.Response:
    """GET /api/v1/health: the process answers (no token needed)."""
    return json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics: Prometheus text format."""
    text = request.app[NODE].metrics.render()
    return web.Response(text=text, headers={"Content-Type": CONTENT_TYPE})


async def openapi(request: web.Request) -> web.Response:
    """GET /api/v1/openapi.json: this API's OpenAPI 3.1 document (no token needed)."""
    return web.Response(text=request.app[_OPENAPI_TEXT], content_type="application/json")


# --- the route table ------------------------------------------------------------------

_BAD_BODY = (400, 413, 422)
_WRITE = (*_BAD_BODY, 503)  # 503: the node is shutting down

ROUTES: tuple[Operation, ...] = (
    Operation("GET", "/api/v1/health", health, "getHealth", "Liveness check", None, "node",
              response=(Health,)),
    Operation("GET", "/api/v1/status", status, "getStatus",
              "Node name, key, fingerprint, peers, ledger counts, forks", Scope.READ, "node",
              response=(StatusOut,)),
    Operation("POST", "/api/v1/observations", post_observations, "submitObservations",
              "Share one observation, or a batch of up to 1,000", Scope.WRITE, "observations",
              status=201, body=(ObservationSubmit, ObservationBatch), query=SubmitQuery,
              response=(ObservationOut, BatchCreated, BatchResults), errors=_WRITE,
              description="One observation answers with the observation as stored; a batch "
                          "({\"observations\": [...]}) answers with the ids in the order "
                          "given (identical items written once, listed in 'duplicates'). "
                          "Acknowledged entries are durable. The whole request is refused "
                          "(nothing written) if any item is invalid, unless 'partial' is "
                          "set: then the valid items are written and the answer gives every "
                          "item's result. 'refang' undoes defanging (hxxp://, [.]) first."),
    Operation("GET", "/api/v1/observations", list_observations, "listObservations",
              "Observations this node can read, newest first, filtered and paged",
              Scope.READ, "observations", query=ObservationQuery,
              response=(ObservationList,), errors=(400, 422)),
    Operation("GET", "/api/v1/observations/{id}", get_observation, "getObservation",
              "One observation, with origin name and verification status", Scope.READ,
              "observations", response=(ObservationOut,), errors=(404, 410)),
    Operation("POST", "/api/v1/observations/{id}/retract", retract_observation,
              "retractObservation", "Retract one of this node's own observations",
              Scope.WRITE, "observations", status=201, body=(RetractRequest,),
              body_required=False, response=(RetractionCreated,),
              errors=(*_WRITE, 404, 409)),
    Operation("POST", "/api/v1/sightings", post_sighting, "submitSighting",
              "Report a sighting of an existing observation", Scope.WRITE, "observations",
              status=201, body=(SightingSubmit,), response=(SightingCreated,),
              errors=(*_WRITE, 404)),
    Operation("GET", "/api/v1/indicators/{type}/{value:.+}", get_indicator, "getIndicator",
              "Everything known about one indicator, across jurisdictions", Scope.READ,
              "observations", response=(IndicatorOut,), errors=(422,),
              description="The value is normalised for its type first; percent-encode it "
                          "(a URL's slashes may stay as they are)."),
    Operation("GET", STREAM_PATH, stream, "streamObservations",
              "New observations as Server-Sent Events, resumable with Last-Event-ID",
              Scope.READ, "observations", query=StreamQuery, media_type="text/event-stream",
              errors=(400, 422, 503),
              headers=(("Last-Event-ID", "resume after this event id"),)),
    Operation("GET", "/api/v1/peers", list_peers, "listPeers", "The trust list in force",
              Scope.ADMIN, "peers", response=(PeerList,)),
    Operation("POST", "/api/v1/peers", add_peer, "addPeer",
              "Trust a peer (applied live, persisted to peers.toml)", Scope.ADMIN, "peers",
              status=201, body=(PeerAdd,), response=(PeerOut,), errors=(*_BAD_BODY, 409)),
    Operation("GET", "/api/v1/peers/{name}", get_peer, "getPeer", "One trusted peer",
              Scope.ADMIN, "peers", response=(PeerOut,), errors=(404,)),
    Operation("PATCH", "/api/v1/peers/{name}", update_peer, "updatePeer",
              "Change a trusted peer's URL, key (or both, from its card) or jurisdiction "
              "(applied live, persisted to peers.toml)", Scope.ADMIN, "peers",
              body=(PeerUpdate,), response=(PeerOut,), errors=(*_BAD_BODY, 404, 409)),
    Operation("DELETE", "/api/v1/peers/{name}", remove_peer, "removePeer",
              "Stop trusting a peer (applied live, persisted to peers.toml)", Scope.ADMIN,
              "peers", response=(PeerRemoved,), errors=(404,)),
    Operation("GET", "/api/v1/forks", list_forks, "listForks",
              "Every fork recorded (two entries one origin signed with one seq), with proof",
              Scope.ADMIN, "node", response=(ForkList,)),
    Operation("POST", "/api/v1/forks/{origin}/clear", clear_fork, "clearFork",
              "Lift a forked origin's quarantine: its entries are accepted again",
              Scope.ADMIN, "node", response=(ForkRecordOut,), errors=(404,),
              description="`origin` is a peer name or a key (`ed25519:...`). The proofs "
                          "stay as evidence and the same conflict seen again quarantines "
                          "nothing; a fork at another seq quarantines the origin again. "
                          "Answers with the origin's latest fork record; idempotent."),
    Operation("GET", "/api/v1/ledger/verify", verify_ledger, "verifyLedger",
              "Re-check every signature and hash chain of the ledger", Scope.ADMIN, "node",
              response=(VerifyOut,)),
    Operation("GET", "/metrics", metrics, "getMetrics", "Prometheus metrics", Scope.READ,
              "node", media_type="text/plain"),
    Operation("GET", "/api/v1/openapi.json", openapi, "getOpenApi",
              "This API's OpenAPI document", None, "node"),
    *ERASURE_ROUTES,
    *KEY_ROUTES,
    *RULE_ROUTES,
    *AID_ROUTES,
    *MISP_ROUTES,
    *TAXII_ROUTES,
)

OPENAPI: dict[str, Any] = openapi_document(
    ROUTES, title="Entraide local API", version=__version__, error_model=ErrorBody,
    description="The HTTP API a node offers to local tools (README.md, docs/operations.md).")


# --- authentication ---------------------------------------------------------------------


def _authenticate(request: web.Request, scope: Scope) -> None:
    # The one check (agent/config/tokens.py); its AuthError and ScopeError become 401
    # and 403 in error_middleware.
    request[TOKEN] = authenticate(request.app[NODE].tokens,
                                  request.headers.get("Authorization"), scope)


def _guard(op: Operation) -> Callable[[web.Request], Any]:
    if op.scope is None:
        return op.handler
    scope, handler = op.scope, op.handler

    async def guarded(request: web.Request) -> web.StreamResponse:
        _authenticate(request, scope)
        return await handler(request)

    guarded.__name__ = handler.__name__
    guarded.__doc__ = handler.__doc__
    return guarded


# --- errors -----------------------------------------------------------------------------

# Most specific first: the first class that matches decides.
_ERRORS: tuple[tuple[type[BaseException], int, str], ...] = (
    (ScopeError, 403, "insufficient_scope"),
    (AuthError, 401, "unauthorized"),
    (UnknownEntryError, 404, "not_found"),
    (UnknownForkError, 404, "not_found"),
    (NotOwnEntryError, 403, "not_own_entry"),
    (AlreadyRetractedError, 409, "already_retracted"),
    (AlreadyErasedError, 409, "already_erased"),
    (ErasedError, 410, "erased"),
    (BelowTargetError, 422, "tlp_below_target"),
    (WiderAudienceError, 409, "audience_wider_than_target"),
    (UnknownAudienceError, 422, "unknown_audience"),
    (UntrustedPeerError, 422, "untrusted_peer"),
    (InvalidCursorError, 400, "bad_cursor"),
    (OversizeError, 413, "too_large"),
    (PayloadError, 422, "invalid"),
    (EncodingError, 422, "invalid"),
    (KeyFormatError, 422, "invalid"),
    (DuplicatePeerError, 409, "conflict"),
    (NodeExistsError, 409, "conflict"),
    (UnknownPeerError, 404, "not_found"),
    (UnknownTokenError, 404, "not_found"),
    (ConfigError, 422, "invalid"),
    (RestoringError, 503, "restoring"),
    (KeyHandedOverError, 503, "key_rotated"),
    (NodeStoppingError, 503, "unavailable"),
    (StorageFullError, 507, "storage_full"),
    (StorageError, 500, "storage_error"),
)

_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed",
               413: "body_too_large", 415: "unsupported_media_type"}


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def _error(status: int, code: str, message: str,
           headers: dict[str, str] | None = None, *,
           request: web.Request | None = None) -> web.Response:
    # The message in the reader's language (Accept-Language, English by default);
    # the code stays the same in every language: clients act on the code.
    lang = negotiate(request.headers.get(hdrs.ACCEPT_LANGUAGE) if request else None)
    headers = {**(headers or {}), hdrs.CONTENT_LANGUAGE: lang}
    return web.Response(text=dumps(error_body(code, localized_message(message, lang))),
                        status=status, headers=headers, content_type="application/json")


def _validation_code(exc: ValidationError) -> str:
    first = exc.errors(include_url=False, include_input=False)[0]
    field = str(first["loc"][-1]) if first["loc"] else ""
    if first["type"] == "extra_forbidden":
        return "unknown_field"
    if first["type"] == "missing":
        return "missing_field"
    if field in ("tlp", "confidence", "audience"):
        return f"invalid_{field}"
    if field in ("value", "type"):
        return "invalid_indicator"
    return "invalid"


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every failure becomes ``{"error": {"code", "message"}}`` with its status."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except ApiError as exc:
        return _error(exc.status, exc.code, exc.message, exc.headers, request=request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        message = exc.reason if exc.status != 413 else f"the body is over {MAX_BODY_BYTES} bytes"
        return _error(exc.status, _HTTP_CODES.get(exc.status, "http_error"), message, headers,
                      request=request)
    except ValidationError as exc:
        english = format_validation_error(exc, "request").replace("invalid request: ", "")
        lang = negotiate(request.headers.get(hdrs.ACCEPT_LANGUAGE))
        return _error(422, _validation_code(exc), validation_message(exc, lang, english),
                      request=request)
    except EntraideError as exc:
        for cls, status_code, code in _ERRORS:
            if isinstance(exc, cls):
                challenge = ({"WWW-Authenticate": 'Bearer realm="entraide"'}
                             if status_code == 401 else None)
                if status_code == 507:  # a client may retry in a loop: rate-limited
                    request.config_dict[FAILURE_LOG].error(
                        code, "request %s %s failed: %s", request.method,
                        loggable_path(request.path), exc)
                elif status_code >= 500:
                    log.error("request %s %s failed: %s", request.method,
                              loggable_path(request.path), exc)
                return _error(status_code, code, str(exc), challenge, request=request)
        log.exception("unexpected error on %s %s", request.method,
                      loggable_path(request.path))
        return _error(500, "internal", f"{type(exc).__name__}: {exc}", request=request)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:  # peers.toml & co. on a full disk, as the ledger
            request.config_dict[FAILURE_LOG].error(
                "storage_full", "request %s %s failed: %s", request.method,
                loggable_path(request.path), exc)
            return _error(507, "storage_full", StorageFullError.MESSAGE, request=request)
        log.exception("unexpected error on %s %s", request.method,
                      loggable_path(request.path))
        return _error(500, "internal", "internal error (see the node's log)",
                      request=request)
    except Exception:
        log.exception("unexpected error on %s %s", request.method,
                      loggable_path(request.path))
        return _error(500, "internal", "internal error (see the node's log)",
                      request=request)


@web.middleware
async def host_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Refuse a ``Host`` or ``Origin`` the node does not answer to: DNS rebinding
    (agent/config/hosts.py). Outermost: nothing else runs for such a request."""
    policy: HostPolicy = request.app[_HOSTS]
    if not policy.allows_host(request.headers.get(hdrs.HOST)):
        return _error(421, "misdirected_request",
                      "this node's API does not answer to that Host; list the name in "
                      "[api] allowed_hosts of entraide.toml to reach it by name",
                      request=request)
    if not policy.allows_origin(request.headers.get(hdrs.ORIGIN)):
        return _error(403, "forbidden_origin",
                      "requests from that Origin are refused (a web page on another site)",
                      request=request)
    response: web.StreamResponse = await handler(request)
    return response


_METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"})


@web.middleware
async def metrics_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Count every request by route template and status; time all but the stream."""
    clock = request.app[_CLOCK]
    state = request.app[STATE]
    start = clock()
    status_code = 500
    try:
        response: web.StreamResponse = await handler(request)
        status_code = response.status
        return response
    except web.HTTPException as exc:
        status_code = exc.status
        raise
    finally:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        method = request.method if request.method in _METHODS else "OTHER"
        state.requests.inc(labels=(method, route, str(status_code)))
        if route != STREAM_PATH:
            state.latency.observe(clock() - start, (method, route))


# --- the app --------------------------------------------------------------------------


def create_app(node: Node, *, clock: Callable[[], float] = time.perf_counter,
               settings: ApiSettings | None = None, manage_node: bool = False,
               hosts: HostPolicy | None = None) -> web.Application:
    """The local API app for ``node``.

    Args:
        node: the node to serve; started by the caller, unless ``manage_node``.
        clock: monotonic seconds, for request latencies.
        settings: stream tuning (see :class:`ApiSettings`).
        manage_node: start the node with the app and stop it on cleanup.
        hosts: the names it answers to besides IP literals and localhost (from
            ``[api] allowed_hosts``; default: none).
    """
    app = web.Application(middlewares=[host_middleware, metrics_middleware, error_middleware],
                          client_max_size=MAX_BODY_BYTES)
    app[NODE] = node
    app[_HOSTS] = hosts or HostPolicy()
    app[_CLOCK] = clock
    app[API_SETTINGS] = settings or ApiSettings()
    app[STATE] = ApiState.create(node.metrics)
    app[FAILURE_LOG] = FailureLog(log)
    app[_OPENAPI_TEXT] = dumps(OPENAPI)
    for op in ROUTES:
        if op.path.startswith(TAXII_PREFIX):
            continue  # served by the TAXII sub-app: its own auth, errors and media types
        app.router.add_route(op.method, op.path, _guard(op), name=op.operation_id)
    app.add_subapp(TAXII_PREFIX, taxii_app())
    if manage_node:
        app.cleanup_ctx.append(_node_context)
    app.on_shutdown.append(_shutdown)
    app.on_response_prepare.append(server_header)
    return app


async def _node_context(app: web.Application) -> AsyncIterator[None]:
    node = app[NODE]
    await node.start()
    yield
    await node.stop()


async def _shutdown(app: web.Application) -> None:
    state = app[STATE]
    state.closing = True
    stream_shutdown(state.streams)


_LOOKUP_PREFIX = "/api/v1/indicators/"


def loggable_path(path: str) -> str:
    """``path`` as a log line may show it: a lookup's indicator value goes through
    ``shown_value`` (a personal-data value is never logged; docs/privacy.md)."""
    if not path.startswith(_LOOKUP_PREFIX):
        return path
    kind, _, value = path[len(_LOOKUP_PREFIX):].partition("/")
    return f"{_LOOKUP_PREFIX}{kind}/{shown_value(kind, value)}" if value else path
