"""A little fuzzing at every run of the suite: each target of tests/fuzz/targets.py fed
random bytes, mutated seeds and (for the JSON parsers) random JSON documents shaped like
their input, under Hypothesis. ``scripts/fuzz TARGET --seconds N`` runs the same targets
coverage-guided (atheris) for as long as wanted; findings become regression tests below.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.targets import (
    CORPUS,
    TARGETS,
    fuzz_handshake,
    fuzz_misp,
    fuzz_stix,
    fuzz_taxii,
    seeds,
)

FUZZ = settings(max_examples=300, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))


@st.composite
def mutated(draw: st.DrawFn, target: str) -> bytes:
    """A seed of ``target`` with a few bytes flipped, cut, repeated or inserted."""
    data = bytearray(draw(st.sampled_from(seeds(target))))
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["flip", "cut", "insert", "repeat", "truncate"]))
        if action == "flip" and where < len(data):
            data[where] ^= 1 << draw(st.integers(0, 7))
        elif action == "cut":
            del data[where:where + draw(st.integers(1, 8))]
        elif action == "insert":
            data[where:where] = draw(st.binary(min_size=1, max_size=8))
        elif action == "repeat":
            data[where:where] = data[where:where + 16] * draw(st.integers(1, 4))
        else:
            del data[where:]
    return bytes(data)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_fuzz_random_bytes(target: str) -> None:
    @FUZZ
    @given(st.binary(max_size=512))
    def run(data: bytes) -> None:
        TARGETS[target](data)

    run()


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_fuzz_mutated_seeds(target: str) -> None:
    @FUZZ
    @given(mutated(target))
    def run(data: bytes) -> None:
        TARGETS[target](data)

    run()


_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                    st.text(max_size=20))
_STIX_KEYS = st.sampled_from([
    "type", "id", "spec_version", "created", "modified", "pattern", "pattern_type",
    "valid_from", "valid_until", "created_by_ref", "object_marking_refs", "labels",
    "confidence", "revoked", "external_references", "source_ref", "target_ref",
    "relationship_type", "sighting_of_ref", "where_sighted_refs", "x_custom_ref", "name"])
_STIX_VALUES = st.one_of(_SCALAR, st.sampled_from([
    "indicator", "relationship", "sighting", "malware", "ipv4-addr", "2.1",
    "indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f", "2026-01-01T00:00:00.000Z",
    "[ipv4-addr:value = '203.0.113.7']", "stix", "marking-definition--x"]))


def _json_like(keys: st.SearchStrategy[str], values: st.SearchStrategy[Any]
               ) -> st.SearchStrategy[Any]:
    return st.recursive(values, lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=8)), max_leaves=30)


@FUZZ
@given(_json_like(_STIX_KEYS, _STIX_VALUES))
def test_fuzz_stix_documents(document: Any) -> None:
    fuzz_stix(json.dumps(document).encode())


@FUZZ
@given(st.lists(_json_like(_STIX_KEYS, _STIX_VALUES), min_size=1, max_size=4))
def test_fuzz_taxii_envelopes(objects: list[Any]) -> None:
    fuzz_taxii(json.dumps({"objects": objects}).encode())


_MISP_KEYS = st.sampled_from([
    "Event", "response", "Attribute", "Object", "Tag", "name", "type", "value", "category",
    "to_ids", "deleted", "comment", "uuid", "date", "info", "threat_level_id",
    "first_seen", "last_seen"])
_MISP_VALUES = st.one_of(_SCALAR, st.sampled_from([
    "ip-dst", "domain", "url", "md5", "sha256", "filename|sha256", "ip-dst|port",
    "email-src", "file", "tlp:amber", "tlp:red", "198.51.100.1", "example.com|1.2.3.4",
    "a|b|c", "1", "4"]))


@FUZZ
@given(_json_like(_MISP_KEYS, _MISP_VALUES))
def test_fuzz_misp_documents(document: Any) -> None:
    fuzz_misp(json.dumps(document).encode())


def test_fuzz_seeds_pass() -> None:
    for target, function in TARGETS.items():
        for data in seeds(target):
            function(data)
    fuzz_handshake(b"")


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_fuzz_corpus_replays(target: str) -> None:
    """Every input of the committed corpus (scripts/fuzz's findings kept) still passes."""
    for path in sorted((CORPUS / target).glob("*")):
        TARGETS[target](path.read_bytes())
