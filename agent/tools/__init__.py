"""Shared tools checked by their real engines: detection rules (YARA via yara-x, Sigma
via pySigma, Suricata and Snort via suricataparser and our refusals of silencing rules)
and OASIS CACAO 2.0 playbooks (the vendored OASIS schemas, as draft 2020-12). Each
check takes text and returns, or raises :class:`~agent.errors.InvalidRuleError` with
the engine's message; :func:`ruleset` joins valid rules into one file the engine loads.
Low in the layers (above config, below storage, which checks what it receives); it
imports only the base modules, and the engines only when a check runs."""

from typing import TYPE_CHECKING

from agent.reexport import lazy_exports

if TYPE_CHECKING:
    from agent.tools.cacao import MAX_PLAYBOOK_BYTES, check_playbook, parse_playbook
    from agent.tools.engines import (
        IDS_ACTIONS,
        MAX_RULE_BYTES,
        RULE_TYPES,
        check_rule,
        ids_rules,
        ruleset,
    )

__all__ = [
    "IDS_ACTIONS",
    "MAX_PLAYBOOK_BYTES",
    "MAX_RULE_BYTES",
    "RULE_TYPES",
    "check_playbook",
    "check_rule",
    "ids_rules",
    "parse_playbook",
    "ruleset",
]

__getattr__ = lazy_exports(__name__, __file__)
