"""The TAXII 2.1 server on the local API listener, under ``/taxii2/``
(docs/operations.md, "TAXII 2.1, STIX 2.1 and MISP").

One API root, ``/taxii2/entraide/``, with two collections:

- ``federation`` (read-only): every object this node can read, whoever wrote it;
- ``local`` (read-write): this node's own entries; objects posted there become its
  signed entries (indicators of a modelled type become observations).

The routes live in :data:`TAXII_ROUTES`, which agent/api/app.py adds to its route table
(so the OpenAPI document lists them) and mounts as a sub-application (:func:`taxii_app`)
with its own middleware: TAXII error bodies, HTTP Basic next to bearer tokens, and
its media types. Objects come from the TAXII index (agent/storage/taxii_index.py), brought up
to date with the ledger before each request.

Invariants:
- Every response, errors included, has ``Content-Type: application/taxii+json;version=2.1``.
- Every request is authenticated (read scope to GET, write scope to POST), then its
  Accept header is checked (406), then for POST its Content-Type (415) and size (413).
- A request body is never read past ``MAX_CONTENT_LENGTH`` (announced in the API root).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from agent import __version__
from agent.config.tokens import Scope, TokenRecord, authenticate
from agent.errors import AuthError, StorageError, StorageFullError
from agent.i18n import N_, localize
from agent.metrics import MetricFamily, Registry
from agent.node.node import Node
from agent.storage.taxii_index import Collection, IndexPage, TaxiiIndex, VersionFilter
from agent.taxii.http import (
    MEDIA_STIX,
    MEDIA_TAXII,
    Filters,
    TaxiiError,
    auth_error,
    check_accept,
    check_content_type,
    date_headers,
    error_response,
    next_token,
    parse_filters,
    request_lang,
    taxii_response,
)
from agent.taxii.post import DiskFullDuringPost, Judge, add_objects, parse_envelope
from agent.web.common import NODE
from agent.web.failures import FAILURE_LOG
from agent.web.openapi import Operation
from protocol.errors import EntraideError
from protocol.stix import format_us

__all__ = [
    "API_ROOT",
    "COLLECTIONS",
    "JUDGE",
    "MAX_CONTENT_LENGTH",
    "TAXII_PREFIX",
    "TAXII_ROUTES",
    "TaxiiCollection",
    "taxii_app",
]

log = logging.getLogger(__name__)

TAXII_PREFIX = "/taxii2"
API_ROOT = f"{TAXII_PREFIX}/entraide/"
MAX_CONTENT_LENGTH = 8 * 1024 * 1024
_OBJECT_FILTERS = frozenset({"id", "type", "version", "spec_version"})


@dataclass(frozen=True)
class TaxiiCollection:
    """One collection: fixed id (the same on every node), alias, and what it holds."""

    id: str
    alias: str
    title: str
    description: str
    contents: Collection
    writable: bool

    def resource(self, can_write: bool) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "description": self.description,
                "alias": self.alias, "can_read": True, "can_write": self.writable and can_write,
                "media_types": [MEDIA_STIX]}


COLLECTIONS = (
    TaxiiCollection(
        "365fed99-08fa-4c25-a6ab-8a3a7d7bd8d4", "federation", "Federation",
        "Everything this node can read: its own entries and those replicated from every "
        "trusted jurisdiction, as STIX 2.1.", Collection.ALL, False),
    TaxiiCollection(
        "e4f0c3b6-7a52-4d0e-9c1f-2b8d6a3e5f17", "local", "This node",
        "This node's own entries. Objects posted here are signed by this node and "
        "shared with the federation.", Collection.OWN, True),
)
_BY_KEY = {key: c for c in COLLECTIONS for key in (c.id, c.alias)}


@dataclass
class _State:
    """Per-app state: the index (opened on first use), the post lock and the judge."""

    index: TaxiiIndex | None = None
    opening: asyncio.Lock = field(default_factory=asyncio.Lock)
    post_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    judge: Judge = field(default_factory=Judge)
    """Thread only; the root app's :data:`JUDGE`, when set, is used instead."""
    counting: asyncio.Task[None] | None = None
    """Counts the index's refused rows every :data:`REFUSED_COUNT_S` while it is open."""
    registry: Registry | None = None
    """Where :func:`_families` is collected while the index is open."""


    def families(self) -> list[MetricFamily]:
        """The index's figures for /metrics (a registry collector while it is open):
        what was counted last, nothing before the first count."""
        counted = None if self.index is None else self.index.refused_rows
        if counted is None:
            return []
        return [MetricFamily(
            "entraide_taxii_refused_objects", "TAXII index objects kept but not served "
            "because they speak for another member (they name it, or reuse an id it "
            f"published first); counted every {REFUSED_COUNT_S:g} s.", "gauge", (),
            {(): float(counted)})]


REFUSED_COUNT_S = 60.0
"""Seconds between two counts of the TAXII index's refused objects (the metric)."""
_STATE = web.AppKey("taxii_state", _State)
JUDGE = web.AppKey("taxii_judge", Judge)
"""On the root app: the judge with the supervisor's judge process (agent/composition.py)."""
_TOKEN = web.RequestKey("taxii_token", TokenRecord)


def _node(request: web.Request) -> Node:
    return request.config_dict[NODE]


async def _index(request: web.Request, *, sync: bool = True) -> TaxiiIndex:
    """The index, opened on first use and brought up to date with the ledger."""
    state = request.app[_STATE]
    if state.index is None:
        async with state.opening:
            if state.index is None:
                node = _node(request)
                ledger_path = node.config.ledger_path(node.data_dir)
                index = await TaxiiIndex.open(
                    ledger_path.with_name(ledger_path.stem + ".taxii.sqlite3"), ledger_path,
                    node.public_key, _origin_info(node), node.clock)
                state.counting = asyncio.create_task(_count_refused(index))
                state.registry = node.metrics
                state.registry.add_collector(state.families)
                state.index = index
    if sync:
        await state.index.sync()
    return state.index


def _origin_info(node: Node) -> Callable[[str], tuple[str | None, str | None]]:
    def info(key: str) -> tuple[str | None, str | None]:
        name = node.name_of_text(key)
        if name == node.name:
            return name, node.config.jurisdiction
        peer = node.trust.by_name(name) if name else None
        return name, None if peer is None else peer.jurisdiction

    return info


def _collection(request: web.Request) -> TaxiiCollection:
    found = _BY_KEY.get(request.match_info["name"])
    if found is None:
        raise TaxiiError(404, "Not Found", N_("no such collection"))
    return found


def _guarded(scope: Scope) -> Callable[[Callable[[web.Request], Awaitable[web.Response]]],
                                         Callable[[web.Request], Awaitable[web.Response]]]:
    def wrap(handler: Callable[[web.Request], Awaitable[web.Response]]
             ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def guarded(request: web.Request) -> web.Response:
            request[_TOKEN] = authenticate(request.config_dict[NODE].tokens,
                                           request.headers.get("Authorization"), scope,
                                           basic=True)
            check_accept(request)
            return await handler(request)

        guarded.__name__ = handler.__name__
        guarded.__doc__ = handler.__doc__
        return guarded

    return wrap


# --- server information (§4) ---------------------------------------------------------


@_guarded(Scope.READ)
async def discovery(request: web.Request) -> web.Response:
    """GET /taxii2/: the discovery resource."""
    node = _node(request)
    return taxii_response({
        "title": f"Entraide node {node.name}",
        "description": "Federated threat intelligence shared between jurisdictions, "
                       f"served by Entraide {__version__}.",
        "contact": f"the administrators of node {node.name} ({node.public_key.fingerprint})",
        "default": API_ROOT,
        "api_roots": [API_ROOT],
    })


@_guarded(Scope.READ)
async def api_root(request: web.Request) -> web.Response:
    """GET /taxii2/entraide/: the API root resource."""
    node = _node(request)
    return taxii_response({
        "title": f"Entraide {node.name}",
        "description": "The federation's intelligence as this node can read it, and this "
                       "node's own contributions.",
        "versions": [MEDIA_TAXII],
        "max_content_length": MAX_CONTENT_LENGTH,
    })


@_guarded(Scope.READ)
async def get_status(request: web.Request) -> web.Response:
    """GET /taxii2/entraide/status/{id}/: the status of an earlier post."""
    index = await _index(request, sync=False)
    status = await index.status(request.match_info["id"])
    if status is None:
        raise TaxiiError(404, "Not Found", N_("no such status (statuses are kept 7 days)"))
    return localized_status(status, request_lang(request))


# --- collections (§5) -----------------------------------------------------------------


@_guarded(Scope.READ)
async def get_collections(request: web.Request) -> web.Response:
    """GET /taxii2/entraide/collections/: both collections."""
    can_write = _can_write(request)
    return taxii_response({"collections": [c.resource(can_write) for c in COLLECTIONS]})


@_guarded(Scope.READ)
async def get_collection(request: web.Request) -> web.Response:
    """GET /taxii2/entraide/collections/{name}/: one collection (by id or alias)."""
    return taxii_response(_collection(request).resource(_can_write(request)))


def _can_write(request: web.Request) -> bool:
    return request[_TOKEN].scope.allows(Scope.WRITE)


def _envelope(page: IndexPage, *, objects: bool = True) -> tuple[bytes, dict[str, str]]:
    parts = []
    if page.more:
        parts.append(f'"more":true,"next":"{next_token(page.rows[-1].row)}"')
    if page.rows and objects:
        parts.append('"objects":[' + ",".join(r.json for r in page.rows) + "]")
    headers = (date_headers(page.rows[0].added_us, page.rows[-1].added_us)
               if page.rows else {})
    return ("{" + ",".join(parts) + "}").encode("utf-8"), headers


async def _page(request: web.Request, filters: Filters, *,
                ids: tuple[str, ...] | None = None,
                versions: VersionFilter | None = None) -> IndexPage:
    collection = _collection(request)
    index = await _index(request)
    return await index.page(
        collection.contents, after_row=filters.after_row,
        added_after_us=filters.added_after_us, limit=filters.limit,
        ids=filters.ids if ids is None else ids, types=filters.types,
        versions=versions or filters.versions, spec_versions=filters.spec_versions)


@_guarded(Scope.READ)
async def get_objects(request: web.Request) -> web.Response:
    """GET .../objects/: objects, oldest added first, filtered and paged (§5.4)."""
    filters = parse_filters(request, _OBJECT_FILTERS)
    body, headers = _envelope(await _page(request, filters))
    return taxii_response(body, headers=headers)


@_guarded(Scope.READ)
async def get_manifest(request: web.Request) -> web.Response:
    """GET .../manifest/: one record per object version (§5.3)."""
    filters = parse_filters(request, _OBJECT_FILTERS)
    page = await _page(request, filters)
    _, headers = _envelope(page, objects=False)
    doc: dict[str, Any] = {}
    if page.more:
        doc.update(more=True, next=next_token(page.rows[-1].row))
    if page.rows:
        doc["objects"] = [{"id": r.stix_id, "date_added": format_us(r.added_us, taxii=True),
                           "version": r.version, "media_type": MEDIA_STIX} for r in page.rows]
    return taxii_response(doc, headers=headers)


async def _one_object(request: web.Request) -> str:
    collection = _collection(request)
    object_id = request.match_info["id"]
    index = await _index(request)
    if not await index.contains(collection.contents, object_id):
        raise TaxiiError(404, "Not Found", N_("no object {id} in this collection").format(
            id=object_id[:100]))
    return object_id


@_guarded(Scope.READ)
async def get_object(request: web.Request) -> web.Response:
    """GET .../objects/{id}/: an object's versions (default: the latest) (§5.6)."""
    object_id = await _one_object(request)
    filters = parse_filters(request, frozenset({"version", "spec_version"}))
    body, headers = _envelope(await _page(request, filters, ids=(object_id,)))
    return taxii_response(body, headers=headers)


@_guarded(Scope.READ)
async def get_versions(request: web.Request) -> web.Response:
    """GET .../objects/{id}/versions/: every version, in the order added (§5.8)."""
    object_id = await _one_object(request)
    filters = parse_filters(request, frozenset({"spec_version"}))
    page = await _page(request, filters, ids=(object_id,), versions=VersionFilter(all=True))
    doc: dict[str, Any] = {}
    if page.more:
        doc.update(more=True, next=next_token(page.rows[-1].row))
    if page.rows:
        doc["versions"] = [r.version for r in page.rows]
    headers = date_headers(page.rows[0].added_us, page.rows[-1].added_us) if page.rows else {}
    return taxii_response(doc, headers=headers)


@_guarded(Scope.WRITE)
async def post_objects(request: web.Request) -> web.Response:
    """POST .../objects/: add an envelope's objects; answers a status resource (§5.5)."""
    collection = _collection(request)
    if not collection.writable:
        raise TaxiiError(403, "Forbidden", N_(
            "the {alias} collection is read-only; post to the local collection").format(
            alias=collection.alias))
    check_content_type(request)
    data = await _read_body(request)
    objects = await asyncio.to_thread(parse_envelope, data)
    node = _node(request)
    index = await _index(request, sync=False)
    state = request.app[_STATE]
    judge = request.config_dict.get(JUDGE, state.judge)
    result = await add_objects(node, index, objects, state.post_lock, node.clock, judge)
    document = result.document()
    await index.save_status(result.id, document)
    return localized_status(document, request_lang(request), 202)


def localized_status(document: dict[str, Any], lang: str, status: int = 200
                     ) -> web.Response:
    """A status resource with each success's and failure's ``message`` in ``lang``.

    Statuses are made and kept in English (agent/taxii/post.py); they are translated
    where shown, by the reader's ``Accept-Language``, as every error message is."""
    shown = dict(document)
    for key in ("successes", "failures"):
        details = document.get(key)
        if isinstance(details, list):
            shown[key] = [{**d, "message": localize(d["message"], lang)}
                          if isinstance(d, dict) and isinstance(d.get("message"), str) else d
                          for d in details]
    return taxii_response(shown, status=status, headers={"Content-Language": lang})


_TOO_LARGE = N_("the body is over max_content_length ({limit} bytes)")


async def _read_body(request: web.Request) -> bytes:
    declared = request.content_length
    if declared is not None and declared > MAX_CONTENT_LENGTH:
        raise TaxiiError(413, "Request Entity Too Large", _TOO_LARGE.format(
            limit=MAX_CONTENT_LENGTH))
    data = bytearray()
    while chunk := await request.content.readany():
        data += chunk
        if len(data) > MAX_CONTENT_LENGTH:
            raise TaxiiError(413, "Request Entity Too Large", _TOO_LARGE.format(
                limit=MAX_CONTENT_LENGTH))
    return bytes(data)


# --- the sub-application --------------------------------------------------------------

_OBJECTS = f"{API_ROOT}collections/{{name}}/objects/"
_AUTH = ("Authenticate with an Entraide API token as 'Bearer <token>' or with HTTP Basic "
         "(the token as password). Send 'Accept: application/taxii+json;version=2.1'.")
_FILTERS = (" Filters: added_after, limit, next, match[id], match[type], match[version], "
            "match[spec_version].")
_TAXII_ERRORS = (400, 404, 406)


def _op(method: str, path: str, handler: Callable[[web.Request], Awaitable[web.Response]],
        operation_id: str, summary: str, scope: Scope, *, status: int = 200,
        errors: tuple[int, ...] = _TAXII_ERRORS, extra: str = "") -> Operation:
    return Operation(method, path, handler, operation_id, summary, scope, "taxii",
                     status=status, media_type=MEDIA_TAXII, errors=errors,
                     description=_AUTH + extra + " Errors are TAXII error messages.")


TAXII_ROUTES: tuple[Operation, ...] = (
    _op("GET", f"{TAXII_PREFIX}/", discovery, "taxiiDiscovery", "TAXII 2.1 discovery",
        Scope.READ, errors=(406,)),
    _op("GET", API_ROOT, api_root, "taxiiApiRoot", "TAXII 2.1 API root", Scope.READ,
        errors=(406,)),
    _op("GET", f"{API_ROOT}status/{{id}}/", get_status, "taxiiStatus",
        "Status of an earlier TAXII post", Scope.READ, errors=(404, 406)),
    _op("GET", f"{API_ROOT}collections/", get_collections, "taxiiCollections",
        "The TAXII collections", Scope.READ, errors=(406,)),
    _op("GET", f"{API_ROOT}collections/{{name}}/", get_collection, "taxiiCollection",
        "One TAXII collection (by id or alias)", Scope.READ, errors=(404, 406)),
    _op("GET", f"{API_ROOT}collections/{{name}}/manifest/", get_manifest,
        "taxiiManifest", "Manifest of a collection's object versions", Scope.READ,
        extra=_FILTERS),
    _op("GET", _OBJECTS, get_objects, "taxiiGetObjects", "Objects of a collection, "
        "oldest added first", Scope.READ, extra=_FILTERS),
    _op("POST", _OBJECTS, post_objects, "taxiiAddObjects", "Add a TAXII envelope of STIX "
        "objects to the local collection", Scope.WRITE, status=202,
        errors=(400, 403, 404, 406, 413, 415, 422),
        extra=" The body is a TAXII envelope ({\"objects\": [...]}) as "
              "application/taxii+json;version=2.1; the answer is a status resource."),
    _op("GET", f"{_OBJECTS}{{id}}/", get_object, "taxiiGetObject",
        "One object (latest version unless match[version] says otherwise)", Scope.READ),
    _op("GET", f"{_OBJECTS}{{id}}/versions/", get_versions, "taxiiObjectVersions",
        "The versions of one object", Scope.READ),
)
"""Every TAXII route, with its full path (agent/api/app.py documents them all)."""


@web.middleware
async def _taxii_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every failure becomes a TAXII error message with the TAXII media type."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except TaxiiError as exc:
        return error_response(request, exc)
    except AuthError as exc:
        return error_response(request, auth_error(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return error_response(request, TaxiiError(exc.status, exc.reason, exc.reason, headers))
    except StorageFullError as exc:  # a client may retry in a loop: rate-limited
        failures = request.config_dict.get(FAILURE_LOG)
        if failures is not None:
            failures.error("storage_full", "TAXII %s %s failed: %s", request.method,
                           request.path, exc)
        return error_response(request, _storage_full(request, exc))
    except EntraideError as exc:
        log.error("TAXII %s %s failed: %s", request.method, request.path, exc)
        return error_response(request, TaxiiError(500, "Internal Server Error", str(exc)))
    except Exception:
        log.exception("unexpected error on TAXII %s %s", request.method, request.path)
        return error_response(request, TaxiiError(500, "Internal Server Error",
                                                  N_("internal error (see the node's log)")))


_PARTLY_STORED = N_("the disk holding the ledger filled up during this post: {created} of "
                    "its objects were stored, the rest were not; free space and post the "
                    "envelope again (those stored are then reported as already in the "
                    "collection)")


def _storage_full(request: web.Request, exc: StorageFullError) -> TaxiiError:
    """507 ``storage_full`` as the REST API answers it, in the reader's language
    (``Accept-Language``), saying how much of a post was stored before the disk filled."""
    lang = request_lang(request)
    created = exc.created if isinstance(exc, DiskFullDuringPost) else 0
    message = (_PARTLY_STORED.format(created=created) if created
               else StorageFullError.MESSAGE)
    return TaxiiError(507, "Insufficient Storage", localize(message, lang),
                      {"Content-Language": lang}, code="storage_full")


def taxii_app() -> web.Application:
    """The TAXII sub-application; mount it at :data:`TAXII_PREFIX` on the local API app
    (it finds the node under the parent's ``NODE`` key)."""
    app = web.Application(middlewares=[_taxii_errors])
    app[_STATE] = _State()
    for op in TAXII_ROUTES:
        app.router.add_route(op.method, op.path.removeprefix(TAXII_PREFIX), op.handler,
                             name=op.operation_id)
    app.on_cleanup.append(_close)
    return app


async def _count_refused(index: TaxiiIndex) -> None:
    """Keep ``index.refused_rows`` current for /metrics: a count scans the index, so
    it runs on this slow timer (and only when the index changed), never at scrape time."""
    while True:
        try:
            await index.count_refused()
        except StorageError as exc:  # closed meanwhile, or a database error: next time
            log.debug("TAXII refused rows not counted: %s", exc)
        await asyncio.sleep(REFUSED_COUNT_S)


async def _close(app: web.Application) -> None:
    state = app[_STATE]
    if state.counting is not None:
        state.counting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await state.counting
        state.counting = None
    if state.registry is not None:
        state.registry.remove_collector(state.families)
        state.registry = None
    if state.index is not None:
        await state.index.close()
        state.index = None
