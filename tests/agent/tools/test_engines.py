"""agent/tools: each engine accepts a real public rule and refuses a broken one with its
own message and line; the exported ruleset loads in the engine as is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yara_x
from sigma.collection import SigmaCollection
from suricataparser import parse_rules  # type: ignore[import-untyped]

from agent.errors import InvalidRuleError
from agent.tools import check_rule, parse_playbook, ruleset

DATA = Path(__file__).with_name("data")


def text(name: str) -> str:
    return (DATA / name).read_text(encoding="utf-8")


VALID = {"yara": "crash_override.yar", "sigma": "anydesk_silent_install.yml",
         "suricata": "et_coinminer.rules", "snort": "gpl_icmp_ping_nix.rules"}


@pytest.mark.parametrize("rule_type", sorted(VALID))
def test_engines_accept_real_public_rules(rule_type: str) -> None:
    check_rule(rule_type, text(VALID[rule_type]))


def test_engines_yara_refuses_real_rule_with_engine_message() -> None:
    with pytest.raises(InvalidRuleError) as caught:
        check_rule("yara", text("crash_override_invalid.yar"))
    assert caught.value.engine == "yara"
    assert caught.value.line == 9  # pe.exports("Crash") & pe.characteristics
    assert "wrong type" in caught.value.reason


def test_engines_yara_includes_disabled() -> None:
    with pytest.raises(InvalidRuleError, match="include"):
        check_rule("yara", 'include "/etc/passwd"\nrule a { condition: true }')


def test_engines_sigma_refuses_undefined_condition_with_line() -> None:
    broken = text(VALID["sigma"]).replace("condition: selection", "condition: selection and x")
    with pytest.raises(InvalidRuleError) as caught:
        check_rule("sigma", broken)
    assert caught.value.line == 23
    assert "'x' not defined" in caught.value.reason


def test_engines_sigma_refuses_yaml_errors_and_aliases() -> None:
    with pytest.raises(InvalidRuleError) as caught:
        check_rule("sigma", "title: [unclosed\n  x: y: z\n")
    assert caught.value.line is not None and "YAML" in caught.value.reason
    with pytest.raises(InvalidRuleError, match="aliases"):
        check_rule("sigma", "a: &x [1]\nb: *x\n")


@pytest.mark.parametrize("document", ["0", "just words", "- a\n- b\n", "---\n", "null"])
def test_engines_sigma_refuses_a_document_that_is_not_a_mapping(document: str) -> None:
    # Found by the API fuzzer: pySigma failed with AttributeError on a YAML scalar
    # ('int' object has no attribute 'get'), and POST /api/v1/rules answered 500.
    with pytest.raises(InvalidRuleError, match="YAML mapping"):
        check_rule("sigma", document)


@pytest.mark.parametrize("rule_type", ["suricata", "snort"])
def test_engines_ids_refuse_bad_and_silencing_rules(rule_type: str) -> None:
    good = text(VALID[rule_type]).strip()
    cases = {
        "not a rule": "hello world",
        "header": 'alert tcp any any (msg:"x"; sid:1;)',
        "sid": 'alert tcp any any -> any any (msg:"x";)',
        "'pass'": 'pass tcp any any -> any any (msg:"x"; sid:1;)',
        "bypass": 'alert tcp any any -> any any (msg:"x"; bypass; sid:1;)',
        "hash transform": 'drop http any any -> any any (http.uri; to_sha256; '
                          'content:"|00|"; sid:1;)',
        "twice": f"{good}\n{good}",
    }
    for reason, rule in cases.items():
        with pytest.raises(InvalidRuleError, match=reason) as caught:
            check_rule(rule_type, f"# comment\n{rule}")
        assert caught.value.line == 2 or reason == "twice"


def test_engines_bound_input() -> None:
    with pytest.raises(InvalidRuleError, match="over"):
        check_rule("yara", "rule a { condition: true }\n" + "/" * (129 * 1024))
    with pytest.raises(InvalidRuleError, match="unknown rule type"):
        check_rule("lua", "x")


def test_engines_playbook_valid_and_invalid() -> None:
    obj = parse_playbook(text("playbook.json"))
    assert obj["type"] == "playbook"
    bad = dict(obj, surprise=1)  # unevaluatedProperties: draft 2020-12 enforces it
    with pytest.raises(InvalidRuleError, match="surprise"):
        parse_playbook(json.dumps(bad))
    with pytest.raises(InvalidRuleError, match="required"):
        parse_playbook(json.dumps({k: v for k, v in obj.items() if k != "workflow"}))
    with pytest.raises(InvalidRuleError, match="twice"):
        parse_playbook('{"type": "playbook", "type": "playbook"}')


def test_engines_rulesets_load_in_the_engines() -> None:
    yara_text, skipped = ruleset("yara", [text(VALID["yara"]), text(VALID["yara"]),
                                          "rule other { condition: true }"])
    assert skipped == [1]  # the same rule name twice: the second is left out
    compiler = yara_x.Compiler(includes_enabled=False)
    compiler.add_source(yara_text)
    assert len(list(compiler.build())) == 2

    second = text(VALID["sigma"]).replace("114e7f1c", "214e7f1c")
    sigma_text, _ = ruleset("sigma", [text(VALID["sigma"]), "---\n" + second])
    collection = SigmaCollection.from_yaml(sigma_text)
    assert len(collection.rules) == 2

    ids_text, skipped = ruleset("suricata", [text(VALID["suricata"]), text(VALID["snort"]),
                                             text(VALID["snort"])])
    assert skipped == [2]
    lines = [line for line in ids_text.splitlines() if line]
    assert len(parse_rules(ids_text)) == len(lines) == 2
