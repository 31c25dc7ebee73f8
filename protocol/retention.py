"""Retention: when an entry's body expires, resolved once by its origin (docs/protocol.md §3).

The origin calls :func:`resolve` as it signs an entry and puts the result in the
signed header (``expires_ms``). Every holder then drops the body at that instant,
whatever its own policy, so the federation drops the same bodies at the same time and
a relay that holds a sealed body it cannot read still knows when to drop it.

The rule, for an entry of ``kind`` at ``tlp`` authored at ``ts``:

1. the policy's duration for ``(kind, tlp)`` (a kind without a rule of its own takes
   the policy's ``"*"`` rule; no rule at all: no limit);
2. if the payload carries a personal-data indicator (:data:`PERSONAL_DATA_TYPES` in
   protocol/indicators.py), the shorter of that and the policy's ``"personal-data"``
   duration for ``tlp``;
3. if the payload has a ``valid_until``, the earlier of ``ts + duration`` and it (a
   ``valid_until`` at or before ``ts`` expires the body 1 ms after ``ts``).

The result is 0 when no limit applies, else an instant strictly after ``ts``.

Invariants:
- Pure and deterministic: same inputs, same instant. No clock is read here.
- Durations are whole milliseconds between 1 hour and 100 years; a policy holds at
  most ``MAX_RULES`` kinds, each with at most one duration per TLP label.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from protocol.entries import MAX_TS, TLP
from protocol.errors import EncodingError
from protocol.indicators import PERSONAL_DATA_TYPES

__all__ = [
    "ANY_KIND",
    "DEFAULT_POLICY",
    "MAX_DURATION_MS",
    "MAX_RULES",
    "MIN_DURATION_MS",
    "PERSONAL_DATA",
    "RetentionPolicy",
    "format_duration",
    "parse_duration",
    "resolve",
]

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
YEAR_MS = 365 * DAY_MS
MIN_DURATION_MS = HOUR_MS
MAX_DURATION_MS = 100 * YEAR_MS
MAX_RULES = 32
ANY_KIND = "*"
"""The rule for kinds without one of their own."""
PERSONAL_DATA = "personal-data"
"""The rule for payloads that carry a personal-data indicator (the shorter one wins)."""

_UNITS = {"h": HOUR_MS, "d": DAY_MS, "w": 7 * DAY_MS, "y": YEAR_MS}
_DURATION = re.compile(r"([1-9][0-9]{0,5})([hdwy])", re.ASCII)
_KIND = re.compile(r"\*|[a-z][a-z0-9-]{0,31}", re.ASCII)


def parse_duration(text: str) -> int:
    """Milliseconds of a duration written ``<n>h``, ``<n>d``, ``<n>w`` or ``<n>y``
    (a year is 365 days), between 1 hour and 100 years.

    Raises:
        EncodingError: any other text, or a duration out of range.
    """
    match = _DURATION.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise EncodingError(f"a duration is a number and a unit h, d, w or y (180d, 3y), "
                            f"not {str(text)[:32]!r}")
    ms = int(match.group(1)) * _UNITS[match.group(2)]
    if not MIN_DURATION_MS <= ms <= MAX_DURATION_MS:
        raise EncodingError(f"a duration is between 1h and 100y, not {text}")
    return ms


def format_duration(ms: int) -> str:
    """The shortest text :func:`parse_duration` reads back as ``ms`` (whole hours)."""
    for unit in ("y", "w", "d", "h"):
        if ms % _UNITS[unit] == 0:
            return f"{ms // _UNITS[unit]}{unit}"
    raise ValueError("durations are whole hours")


@dataclass(frozen=True)
class RetentionPolicy:
    """Durations (ms) by kind, then by TLP. Kind ``"*"``: kinds without a rule;
    ``"personal-data"``: payloads with a personal-data indicator. A TLP missing from
    a kind's rule has no limit from that rule.

    Raises:
        EncodingError: (when built) over ``MAX_RULES`` kinds, a bad kind name or a
            duration out of range.
    """

    rules: Mapping[str, Mapping[TLP, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.rules) > MAX_RULES:
            raise EncodingError(f"at most {MAX_RULES} retention rules")
        frozen: dict[str, Mapping[TLP, int]] = {}
        for kind, by_tlp in self.rules.items():
            if not isinstance(kind, str) or _KIND.fullmatch(kind) is None:
                raise EncodingError(f"bad retention kind {str(kind)[:40]!r}")
            checked: dict[TLP, int] = {}
            for label, ms in by_tlp.items():
                tlp = TLP(label)
                if (isinstance(ms, bool) or not isinstance(ms, int)
                        or not MIN_DURATION_MS <= ms <= MAX_DURATION_MS):
                    raise EncodingError(f"retention {kind}.{tlp.value}: a duration "
                                        f"between 1h and 100y")
                checked[tlp] = ms
            frozen[kind] = checked
        object.__setattr__(self, "rules", frozen)  # a checked copy: callers' dicts are not kept

    def duration(self, kind: str, tlp: TLP, personal: bool) -> int | None:
        """The duration (ms) that applies, or None for no limit (steps 1 and 2)."""
        rule = self.rules.get(kind, self.rules.get(ANY_KIND, {}))
        ms = rule.get(tlp)
        if personal:
            extra = self.rules.get(PERSONAL_DATA, {}).get(tlp)
            if extra is not None and (ms is None or extra < ms):
                ms = extra
        return ms

    def merged(self, overrides: Mapping[str, Mapping[TLP, int]]) -> RetentionPolicy:
        """This policy with ``overrides``'s (kind, TLP) durations replacing its own."""
        rules = {kind: dict(by_tlp) for kind, by_tlp in self.rules.items()}
        for kind, by_tlp in overrides.items():
            rules.setdefault(kind, {}).update(by_tlp)
        return RetentionPolicy(rules)


def _each(ms: int) -> dict[TLP, int]:
    return {tlp: ms for tlp in TLP}


DEFAULT_POLICY = RetentionPolicy({
    "observation": {TLP.CLEAR: 3 * YEAR_MS, TLP.GREEN: 3 * YEAR_MS, TLP.AMBER: YEAR_MS,
                    TLP.AMBER_STRICT: YEAR_MS, TLP.RED: 180 * DAY_MS},
    "sighting": {TLP.CLEAR: YEAR_MS, TLP.GREEN: YEAR_MS, TLP.AMBER: YEAR_MS,
                 TLP.AMBER_STRICT: YEAR_MS, TLP.RED: 180 * DAY_MS},
    "alert": _each(2 * YEAR_MS),
    PERSONAL_DATA: {TLP.CLEAR: 180 * DAY_MS, TLP.GREEN: 180 * DAY_MS, TLP.AMBER: 180 * DAY_MS,
                    TLP.AMBER_STRICT: 90 * DAY_MS, TLP.RED: 90 * DAY_MS},
})
"""The defaults ``[retention]`` in entraide.toml overrides (docs/operations.md). Kinds
not listed (retractions, rules, playbooks, STIX objects, mutual aid) have no limit."""


def resolve(kind: str, tlp: TLP, indicator_type: str | None, valid_until_ms: int | None,
            ts: int, policy: RetentionPolicy = DEFAULT_POLICY) -> int:
    """``expires_ms`` for an entry of ``kind`` at ``tlp`` authored at ``ts`` (ms): 0 for
    no limit, else an instant after ``ts`` (the rule in this module's docstring).

    Args:
        indicator_type: the payload's indicator type (observations), else None.
        valid_until_ms: the payload's ``valid_until`` in ms since the epoch, or None.
    """
    tlp = TLP(tlp)
    personal = indicator_type is not None and indicator_type in PERSONAL_DATA_TYPES
    ms = policy.duration(kind, tlp, personal)
    candidates = [] if ms is None else [ts + ms]
    if valid_until_ms is not None:
        candidates.append(max(valid_until_ms, ts + 1))
    if not candidates:
        return 0
    return min(min(candidates), MAX_TS)
