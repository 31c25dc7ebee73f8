"""The CLI tests read English unless a test asks otherwise: the language of a run comes
from --lang, $ENTRAIDE_LANG or the locale (agent/cli/lang.py), and a developer's
LANG=fr_CA.UTF-8 must not change what the assertions read."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _cli_in_english(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENTRAIDE_LANG", "en")
