"""The operations commands end to end against a real node's API on 127.0.0.1:
``status``, ``retract``, ``sighting``, ``stream``, ``import FILE`` (text, CSV, a STIX
bundle) and ``peers update``; ``--json`` prints the API's shape; ``--lang fr`` (or the
locale) gives French help, output and errors."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from agent.cli.client import verify_problems_text
from agent.cli.lang import choose_lang, set_lang
from agent.cli.main import main
from agent.config.datadir import DataDir
from agent.config.settings import load_trust_list
from tests.agent._api_helpers import Api, identity, running_api


@pytest.fixture(autouse=True)
def _english_by_default(monkeypatch: pytest.MonkeyPatch) -> Any:
    for name in ("ENTRAIDE_LANG", "LC_ALL", "LC_MESSAGES", "LANG"):
        monkeypatch.delenv(name, raising=False)
    yield
    set_lang("en")


def cli(api: Api, root: Path, *argv: str, scope: str = "admin") -> list[str]:
    return [*argv, "--data-dir", str(root / "qc"), "--api", str(api.client.make_url("/")),
            "--token", api.tokens[scope]]


async def run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    status = await asyncio.to_thread(main, argv)
    out, err = capsys.readouterr()
    return status, out, err


async def submit(api: Api, value: str, tlp: str = "GREEN") -> str:
    status, body = await api.call("POST", "/api/v1/observations", scope="write",
                                  json_body={"type": "ipv4-addr", "value": value, "tlp": tlp})
    assert status == 201, body
    return str(body["id"])


async def test_cli_ops_status_text_and_json(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    async with running_api(tmp_path) as api:
        await submit(api, "203.0.113.7")
        status, out, err = await run(capsys, cli(api, tmp_path, "status", "--json"))
        assert status == 0, err
        _, expected = await api.call("GET", "/api/v1/status", scope="read")
        shown = json.loads(out)
        assert shown.keys() == expected.keys() and shown["name"] == "QC"
        assert shown["ledger"]["entries"] == 1
        status, out, err = await run(capsys, cli(api, tmp_path, "status"))
        assert status == 0, err
        assert "QC" in out and shown["fingerprint"] in out and "ON" in out and "FED" in out
        assert "ledger: 1 entries from 1 origins" in out
        assert "lag" in out and "we lack" in out  # never heard: "-" in both columns
        status, out, err = await run(capsys, cli(api, tmp_path, "--lang", "fr", "status"))
        assert status == 0 and "registre : 1 entrées de 1 origines" in out
        assert "connecté" in out and "retard" in out and "il nous manque" in out


def test_cli_ops_status_shows_each_peers_lag() -> None:
    from agent.cli.ops import render_status

    text = render_status({"name": "QC", "fingerprint": "f", "key": "k",
                          "ledger": {"entries": 9, "origins": 2}, "forks": [], "peers": [
                              {"name": "ON", "connected": False, "lag_entries": 7,
                               "behind_entries": 0},
                              {"name": "FED", "connected": True, "lag_entries": None,
                               "behind_entries": None}]})
    on = next(line for line in text.splitlines() if line.startswith("ON"))
    fed = next(line for line in text.splitlines() if line.startswith("FED"))
    assert on.split()[3:5] == ["7", "0"] and fed.split()[3:5] == ["-", "-"]


async def test_cli_ops_retract_and_sighting(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    async with running_api(tmp_path) as api:
        target = await submit(api, "198.51.100.9", "AMBER")
        status, out, err = await run(capsys, cli(api, tmp_path, "sighting", target, "--count",
                                                 "3", "--note", "seen at the proxy",
                                                 "--json", scope="write"))
        assert status == 0, err
        sighting = json.loads(out)
        assert sighting["of"] == target and sighting["tlp"] == "AMBER"
        assert set(sighting) >= {"id", "seq", "ts", "of", "tlp", "audience"}

        status, out, err = await run(capsys, cli(api, tmp_path, "retract", target, "--reason",
                                                 "false positive", scope="write"))
        assert status == 0, err
        assert out.startswith(f"retracted {target[:16]}: retraction ")
        _, got = await api.call("GET", f"/api/v1/observations/{target}", scope="read")
        assert got["retracted"] is True

        # Again: the node's 409, one line, in the language asked for.
        status, out, err = await run(capsys, cli(api, tmp_path, "--lang", "fr", "retract",
                                                 target, scope="write"))
        assert status == 1 and out == ""
        assert err.startswith("entraide : erreur : ") and err.count("\n") == 1
        assert "est déjà retirée" in err and "already_retracted" in err

        status, out, err = await run(capsys, cli(api, tmp_path, "sighting", "0" * 64,
                                                 scope="write"))
        assert status == 1 and "not_found" in err and "HTTP 404" in err


async def test_cli_ops_stream_prints_new_observations(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with running_api(tmp_path) as api:
        task = asyncio.create_task(asyncio.to_thread(
            main, cli(api, tmp_path, "stream", "--type", "ipv4-addr", "--count", "1", "--json",
                      scope="read")))
        # The stream starts at "now": submit until one reaches it (the first may come
        # before the stream is open).
        sent: list[str] = []
        deadline = asyncio.get_running_loop().time() + 60
        while not task.done():
            assert asyncio.get_running_loop().time() < deadline, "nothing reached the stream"
            sent.append(await submit(api, f"192.0.2.{len(sent) + 1}"))
            await asyncio.wait({task}, timeout=0.5)
        assert task.result() == 0
        out, _ = capsys.readouterr()
        lines = out.splitlines()
        assert len(lines) == 1
        event = json.loads(lines[0])
        assert event["id"] in sent and event["type"] == "ipv4-addr" and event["origin_name"]


async def test_cli_ops_import_text_keeps_the_good_items(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    listing = tmp_path / "blocklist.txt"
    listing.write_text("# a public list\n203.0.113.10\nevil.example  # C2\n203.0.113.10\n"
                       "not a domain!\nhttps://bad.example/x\n"
                       "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n")
    async with running_api(tmp_path) as api:
        status, out, err = await run(capsys, cli(api, tmp_path, "import", str(listing),
                                                 "--tlp", "amber", "--to", "ON",
                                                 scope="write"))
        assert status == 1  # one refused
        assert "4 shared, 1 refused, 1 repeated in the file (of 6)" in out
        assert "refused: domain-name 'not a domain!'" in err
        assert "4/5" not in err and "5/5" in err  # progress on stderr
        _, listed = await api.call("GET", "/api/v1/observations?limit=100", scope="read")
        kinds = {(o["type"], o["value"], o["tlp"]) for o in listed["observations"]}
        assert ("ipv4-addr", "203.0.113.10", "AMBER") in kinds
        assert ("domain-name", "evil.example", "AMBER") in kinds
        assert {o["type"] for o in listed["observations"]} == {
            "ipv4-addr", "domain-name", "url", "file:sha256"}


async def test_cli_ops_import_csv_and_stix_bundle(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = tmp_path / "iocs.csv"
    table.write_text("type,value,confidence,tags,description,description_fr\n"
                     "ipv4-addr,198.51.100.77,80,c2;lockbit,LockBit C2,C2 de LockBit\n"
                     "cve,CVE-2026-21345,100,,,\n")
    bundle = tmp_path / "bundle.json"
    bundle.write_text(json.dumps({"type": "bundle",
                                  "id": "bundle--11111111-1111-4111-8111-111111111111",
                                  "objects": [{
                                      "type": "indicator", "spec_version": "2.1",
                                      "id": "indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f",
                                      "created": "2026-01-01T00:00:00.000Z",
                                      "modified": "2026-01-01T00:00:00.000Z",
                                      "name": "bad domain", "pattern_type": "stix",
                                      "pattern": "[domain-name:value = 'stix.example']",
                                      "valid_from": "2026-01-01T00:00:00Z"}]}))
    async with running_api(tmp_path) as api:
        status, out, err = await run(capsys, cli(api, tmp_path, "import", str(table), "--json",
                                                 scope="write"))
        assert status == 0, err
        summary = json.loads(out)
        assert summary["shared"] == 2 and summary["refused"] == 0 and len(summary["ids"]) == 2
        _, got = await api.call("GET", f"/api/v1/observations/{summary['ids'][0]}",
                                scope="read")
        assert got["confidence"] == 80 and got["tags"] == ["c2", "lockbit"]
        assert got["description"] == {"en": "LockBit C2", "fr": "C2 de LockBit"}

        status, out, err = await run(capsys, cli(api, tmp_path, "import", str(bundle),
                                                 scope="write"))
        assert status == 0, err
        assert "1 shared, 0 refused" in out
        _, listed = await api.call("GET", "/api/v1/observations?type=domain-name", scope="read")
        assert [o["value"] for o in listed["observations"]] == ["stix.example"]

        broken = tmp_path / "broken.json"
        broken.write_text('{"type": "bundle"')
        status, out, err = await run(capsys, cli(api, tmp_path, "import", str(broken),
                                                 scope="write"))
        assert status == 1 and out == "" and "not JSON" in err and err.count("\n") == 1


async def test_cli_ops_peers_update(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with running_api(tmp_path):
        root = str(tmp_path / "qc")
        status, out, err = await run(capsys, ["peers", "update", "ON", "--url",
                                              "https://on2.example:8471", "--data-dir", root,
                                              "--json"])
        assert status == 0, err
        assert json.loads(out)["url"] == "https://on2.example:8471"
        new_key = identity("ON-2").public_key
        status, out, err = await run(capsys, ["peers", "update", "ON", "--key", new_key.text,
                                              "--data-dir", root])
        assert status == 0 and "Updated peer ON" in out and new_key.fingerprint in out
        trust = load_trust_list(DataDir(tmp_path / "qc"))
        on = trust.by_name("ON")
        assert on is not None and on.key == new_key and on.url == "https://on2.example:8471"
        assert [p.name for p in trust] == ["ON", "FED"]  # in place
        status, out, err = await run(capsys, ["peers", "update", "ON", "--key",
                                              trust.by_name("FED").key.text,  # type: ignore[union-attr]
                                              "--data-dir", root])
        assert status == 1 and "is already trusted as" in err  # one key, two names
        status, _, err = await run(capsys, ["peers", "update", "ATLANTIS", "--url", "",
                                            "--data-dir", root, "--lang", "fr"])
        assert status == 1 and "aucun pair nommé 'ATLANTIS'" in err
        status, _, err = await run(capsys, ["peers", "update", "ON", "--data-dir", root])
        assert status == 2 and "needs --url, --key, --card or --jurisdiction" in err


def test_cli_ops_language_choice(monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert choose_lang(["--lang", "fr"], {}) == "fr"
    assert choose_lang(["--lang=en"], {"ENTRAIDE_LANG": "fr"}) == "en"
    assert choose_lang([], {"ENTRAIDE_LANG": "fr", "LANG": "en_CA.UTF-8"}) == "fr"
    assert choose_lang([], {"LANG": "fr_CA.UTF-8"}) == "fr"
    assert choose_lang([], {"LC_ALL": "C", "LANG": "fr_CA.UTF-8"}) == "en"  # POSIX order
    assert choose_lang([], {"LC_MESSAGES": "fr_FR@euro"}) == "fr"
    assert choose_lang(["--", "--lang", "fr"], {}) == "en"
    assert choose_lang([], {}) == "en"
    monkeypatch.setenv("LANG", "fr_CA.UTF-8")
    assert main(["retract", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("utilisation : entraide retract")
    assert "Retire une observation de ce nœud" in out and "exemples :" in out
    assert main(["--lang", "en", "retract", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: entraide retract") and "examples:" in out


def test_cli_ops_every_command_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    for words in (["init"], ["id"], ["peers", "add"], ["peers", "update"], ["peers", "list"],
                  ["token", "create"], ["submit"], ["query"], ["retract"], ["sighting"],
                  ["status"], ["stream"], ["import"], ["ledger", "verify"], ["backup"],
                  ["doctor"], ["forks", "list"]):
        assert main([*words, "--help"]) == 0, words
        out = capsys.readouterr().out
        assert "examples:" in out and f"entraide {' '.join(words)}" in out, words


def test_cli_ops_verify_text_names_origin_and_seq() -> None:
    text = verify_problems_text({"ok": False, "entries": 9, "problems": [
        {"origin": "ed25519:abc", "origin_name": "ON", "seq": 4, "what": "bad signature"},
        {"origin": "ed25519:def", "origin_name": None, "seq": None, "what": "gap"}]})
    assert text.splitlines() == ["BROKEN: 2 problem(s) in 9 entries",
                                 "  origin ON seq 4: bad signature",
                                 "  origin ed25519:def seq ?: gap"]


def test_cli_ops_bash_completion_offers_commands_and_options(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil
    import subprocess

    assert main(["completion", "bash"]) == 0
    script = tmp_path / "entraide.bash"
    script.write_text(capsys.readouterr().out)
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash here")

    def complete(*words: str) -> list[str]:
        array = " ".join(f"'{w}'" for w in words)
        done = subprocess.run(
            [bash, "-c", f"source {script}; COMP_WORDS=({array}); "
                         f"COMP_CWORD={len(words) - 1}; _entraide; echo \"${{COMPREPLY[*]}}\""],
            capture_output=True, text=True, timeout=30, check=True)
        return done.stdout.split()

    assert complete("entraide", "ret") == ["retract"]
    assert complete("entraide", "peers", "up") == ["update"]
    assert complete("entraide", "--lang", "fr", "sta") == ["status"]
    assert complete("entraide", "peers", "update", "ON", "--u") == ["--url"]
    assert complete("entraide", "status", "--js") == ["--json"]


def test_cli_ops_stream_reader_parses_events_and_bounds_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    import agent.cli.ops
    from protocol.errors import EntraideError

    text = (b"retry: 2000\n: entraide stream\n\n"
            b"event: observation\nid: c1.1\ndata: {\"id\": \"a\"}\n\n"
            b"event: aid\nid: c1.2\ndata: {\"kind\":\ndata:  \"offer\"}\n\n")
    events = list(agent.cli.ops._events(io.BytesIO(text)))
    assert events == [("observation", "c1.1", {"id": "a"}), ("aid", "c1.2", {"kind": "offer"})]
    monkeypatch.setattr(agent.cli.ops, "_MAX_LINE", 64)
    endless = io.BytesIO(b"event: observation\n" + b"data: " + b"x" * 40 + b"\n" * 1 +
                         b"data: " + b"x" * 40 + b"\n")
    with pytest.raises(EntraideError, match="over 64 bytes"):
        list(agent.cli.ops._events(endless))


def test_cli_ops_import_refuses_a_file_that_is_not_utf8(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("évil.example\n".encode("latin-1"))
    root = tmp_path / "qc"
    assert main(["init", "--name", "QC", "--data-dir", str(root)]) == 0
    capsys.readouterr()
    assert main(["import", str(bad), "--data-dir", str(root)]) == 1
    err = capsys.readouterr().err
    assert "not UTF-8 text (byte 0)" in err and err.count("\n") == 1


def test_cli_ops_every_option_has_help(monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    missing: list[tuple[str, tuple[str, ...]]] = []
    add_argument = argparse.ArgumentParser.add_argument

    def recording(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("help") is None and args[:1] not in (("-h",), ("--version",)):
            missing.append((self.prog, args))
        return add_argument(self, *args, **kwargs)

    monkeypatch.setattr(argparse.ArgumentParser, "add_argument", recording)
    # `run` (agent/daemon.py) and the MISP commands (agent/cli/misp.py) have their own
    # owners; every other command's options are checked.
    for words in (["--help"], ["submit"], ["query"], ["retract"], ["sighting"], ["status"],
                  ["stream"], ["import"], ["ledger", "verify"], ["forks", "list"],
                  ["forks", "clear"], ["erase"], ["demo"], ["completion"], ["rules"],
                  ["playbooks"], ["aid"], ["capabilities"]):
        assert main([*words, "--help"]) == 0, words
    capsys.readouterr()
    assert missing == []
