"""Detection rules checked by their real engines: YARA, Sigma, Suricata and Snort.

One call per language: :func:`check_rule` takes a rule's text and answers None (the
engine accepts it) or raises :class:`~agent.errors.InvalidRuleError` with the
engine's own message (line and reason). Nothing here touches the network or the
file system: YARA compiles with includes disabled, Sigma YAML is read with the safe
loader and refused if it uses anchors or aliases, and every text is bounded
(:data:`MAX_RULE_BYTES`, the payload's own cap) before an engine sees it.

The IDS languages (Suricata, Snort) are parsed by suricataparser, which is lenient,
so each line is also held to the rule grammar's shape (action, six header fields,
options ending in ``;``, a numeric ``sid`` unique in the text), and rules that would
silence other people's detections on a shared sensor are refused: the ``pass`` action,
the ``bypass`` keyword, and ``drop``/``reject`` rules that match on hash transforms
(``to_md5``, ``to_sha1``, ``to_sha256``: a blocking rule whose match a reader cannot
see). The engines are imported on first use, so a process that never checks a rule
never loads them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence

from agent.errors import InvalidRuleError

__all__ = [
    "IDS_ACTIONS",
    "MAX_RULE_BYTES",
    "RULE_TYPES",
    "check_rule",
    "ids_rules",
    "ruleset",
]

MAX_RULE_BYTES = 128 * 1024
"""The largest rule text checked (protocol.payload_fields.MAX_RULE_TEXT_BYTES)."""

RULE_TYPES = ("yara", "sigma", "suricata", "snort")

IDS_ACTIONS = frozenset({"alert", "drop", "reject"})
"""Actions a shared IDS rule may take (``pass`` silences others' rules: refused)."""

_HASH_TRANSFORMS = frozenset({"to_md5", "to_sha1", "to_sha256"})
_SILENCING_OPTIONS = frozenset({"bypass"})
_DIRECTIONS = frozenset({"->", "<>", "<-", "=>"})


def check_rule(rule_type: str, text: str) -> None:
    """Check ``text`` with the engine of ``rule_type``.

    Raises:
        InvalidRuleError: an unknown type, a text over :data:`MAX_RULE_BYTES` or not
            text, or a rule the engine refuses (its message, with the line).
    """
    checker = _CHECKERS.get(rule_type)
    if checker is None:
        raise InvalidRuleError(rule_type, None, f"unknown rule type {rule_type!r}; "
                               f"one of {', '.join(RULE_TYPES)}")
    if not isinstance(text, str) or not text.strip():
        raise InvalidRuleError(rule_type, None, "the rule text is empty")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidRuleError(rule_type, None, "the rule text is not valid UTF-8") from None
    if size > MAX_RULE_BYTES:
        raise InvalidRuleError(rule_type, None,
                               f"the rule text is {size} bytes, over {MAX_RULE_BYTES}")
    checker(text)


# --- YARA (yara-x) -----------------------------------------------------------------

_YARA_LINE = re.compile(r"--> line:(\d+):(\d+)")


def _check_yara(text: str) -> None:
    import yara_x

    compiler = yara_x.Compiler(includes_enabled=False)
    try:
        compiler.add_source(text)
        compiler.build()
    except yara_x.CompileError as exc:
        message = str(exc)
        found = _YARA_LINE.search(message)
        first = message.splitlines()[0] if message else "does not compile"
        raise InvalidRuleError("yara", int(found.group(1)) if found else None,
                               first.removeprefix("error").lstrip(":[]E0123456789 ")
                               or first) from None


_YARA_RULE_NAME = re.compile(r"^\s*(?:(?:private|global)\s+)*rule\s+([A-Za-z_]\w*)",
                             re.MULTILINE)


def _yara_ruleset(texts: Sequence[str]) -> tuple[str, list[int]]:
    """One YARA source of ``texts``; rules whose identifiers clash with an earlier one
    (or that do not compile beside the others) are left out and their indexes given."""
    import yara_x

    kept: list[str] = []
    skipped: list[int] = []
    names: set[str] = set()
    for index, text in enumerate(texts):
        own = set(_YARA_RULE_NAME.findall(text))
        if own & names:
            skipped.append(index)
            continue
        names |= own
        kept.append(text)
    source = "\n\n".join(kept)
    try:
        compiler = yara_x.Compiler(includes_enabled=False)
        compiler.add_source(source)
        compiler.build()
    except yara_x.CompileError:
        # A clash the identifier scan missed: add one rule at a time (slow path).
        kept, skipped = [], []
        for index, text in enumerate(texts):
            trial = yara_x.Compiler(includes_enabled=False)
            try:
                trial.add_source("\n\n".join([*kept, text]))
                trial.build()
            except yara_x.CompileError:
                skipped.append(index)
                continue
            kept.append(text)
        source = "\n\n".join(kept)
    return source + ("\n" if source else ""), skipped


# --- Sigma (pySigma) ---------------------------------------------------------------


def _check_sigma(text: str) -> None:
    import yaml
    from sigma.collection import SigmaCollection
    from sigma.exceptions import SigmaError
    from sigma.rule import SigmaRule

    try:
        documents = 0
        for token in yaml.scan(text, Loader=yaml.SafeLoader):
            if isinstance(token, yaml.AliasToken | yaml.AnchorToken):
                raise InvalidRuleError("sigma", token.start_mark.line + 1,
                                       "YAML anchors and aliases are not allowed")
            if isinstance(token, yaml.DocumentStartToken):
                documents += 1
        if documents > 1:
            raise InvalidRuleError("sigma", None,
                                   "give one Sigma rule per submission (one YAML document)")
        document = yaml.safe_load(text)
        # pySigma takes any YAML value as a rule and fails with AttributeError on a
        # scalar or a list (found by the API fuzzer): only a mapping goes to it.
        if not isinstance(document, dict):
            raise InvalidRuleError("sigma", None, "a Sigma rule is a YAML mapping "
                                   "(title, logsource, detection, ...)")
        collection = SigmaCollection.from_dicts([document], collect_errors=True)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise InvalidRuleError("sigma", None if mark is None else mark.line + 1,
                               f"YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise InvalidRuleError("sigma", None, f"YAML: {exc}") from None
    except SigmaError as exc:
        raise InvalidRuleError("sigma", None, str(exc)) from None
    if collection.errors:
        raise InvalidRuleError("sigma", None, str(collection.errors[0]))
    if len(collection.rules) != 1:
        raise InvalidRuleError("sigma", None, "the text holds no Sigma rule")
    rule = collection.rules[0]
    if isinstance(rule, SigmaRule):
        for condition in rule.detection.parsed_condition:
            try:
                condition.parse()
            except SigmaError as exc:
                raise InvalidRuleError("sigma", _line_of(text, "condition:"), str(exc)) from None


def _line_of(text: str, needle: str) -> int | None:
    for number, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return number
    return None


# --- Suricata and Snort (suricataparser) -------------------------------------------


def ids_rules(text: str) -> Iterator[tuple[int, str]]:
    """(first line number, rule text) of every rule of an IDS rules text: blank and
    comment lines skipped, lines ending in ``\\`` joined with the next."""
    buffer, start = "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if not buffer:
            start = number
            if not line.strip() or line.lstrip().startswith("#"):
                continue
        if line.rstrip().endswith("\\"):
            buffer += line.strip()[:-1]
            continue
        yield start, buffer + line.strip()
        buffer = ""
    if buffer:
        yield start, buffer


def _check_ids(engine: str) -> Callable[[str], None]:
    def check(text: str) -> None:
        from suricataparser import parse_rule  # type: ignore[import-untyped]
        from suricataparser.exceptions import RuleParseException  # type: ignore[import-untyped]

        sids: set[str] = set()
        count = 0
        for number, line in ids_rules(text):
            def refuse(reason: str, number: int = number) -> InvalidRuleError:
                return InvalidRuleError(engine, number, reason)

            try:
                rule = parse_rule(line)
            except (RuleParseException, IndexError, ValueError):
                raise refuse("cannot parse the rule options (each ends with ';')") from None
            if rule is None:
                raise refuse("not a rule: expected 'action proto src sport -> dst dport "
                             "(options;)' with action alert, drop or reject")
            if not rule.enabled:
                raise refuse("a commented-out rule is not a rule")
            header = rule.header.split()
            if len(header) != 6 or header[3] not in _DIRECTIONS:
                raise refuse("the header must be 'proto src sport -> dst dport'")
            if rule.action == "pass":
                raise refuse("'pass' rules silence other detections on the sensor: refused")
            if rule.action not in IDS_ACTIONS:
                raise refuse(f"unknown action {rule.action!r}")
            names = {option.name for option in rule.options}
            if names & _SILENCING_OPTIONS:
                raise refuse("'bypass' stops inspection of the flow (silences other "
                             "detections): refused")
            if rule.action != "alert" and names & _HASH_TRANSFORMS:
                raise refuse(f"a {rule.action} rule matching on a hash transform "
                             f"({', '.join(sorted(names & _HASH_TRANSFORMS))}) blocks "
                             "traffic no reader can see: refused")
            sid = rule.sid
            if sid is None or not str(sid).isdigit():
                raise refuse("every rule needs a numeric 'sid'")
            if str(sid) in sids:
                raise refuse(f"sid {sid} appears twice")
            sids.add(str(sid))
            count += 1
        if not count:
            raise InvalidRuleError(engine, None, "the text holds no rule")

    return check


def _ids_ruleset(texts: Sequence[str]) -> tuple[str, list[int]]:
    """One rules file of ``texts``; a text reusing an earlier text's sid is left out."""
    from suricataparser import parse_rule

    kept: list[str] = []
    skipped: list[int] = []
    sids: set[str] = set()
    for index, text in enumerate(texts):
        lines = [line for _, line in ids_rules(text)]
        own = set()
        for line in lines:
            rule = parse_rule(line)
            if rule is not None and rule.sid is not None:
                own.add(str(rule.sid))
        if own & sids:
            skipped.append(index)
            continue
        sids |= own
        kept.extend(lines)
    return "".join(line + "\n" for line in kept), skipped


def _sigma_ruleset(texts: Sequence[str]) -> tuple[str, list[int]]:
    documents = []
    for text in texts:
        body = text.strip("\n")
        body = body[3:].lstrip("\n") if body.startswith("---") else body
        documents.append(body.removesuffix("...").rstrip("\n") + "\n")
    return "---\n".join(documents), []


def ruleset(rule_type: str, texts: Sequence[str]) -> tuple[str, list[int]]:
    """One ruleset file of valid rule ``texts`` of ``rule_type``, in the given order,
    that the engine loads as is, and the indexes of the texts left out (a YARA rule
    name or an IDS ``sid`` already used by an earlier text).

    Raises:
        InvalidRuleError: an unknown type.
    """
    builder = _RULESETS.get(rule_type)
    if builder is None:
        raise InvalidRuleError(rule_type, None, f"unknown rule type {rule_type!r}")
    return builder(texts)


_CHECKERS: dict[str, Callable[[str], None]] = {
    "yara": _check_yara,
    "sigma": _check_sigma,
    "suricata": _check_ids("suricata"),
    "snort": _check_ids("snort"),
}
_RULESETS: dict[str, Callable[[Sequence[str]], tuple[str, list[int]]]] = {
    "yara": _yara_ruleset,
    "sigma": _sigma_ruleset,
    "suricata": _ids_ruleset,
    "snort": _ids_ruleset,
}
