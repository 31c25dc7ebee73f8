"""MISP events in and out: an event's attributes imported as observations, observations
exported as an event, and the API routes that do it."""

from typing import TYPE_CHECKING

from agent.reexport import lazy_exports

if TYPE_CHECKING:
    from agent.misp.convert import MISP_ROUTES, MispImport, export_misp, import_misp, parse_misp

__all__ = ["MISP_ROUTES", "MispImport", "export_misp", "import_misp", "parse_misp"]

__getattr__ = lazy_exports(__name__, __file__)
