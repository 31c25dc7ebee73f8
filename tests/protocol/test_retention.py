from __future__ import annotations

import pytest

from protocol.entries import TLP
from protocol.errors import EncodingError
from protocol.indicators import PERSONAL_DATA_TYPES
from protocol.retention import (
    DEFAULT_POLICY,
    RetentionPolicy,
    format_duration,
    parse_duration,
    resolve,
)

DAY = 86_400_000
TS = 1_790_000_000_000


@pytest.mark.parametrize(("kind", "tlp", "itype", "valid_until", "expected"), [
    # Fixed vectors of the default policy (docs/protocol.md §3, retention).
    ("observation", TLP.CLEAR, "ipv4-addr", None, TS + 3 * 365 * DAY),
    ("observation", TLP.AMBER, "domain-name", None, TS + 365 * DAY),
    ("observation", TLP.RED, "url", None, TS + 180 * DAY),
    ("observation", TLP.GREEN, "email-addr", None, TS + 180 * DAY),
    ("observation", TLP.RED, "email-addr", None, TS + 90 * DAY),
    ("observation", TLP.CLEAR, "ipv4-addr", TS + 10 * DAY, TS + 10 * DAY),
    ("observation", TLP.CLEAR, "ipv4-addr", TS + 4 * 365 * DAY, TS + 3 * 365 * DAY),
    ("observation", TLP.CLEAR, "ipv4-addr", TS - 5, TS + 1),
    ("sighting", TLP.GREEN, None, None, TS + 365 * DAY),
    ("retraction", TLP.GREEN, None, None, 0),
    ("rule", TLP.CLEAR, None, TS + DAY, TS + DAY),
])
def test_retention_resolve_default_vectors(kind: str, tlp: TLP, itype: str | None,
                                           valid_until: int | None, expected: int) -> None:
    assert resolve(kind, tlp, itype, valid_until, TS) == expected


def test_retention_personal_rule_only_shortens() -> None:
    policy = RetentionPolicy({"observation": {TLP.GREEN: 30 * DAY},
                              "personal-data": {TLP.GREEN: 60 * DAY}})
    assert resolve("observation", TLP.GREEN, "email-addr", None, TS, policy) == TS + 30 * DAY
    assert resolve("observation", TLP.AMBER, "email-addr", None, TS, policy) == 0
    star = RetentionPolicy({"*": {TLP.RED: 2 * DAY}})
    assert resolve("alert", TLP.RED, None, None, TS, star) == TS + 2 * DAY
    assert "email-addr" in PERSONAL_DATA_TYPES


def test_retention_merged_overrides_one_cell() -> None:
    policy = DEFAULT_POLICY.merged({"observation": {TLP.RED: 30 * DAY}})
    assert resolve("observation", TLP.RED, "url", None, TS, policy) == TS + 30 * DAY
    assert resolve("observation", TLP.AMBER, "url", None, TS, policy) == TS + 365 * DAY


@pytest.mark.parametrize(("text", "ms"), [("1h", 3_600_000), ("180d", 180 * DAY),
                                          ("2w", 14 * DAY), ("3y", 3 * 365 * DAY)])
def test_retention_durations_round_trip(text: str, ms: int) -> None:
    assert parse_duration(text) == ms and format_duration(ms) == text


@pytest.mark.parametrize("text", ["", "0d", "30m", "101y", "1.5y", "-1d", "1 d", "01d",
                                  "9999999d", "１d"])
def test_retention_bad_durations_refused(text: str) -> None:
    with pytest.raises(EncodingError):
        parse_duration(text)


def test_retention_policy_bounded() -> None:
    with pytest.raises(EncodingError):
        RetentionPolicy({"observation": {TLP.RED: 1}})
    with pytest.raises(EncodingError):
        RetentionPolicy({"Bad Kind": {TLP.RED: DAY}})
    with pytest.raises(EncodingError):
        RetentionPolicy({f"k{i}": {TLP.RED: DAY} for i in range(33)})
