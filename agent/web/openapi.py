"""One route table for the local API, and the OpenAPI 3.1 document built from it.

``agent/api/app.py`` registers its aiohttp routes *from* a tuple of :class:`Operation`,
and :func:`openapi_document` describes the same tuple with the JSON schemas of the
same pydantic models that validate requests, so the document cannot drift from the
routes: a route exists in the app if and only if it is in the document (a test
checks every registered route against it).

Invariants:
- Every operation has a unique ``operation_id`` and a unique (method, path).
- Path templates use aiohttp's syntax (``{value:.+}``); the document shows the
  OpenAPI form (``{value}``) and lists every path parameter.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from agent.config.tokens import Scope

__all__ = ["Operation", "openapi_document", "openapi_path"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::[^}]*)?\}")
_REASONS = {
    400: "Bad request: malformed JSON or a bad cursor",
    401: "No bearer token, or an unknown one",
    403: "The token's scope is too low, or the action is not allowed",
    404: "Not found (or not readable by this node)",
    409: "Conflicts with the current state",
    413: "Body over 1 MiB, or a batch over 1,000 items",
    422: "Well-formed JSON that is not valid input (fields, values, TLP, audience)",
    503: "Temporarily unavailable (too many streams, shutting down)",
    507: "The disk holding the ledger is full: nothing was stored (storage_full)",
}


@dataclass(frozen=True)
class Operation:
    """One route of the API: what aiohttp serves and what the document says.

    Attributes:
        scope: the token scope needed, None for an open route.
        body: request body models (several: any one of them).
        response: the success body models (several: any one of them); none for a
            body that is not JSON (``media_type``).
        query: the query-string model.
        errors: statuses this route may answer besides the standard auth ones.
    """

    method: str
    path: str
    handler: Handler = field(repr=False)
    operation_id: str
    summary: str
    scope: Scope | None
    tag: str
    status: int = 200
    response: tuple[type[BaseModel], ...] = ()
    body: tuple[type[BaseModel], ...] = ()
    body_required: bool = True
    query: type[BaseModel] | None = None
    media_type: str = "application/json"
    errors: tuple[int, ...] = ()
    description: str = ""
    headers: tuple[tuple[str, str], ...] = ()


def openapi_path(path: str) -> str:
    """aiohttp path template → OpenAPI template (``{value:.+}`` → ``{value}``)."""
    return _PARAM.sub(lambda m: "{" + m.group(1) + "}", path)


def _path_params(path: str) -> list[str]:
    return [m.group(1) for m in _PARAM.finditer(path)]


def openapi_document(operations: Sequence[Operation], *, title: str, version: str,
                     error_model: type[BaseModel], description: str = "") -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``operations``; ``error_model`` is the one error
    shape every route shares.

    Raises:
        ValueError: two operations share an id or a (method, path).
    """
    ids = [op.operation_id for op in operations]
    if len(set(ids)) != len(ids):
        raise ValueError("operation ids must be unique")
    keys = [(op.method, openapi_path(op.path)) for op in operations]
    if len(set(keys)) != len(keys):
        raise ValueError("each (method, path) must be unique")

    wanted: list[tuple[type[BaseModel], JsonSchemaMode]] = [(error_model, "serialization")]
    for op in operations:
        wanted += [(m, "validation") for m in op.body]
        wanted += [(m, "serialization") for m in op.response]
        if op.query is not None:
            wanted.append((op.query, "validation"))
    unique = list(dict.fromkeys(wanted))
    refs, schema = models_json_schema(unique, ref_template="#/components/schemas/{model}")

    def ref(model: type[BaseModel], mode: JsonSchemaMode) -> dict[str, Any]:
        return dict(refs[(model, mode)])

    defs: dict[str, Any] = schema.get("$defs", {})

    def properties(model: type[BaseModel]) -> dict[str, Any]:
        name = ref(model, "validation")["$ref"].rsplit("/", 1)[-1]
        props: dict[str, Any] = defs[name].get("properties", {})
        return props

    error_ref = ref(error_model, "serialization")
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        item: dict[str, Any] = {
            "operationId": op.operation_id,
            "summary": op.summary,
            "tags": [op.tag],
            "x-scope": None if op.scope is None else str(op.scope),
        }
        if op.description:
            item["description"] = op.description
        params: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _path_params(op.path)
        ]
        if op.query is not None:
            props = properties(op.query)
            for name, info in op.query.model_fields.items():
                prop = dict(props.get(name, {}))
                prop.pop("title", None)
                params.append({
                    "name": name, "in": "query", "required": info.is_required(),
                    "schema": prop,
                    **({"description": info.description} if info.description else {}),
                })
        for header, text in op.headers:
            params.append({"name": header, "in": "header", "required": False,
                           "description": text, "schema": {"type": "string"}})
        if params:
            item["parameters"] = params
        if op.body:
            body_schema: dict[str, Any] = (
                ref(op.body[0], "validation") if len(op.body) == 1
                else {"oneOf": [ref(m, "validation") for m in op.body]})
            item["requestBody"] = {"required": op.body_required,
                                   "content": {"application/json": {"schema": body_schema}}}
        ok_content: dict[str, Any]
        if op.response:
            ok_schema: dict[str, Any] = (
                ref(op.response[0], "serialization") if len(op.response) == 1
                else {"oneOf": [ref(m, "serialization") for m in op.response]})
            ok_content = {op.media_type: {"schema": ok_schema}}
        else:
            ok_content = {op.media_type: {"schema": {"type": "string"}}}
        responses: dict[str, Any] = {str(op.status): {"description": op.summary,
                                                      "content": ok_content}}
        statuses = set(op.errors)
        if op.method != "GET":
            statuses.add(507)  # any write may meet a full disk (agent/storage/core.py)
        if op.scope is not None:
            statuses |= {401, 403}
            item["security"] = [{"bearer": []}]
        else:
            item["security"] = []
        for status in sorted(statuses):
            responses[str(status)] = {
                "description": _REASONS.get(status, "Error"),
                "content": {"application/json": {"schema": error_ref}},
            }
        item["responses"] = responses
        paths.setdefault(openapi_path(op.path), {})[op.method.lower()] = item
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": description},
        "paths": paths,
        "components": {
            "schemas": defs,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "A token from 'entraide token create --scope "
                                          "read|write|admin'. Scopes: read < write < admin."},
            },
        },
    }
