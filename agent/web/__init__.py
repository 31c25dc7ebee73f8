"""The HTTP plumbing every route family shares (the REST API, TAXII, MISP): the app's
keys and per-app state, the HTTP error type, bounded body reading, query parsing, JSON
responses, the node's Server header, and the route table's OpenAPI description."""

from typing import TYPE_CHECKING

from agent.reexport import lazy_exports

if TYPE_CHECKING:
    from agent.web.common import (
        MAX_BODY_BYTES,
        NODE,
        STATE,
        ApiError,
        ApiState,
        json_response,
        parse_query,
        server_header,
    )
    from agent.web.openapi import Operation, openapi_document

__all__ = [
    "MAX_BODY_BYTES",
    "NODE",
    "STATE",
    "ApiError",
    "ApiState",
    "Operation",
    "json_response",
    "openapi_document",
    "parse_query",
    "server_header",
]

__getattr__ = lazy_exports(__name__, __file__)
