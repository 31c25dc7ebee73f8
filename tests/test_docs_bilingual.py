"""Every doc that has a French version keeps the same shape in both languages.

For each ``X.md`` in the repository root or docs/ with an ``X.fr.md`` next to it, the two
must have the same headings per level (in the same order), the same tables with the same
number of rows, and the same code blocks, fenced or indented, line for line, apart from
``#`` comments (prose for a person, which is translated). Each failure names the first
difference with its line numbers in both files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The pairs that existed when this test was written: they must not disappear.
KNOWN = ("README", "docs/chaos", "docs/misp", "docs/privacy", "docs/security")
# Code blocks (numbered from 1 in each file) that are diagrams annotated in prose, not
# code: their annotations are translated, so only their number of lines must agree.
# protocol.md: the handshake's three messages, the control frames' bytes, the events.
DIAGRAMS = {"docs/protocol": frozenset({4, 6, 7})}

_HEADING = re.compile(r"^(#{1,6})\s+(.*)$")
_FENCE = re.compile(r"^( {0,3})(`{3,}|~{3,})")
_LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s")
_TRAILING_COMMENT = re.compile(r"\s+#(?:\s.*)?$")


@dataclass
class Shape:
    headings: list[tuple[int, str, int]] = field(default_factory=list)  # level, text, line
    tables: list[tuple[int, int]] = field(default_factory=list)  # rows, first line
    blocks: list[tuple[list[str], int]] = field(default_factory=list)  # lines, first line


def _code_line(line: str) -> str | None:
    """The line without its ``#`` comment; None for a line that is only a comment."""
    if line.lstrip().startswith("#"):
        return None
    return _TRAILING_COMMENT.sub("", line).rstrip()


def _code(lines: list[str]) -> list[str]:
    kept = (_code_line(line) for line in lines)
    return [line for line in kept if line is not None]


def shape(path: Path) -> Shape:
    """Headings, tables and code blocks of a Markdown file, outside code blocks."""
    out = Shape()
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    in_list = False
    previous_blank = True
    while i < len(lines):
        line = lines[i]
        fence = _FENCE.match(line)
        if fence:
            indent, marker = len(fence.group(1)), fence.group(2)
            start = i + 1
            body: list[str] = []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith(marker):
                body.append(lines[i][indent:] if lines[i][:indent].isspace() else lines[i])
                i += 1
            out.blocks.append((_code(body), start))
            i += 1
            previous_blank = False
            continue
        if line.startswith("    ") and previous_blank and not in_list:
            start = i + 1
            body = []
            while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
                body.append(lines[i][4:])
                i += 1
            while body and not body[-1].strip():
                body.pop()
            out.blocks.append((_code(body), start))
            previous_blank = True
            continue
        heading = _HEADING.match(line)
        if heading:
            out.headings.append((len(heading.group(1)), heading.group(2), i + 1))
            in_list = False
        elif line.lstrip().startswith("|"):
            if i > 0 and lines[i - 1].lstrip().startswith("|"):
                rows, first = out.tables[-1]
                out.tables[-1] = (rows + 1, first)
            else:
                out.tables.append((1, i + 1))
        elif _LIST_ITEM.match(line):
            in_list = True
        elif line.strip() and not line[0].isspace():
            in_list = False
        previous_blank = not line.strip()
        i += 1
    return out


def pairs() -> list[str]:
    found = []
    for folder in (ROOT, ROOT / "docs"):
        for french in sorted(folder.glob("*.fr.md")):
            english = french.with_name(french.name.removesuffix(".fr.md") + ".md")
            if english.exists():
                found.append(str(english.relative_to(ROOT)).removesuffix(".md"))
    return found


def differences(en_path: Path, fr_path: Path, diagrams: frozenset[int] = frozenset()) -> str | None:
    """The first way the French version's shape differs from the English, or None."""
    en, fr = shape(en_path), shape(fr_path)
    en_name, fr_name = en_path.name, fr_path.name
    for n, (a, b) in enumerate(zip(en.headings, fr.headings, strict=False), 1):
        if a[0] != b[0]:
            return (
                f"heading {n}: level {a[0]} in {en_name} line {a[2]} ({a[1]!r}), "
                f"level {b[0]} in {fr_name} line {b[2]} ({b[1]!r})"
            )
    if len(en.headings) != len(fr.headings):
        longer, name = (en, en_name) if len(en.headings) > len(fr.headings) else (fr, fr_name)
        extra = longer.headings[min(len(en.headings), len(fr.headings))]
        return (
            f"{len(en.headings)} headings in {en_name}, {len(fr.headings)} in {fr_name}; "
            f"the first unmatched is {name} line {extra[2]} ({extra[1]!r})"
        )
    for n, (a, b) in enumerate(zip(en.tables, fr.tables, strict=False), 1):
        if a[0] != b[0]:
            return (
                f"table {n}: {a[0]} rows in {en_name} (line {a[1]}), "
                f"{b[0]} rows in {fr_name} (line {b[1]})"
            )
    if len(en.tables) != len(fr.tables):
        return f"{len(en.tables)} tables in {en_name}, {len(fr.tables)} in {fr_name}"
    for n, ((a, a_line), (b, b_line)) in enumerate(zip(en.blocks, fr.blocks, strict=False), 1):
        if a == b or (n in diagrams and len(a) == len(b)):
            continue
        for k, (x, y) in enumerate(zip(a, b, strict=False)):
            if x != y and n not in diagrams:
                return (
                    f"code block {n} ({en_name} line {a_line}, {fr_name} line {b_line}), "
                    f"its code line {k + 1}: {x!r} != {y!r}"
                )
        return (
            f"code block {n} ({en_name} line {a_line}, {fr_name} line {b_line}): "
            f"{len(a)} code lines in {en_name}, {len(b)} in {fr_name}"
        )
    if len(en.blocks) != len(fr.blocks):
        return f"{len(en.blocks)} code blocks in {en_name}, {len(fr.blocks)} in {fr_name}"
    return None


def test_the_known_pairs_exist() -> None:
    assert set(KNOWN) <= set(pairs())


@pytest.mark.parametrize("stem", pairs())
def test_french_version_has_the_english_shape(stem: str) -> None:
    diagrams = DIAGRAMS.get(stem, frozenset())
    problem = differences(ROOT / f"{stem}.md", ROOT / f"{stem}.fr.md", diagrams)
    assert problem is None, f"{stem}.fr.md differs from {stem}.md: {problem}"


def test_a_drift_is_named(tmp_path: Path) -> None:
    en = tmp_path / "x.md"
    en.write_text("# T\n\n    run a   # prose\n\n## A\n\n| a |\n|---|\n| 1 |\n")
    fr = tmp_path / "x.fr.md"
    fr.write_text("# T\n\n    run a   # de la prose\n\n## A\n\n| a |\n|---|\n| 1 |\n")
    assert differences(en, fr) is None
    fr.write_text("# T\n\n    run a\n\n### A\n\n| a |\n|---|\n| 1 |\n")
    assert differences(en, fr) == (
        "heading 2: level 2 in x.md line 5 ('A'), level 3 in x.fr.md line 5 ('A')"
    )
    fr.write_text("# T\n\n    run a\n\n## A\n\n| a |\n|---|\n")
    assert differences(en, fr) == "table 1: 3 rows in x.md (line 7), 2 rows in x.fr.md (line 7)"
    fr.write_text("# T\n\n    run b\n\n## A\n\n| a |\n|---|\n| 1 |\n")
    assert differences(en, fr) == (
        "code block 1 (x.md line 3, x.fr.md line 3), its code line 1: 'run a' != 'run b'"
    )
    assert differences(en, fr, diagrams=frozenset({1})) is None
    fr.write_text("# T\n\n    run b\n    run c\n\n## A\n\n| a |\n|---|\n| 1 |\n")
    assert differences(en, fr, diagrams=frozenset({1})) == (
        "code block 1 (x.md line 3, x.fr.md line 3): 1 code lines in x.md, 2 in x.fr.md"
    )
