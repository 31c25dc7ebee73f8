"""The TAXII 2.1 server on the local API listener (``/taxii2/``): discovery, the local
and federation collections, paging and filters, posted envelopes judged object by
object (large ones also in the TAXII judge process), and TAXII's own errors."""

from typing import TYPE_CHECKING

from agent.reexport import lazy_exports

if TYPE_CHECKING:
    from agent.taxii.app import JUDGE, TAXII_PREFIX, TAXII_ROUTES, TaxiiCollection, taxii_app
    from agent.taxii.post import Judge, PostResult, add_objects, parse_envelope

__all__ = [
    "JUDGE",
    "TAXII_PREFIX",
    "TAXII_ROUTES",
    "Judge",
    "PostResult",
    "TaxiiCollection",
    "add_objects",
    "parse_envelope",
    "taxii_app",
]

__getattr__ = lazy_exports(__name__, __file__)
