"""The web console at ``/console/`` on the local API listener: server-rendered pages in
French and English for analysts and admins (sign-in with a token, federation, trust
list, live feed, search, submit, mutual aid, rules, tokens, ledger verify). It reaches
the node only through the local API, with the signed-in token (backend.py)."""

from typing import TYPE_CHECKING

from agent.reexport import lazy_exports

if TYPE_CHECKING:
    from agent.console.app import CONSOLE_PREFIX, ROUTES, console_app, mount_console
    from agent.console.session import SessionStore

__all__ = ["CONSOLE_PREFIX", "ROUTES", "SessionStore", "console_app", "mount_console"]

__getattr__ = lazy_exports(__name__, __file__)
