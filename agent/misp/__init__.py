"""MISP events in and out: an event's attributes imported as observations, observations
exported as events, and the API routes that do it."""

from typing import TYPE_CHECKING

from agent.reexport import lazy_exports

if TYPE_CHECKING:
    from agent.misp.convert import MISP_ROUTES, import_misp, import_misp_event
    from agent.misp.export import export_misp
    from agent.misp.parse import MispImport, parse_misp

__all__ = ["MISP_ROUTES", "MispImport", "export_misp", "import_misp", "import_misp_event",
           "parse_misp"]

__getattr__ = lazy_exports(__name__, __file__)
