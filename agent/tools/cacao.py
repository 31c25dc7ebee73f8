"""OASIS CACAO 2.0 playbooks checked against the OASIS JSON schemas.

The schemas are vendored in ``cacao_schemas/`` (source and licence in its README).
They declare draft-07 but use ``unevaluatedProperties``, which draft-07 ignores, so
every file is loaded as draft 2020-12: a property no schema allows is refused, as the
CACAO specification intends. References between the files resolve from the vendored
copies only (the registry holds them all; nothing is fetched).

A playbook arrives as JSON text (:func:`parse_playbook`) bounded by
:data:`MAX_PLAYBOOK_BYTES`, refused if it repeats a key, holds a non-finite number or
nests deeper than :data:`MAX_DEPTH`.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from agent.errors import InvalidRuleError

__all__ = ["MAX_DEPTH", "MAX_PLAYBOOK_BYTES", "check_playbook", "parse_playbook"]

MAX_PLAYBOOK_BYTES = 192 * 1024
"""The largest playbook text checked (the payload's cap, MAX_PLAYBOOK_JSON_BYTES)."""
MAX_DEPTH = 64
_SCHEMAS = Path(__file__).with_name("cacao_schemas") / "schemas"


@functools.cache
def _validator() -> Any:
    from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
    from referencing import Registry
    from referencing.jsonschema import DRAFT202012

    resources = []
    for path in sorted(_SCHEMAS.rglob("*.json")):
        contents = json.loads(path.read_text(encoding="utf-8"))
        resources.append((contents["$id"], DRAFT202012.create_resource(contents)))
    registry: Registry[Any] = Registry().with_resources(resources)
    main = json.loads((_SCHEMAS / "playbook.json").read_text(encoding="utf-8"))
    return Draft202012Validator(main, registry=registry)


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("a key appears twice in one JSON object")
    return result


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _depth(obj: object) -> int:
    deepest, stack = 0, [(obj, 0)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return deepest


def parse_playbook(text: str) -> dict[str, Any]:
    """The playbook object of JSON ``text``, checked against the CACAO 2.0 schema.

    Raises:
        InvalidRuleError: over :data:`MAX_PLAYBOOK_BYTES`, not JSON, not an object,
            too deep, or refused by the schema (its first error, with the JSON path).
    """
    if not isinstance(text, str):
        raise InvalidRuleError("cacao", None, "a playbook is JSON text")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidRuleError("cacao", None, "the playbook is not valid UTF-8") from None
    if size > MAX_PLAYBOOK_BYTES:
        raise InvalidRuleError("cacao", None,
                               f"the playbook is {size} bytes, over {MAX_PLAYBOOK_BYTES}")
    try:
        obj = json.loads(text, object_pairs_hook=_pairs, parse_constant=_constant)
    except RecursionError:
        raise InvalidRuleError("cacao", None, f"nested deeper than {MAX_DEPTH}") from None
    except json.JSONDecodeError as exc:
        raise InvalidRuleError("cacao", exc.lineno, f"not JSON: {exc.msg}") from None
    except ValueError as exc:
        raise InvalidRuleError("cacao", None, f"not JSON: {exc}") from None
    check_playbook(obj)
    assert isinstance(obj, dict)  # check_playbook refuses anything else
    return obj


def check_playbook(obj: object) -> None:
    """Check a parsed playbook against the CACAO 2.0 schema (draft 2020-12).

    Raises:
        InvalidRuleError: not an object, too deep, or the schema's first error.
    """
    if not isinstance(obj, dict):
        raise InvalidRuleError("cacao", None, "a playbook is a JSON object")
    if _depth(obj) > MAX_DEPTH:
        raise InvalidRuleError("cacao", None, f"nested deeper than {MAX_DEPTH}")
    errors = sorted(_validator().iter_errors(obj), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        path = "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}"
                       for p in first.absolute_path) or "(top level)"
        message = first.message if len(first.message) <= 500 else first.message[:500] + "..."
        raise InvalidRuleError("cacao", None, f"{path}: {message}")
