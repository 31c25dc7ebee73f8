"""``entraide import FILE --refang`` and ``entraide submit --refang`` against a real node
on 127.0.0.1, with ESET's published (defanged) IOC lists (tests/data/ioc/README.md)."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest

from agent.cli.lang import set_lang
from agent.cli.main import main
from tests.agent._api_helpers import Api, running_api

ESET = Path(__file__).parents[2] / "data" / "ioc" / "eset"


@pytest.fixture(autouse=True)
def _english_by_default(monkeypatch: pytest.MonkeyPatch) -> Any:
    for name in ("ENTRAIDE_LANG", "LC_ALL", "LC_MESSAGES", "LANG"):
        monkeypatch.delenv(name, raising=False)
    yield
    set_lang("en")


def cli(api: Api, root: Path, *argv: str) -> list[str]:
    return [*argv, "--data-dir", str(root / "qc"), "--api", str(api.client.make_url("/")),
            "--token", api.tokens["write"]]


async def run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    status = await asyncio.to_thread(main, argv)
    out, err = capsys.readouterr()
    return status, out, err


def defanged(name: str) -> list[str]:
    text = (ESET / f"{name}.adoc").read_text(encoding="utf-8")
    return re.findall(r"(?:hxxps?://[^\s`|]+|[^\s`|]*\[\.\][^\s`|]*)", text)


async def test_cli_import_refang_eset_lists(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    values = [*defanged("asylum_ambuscade"), *defanged("keydnap")]
    assert len(values) == 90 + 13
    listing = tmp_path / "eset.txt"
    listing.write_text("\n".join(values) + "\n", encoding="utf-8")
    async with running_api(tmp_path) as api:
        status, out, err = await run(capsys, cli(api, tmp_path, "import", str(listing)))
        assert status == 1  # without --refang every defanged value is refused
        assert "0 shared, 98 refused, 5 repeated in the file (of 103)" in out
        status, out, err = await run(capsys, cli(api, tmp_path, "import", str(listing),
                                                 "--refang", "--json"))
        assert status == 0, err
        summary = json.loads(out)
        # 8 distinct keydnap spellings are 6 URLs once normalised (a trailing '/')
        assert (summary["shared"], summary["refused"], summary["repeated"]) == (96, 0, 7)
        assert summary["refanged"] == 98
        _, found = await api.call("GET", "/api/v1/indicators/ipv4-addr/5.39.222.150",
                                  scope="read")
        assert len(found["observations"]) == 1
        status, out, err = await run(capsys, ["--lang", "fr", *cli(
            api, tmp_path, "import", str(listing), "--refang")])
        assert status == 0, err
        assert "98 valeur(s) neutralisée(s) rétablie(s)" in out


async def test_cli_submit_refang_says_what_it_did(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    async with running_api(tmp_path) as api:
        status, out, err = await run(capsys, cli(api, tmp_path, "submit", "--type", "url",
                                                 "--value", "hxxps://217.12.208[.]28/",
                                                 "--refang"))
        assert status == 0, err
        assert "refanged 'hxxps://217.12.208[.]28/' as 'https://217.12.208.28/'" in err
        assert len(out.split()[0]) == 64  # the entry id on stdout
        status, _out, err = await run(capsys, cli(api, tmp_path, "submit", "--type", "url",
                                                 "--value", "hxxps://217.12.208[.]28/"))
        assert status != 0 and "hxxps" in err
