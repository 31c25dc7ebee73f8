"""``entraide rules`` and ``entraide playbooks`` against a real node's API on 127.0.0.1:
a refused rule is one line with the engine's message and writes nothing; submit, list,
show, export (loaded by yara-x), retract; playbooks submitted, listed and shown."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import yara_x

from agent.cli.lang import set_lang
from agent.cli.main import main
from tests.agent._api_helpers import Api, running_api

DATA = Path(__file__).resolve().parents[1] / "tools" / "data"


def cli(api: Api, root: Path, *argv: str) -> list[str]:
    return [*argv, "--data-dir", str(root / "qc"), "--api", str(api.client.make_url("/")),
            "--token", api.tokens["write"]]


async def run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    status = await asyncio.to_thread(main, argv)
    out, err = capsys.readouterr()
    return status, out, err


async def test_cli_rules_submit_list_show_export_retract(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yar"
    bad.write_text("rule a {\n  condition: $x\n}\n")
    good = DATA / "crash_override.yar"
    async with running_api(tmp_path) as api:
        status, out, err = await run(capsys, cli(api, tmp_path, "rules", "submit", str(bad),
                                                 "--type", "yara"))
        assert status == 1 and out == ""
        assert err.startswith("entraide: error: ") and err.count("\n") == 1
        assert "invalid_rule" in err and "line 2" in err and "HTTP 422" in err
        status, out, _ = await run(capsys, cli(api, tmp_path, "rules", "list", "--json"))
        assert status == 0  # the refused rule wrote nothing; --json is the API's shape
        assert json.loads(out) == {"rules": [], "next": None}

        status, out, err = await run(capsys, cli(
            api, tmp_path, "rules", "submit", str(good), "--type", "yara", "--tlp", "amber",
            "--description-en", "CrashOverride", "--description-fr", "CrashOverride (fr)",
            "--json"))
        assert status == 0, err
        created = json.loads(out)
        assert created["tlp"] == "AMBER" and created["valid"] is True
        status, out, _ = await run(capsys, cli(api, tmp_path, "rules", "list", "--type", "yara"))
        assert status == 0 and "crash_override" in out and created["id"][:16] in out
        assert "current" in out
        status, out, _ = await run(capsys, cli(api, tmp_path, "rules", "show", created["id"],
                                               "--json"))
        shown = json.loads(out)
        assert shown["name"] == "crash_override" and shown["origin_name"] == "QC"
        assert shown["description"] == {"en": "CrashOverride", "fr": "CrashOverride (fr)"}
        status, out, _ = await run(capsys, cli(api, tmp_path, "rules", "show", created["id"]))
        assert "CrashOverride / CrashOverride (fr)" in out and "rule dragos_" in out

        target = tmp_path / "out" / "all.yar"
        target.parent.mkdir()
        status, out, err = await run(capsys, cli(api, tmp_path, "rules", "export", "--type",
                                                 "yara", "-o", str(target)))
        assert status == 0 and out == "", err
        compiler = yara_x.Compiler(includes_enabled=False)
        compiler.add_source(target.read_text())  # the file loads in the engine as is
        assert len(list(compiler.build())) >= 1
        status, out, _ = await run(capsys, cli(api, tmp_path, "rules", "export", "--type",
                                               "sigma"))
        assert status == 0 and out.strip() == ""

        status, out, err = await run(capsys, cli(api, tmp_path, "rules", "retract",
                                                 created["id"], "--reason", "obsolete"))
        assert status == 0 and "retracted: " in out, err
        status, out, err = await run(capsys, cli(api, tmp_path, "rules", "retract",
                                                 created["id"]))
        assert status == 1 and "HTTP 409" in err and err.count("\n") == 1
        status, out, _ = await run(capsys, cli(api, tmp_path, "rules", "export", "--type",
                                               "yara"))
        assert "dragos" not in out
        status, _, err = await run(capsys, cli(api, tmp_path, "rules", "show", "nope"))
        assert status == 1 and "64 hex" in err


async def test_cli_playbooks_submit_list_show(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    playbook = json.loads((DATA / "playbook.json").read_text())
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**playbook, "extra": 1}))
    async with running_api(tmp_path) as api:
        status, out, err = await run(capsys, cli(api, tmp_path, "playbooks", "submit",
                                                 str(bad)))
        assert status == 1 and "invalid_rule" in err and "extra" in err
        status, out, err = await run(capsys, cli(api, tmp_path, "playbooks", "submit",
                                                 str(DATA / "playbook.json"), "--json"))
        assert status == 0, err
        created = json.loads(out)
        status, out, _ = await run(capsys, cli(api, tmp_path, "playbooks", "list"))
        assert created["id"][:16] in out and "Isolate a ransomware-infected host" in out
        status, out, _ = await run(capsys, cli(api, tmp_path, "playbooks", "show",
                                               created["id"], "--json"))
        assert json.loads(out)["playbook"] == playbook
        status, out, _ = await run(capsys, cli(api, tmp_path, "playbooks", "show",
                                               created["id"]))
        assert "steps: 3" in out
        garbage = tmp_path / "garbage.json"
        garbage.write_text("{not json")
        status, _, err = await run(capsys, cli(api, tmp_path, "playbooks", "submit",
                                               str(garbage)))
        assert status == 1 and "not JSON" in err and err.count("\n") == 1


def test_cli_rules_help_in_either_language(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["rules", "--help"], ["rules", "submit", "--help"]):
        assert main(["--lang", "en", *argv]) == 0  # main() returns, never raises SystemExit
    out = capsys.readouterr().out
    assert "share a rule" in out and "partager" not in out
    assert "--type" in out and "yara" in out and "peer names, comma-separated" in out
    for argv in (["rules", "--help"], ["rules", "submit", "--help"]):
        assert main(["--lang", "fr", *argv]) == 0
    out = capsys.readouterr().out
    assert "partager une règle" in out and "share a rule" not in out
    assert "noms de pairs, séparés par des virgules" in out and "exemples :" in out
    set_lang("en")
