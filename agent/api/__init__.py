"""The local REST API (127.0.0.1:8470): one route table (``ROUTES``, which also makes
the OpenAPI document), the request and answer models, the observation, admin and
stream handlers, and the batch worker's job (large submitted batches validated in a
helper process). TAXII and MISP routes join the table from their own packages."""

from typing import TYPE_CHECKING

from agent.reexport import lazy_exports

if TYPE_CHECKING:
    from agent.api.app import OPENAPI, ROUTES, ApiSettings, create_app, error_body

__all__ = ["OPENAPI", "ROUTES", "ApiSettings", "create_app", "error_body"]

__getattr__ = lazy_exports(__name__, __file__)
