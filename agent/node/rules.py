"""Shared tools on the node: submit, list, show, export and retract rules and playbooks.

A rule or playbook is checked by its real engine (agent/tools) *before* anything is
signed: a refused one raises :class:`~agent.errors.InvalidRuleError` and writes
nothing. What the node stores, own or received, is checked again as its row is built
(agent/storage/queries.py ``tool_check``), so a remote rule its engine refuses is kept
(the chain stays whole), shown with ``"valid": false`` and the engine's message, and
never exported. Supersede and export rules: agent/storage/rules.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from agent.errors import AlreadyRetractedError, NotOwnEntryError, UnknownEntryError
from agent.node.submission import Submission
from agent.storage.queries import Page
from agent.storage.rules import export_texts, get_tool, list_tools
from agent.tools.cacao import check_playbook
from agent.tools.engines import check_rule, ruleset
from protocol.entries import TLP, VerifiedEntry
from protocol.payloads import Playbook, Rule

if TYPE_CHECKING:
    from agent.node.node import Node

__all__ = ["export_ruleset", "list_of", "retract_tool", "show", "submit_playbook",
           "submit_rule"]


async def submit_rule(node: Node, rule: Rule, tlp: TLP,
                      audience: tuple[str, ...] | None) -> VerifiedEntry:
    """Check ``rule`` with its engine, then sign and store it.

    Raises:
        InvalidRuleError: the engine refuses it (nothing written).
        UnknownAudienceError: a bad audience.
    """
    check_rule(rule.rule_type.value, rule.text)
    (entry,) = await node.submit([Submission(rule, tlp, audience)])
    return entry


async def submit_playbook(node: Node, obj: Mapping[str, Any], tlp: TLP,
                          audience: tuple[str, ...] | None,
                          supersedes: str | None = None) -> VerifiedEntry:
    """Check a CACAO playbook against its schema, then sign and store it.

    Raises:
        InvalidRuleError: the schema refuses it (nothing written).
        PayloadError: not a playbook object, or too large.
        UnknownAudienceError: a bad audience.
    """
    check_playbook(dict(obj))
    payload = Playbook.from_object(obj, supersedes)
    (entry,) = await node.submit([Submission(payload, tlp, audience)])
    return entry


def _named(node: Node, item: dict[str, Any]) -> dict[str, Any]:
    item["origin_name"] = node.name_of_text(item["origin"])
    return item


async def list_of(node: Node, kind: str, **filters: Any) -> Page:
    """A page of rules or playbooks (see agent.storage.rules.list_tools), with names."""
    page = await list_tools(node.ledger, kind, **filters)
    return Page([_named(node, item) for item in page.items], page.next)


async def show(node: Node, kind: str, entry_id: str) -> dict[str, Any]:
    """One rule or playbook with ``origin_name`` and ``audience`` (names).

    Raises:
        UnknownEntryError: no such rule (or playbook) readable here.
    """
    found = await get_tool(node.ledger, kind, entry_id.lower() if isinstance(entry_id, str)
                           else "")
    if found is None:
        raise UnknownEntryError(f"no {kind} {str(entry_id)[:64]}")
    entry = await node.ledger.get_entry(found["id"])
    found["audience"] = None if entry is None else node.audience_names(node.audience_of(entry))
    return _named(node, found)


async def export_ruleset(node: Node, rule_type: str) -> tuple[str, int]:
    """The ruleset file of every valid, readable, unretracted, current rule of
    ``rule_type``, and how many rules were left out for a name or sid clash."""
    rules = await export_texts(node.ledger, rule_type)
    text, skipped = ruleset(rule_type, [r["text"] for r in rules])
    return text, len(skipped)


async def retract_tool(node: Node, kind: str, entry_id: str,
                       reason: str | None = None) -> VerifiedEntry:
    """Retract one of this node's own rules or playbooks.

    Raises:
        UnknownEntryError, NotOwnEntryError, AlreadyRetractedError.
    """
    found = await show(node, kind, entry_id)
    if found["origin"] != node.public_key.text:
        raise NotOwnEntryError("only the origin that wrote an entry can retract it")
    if found["retracted"]:
        raise AlreadyRetractedError(f"{found['id']} is already retracted")
    return await node.retract(found["id"], reason)
