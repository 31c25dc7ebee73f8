"""The entraide CLI, run in-process through main() and once as a real subprocess."""

from __future__ import annotations

import functools
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import nacl.pwhash.argon2id
import pytest

import agent.cli.main
from agent.cli.main import main
from agent.config.datadir import DataDir
from agent.config.settings import create_node, load_node_config, load_trust_list
from agent.config.tokens import Scope, TokenStore
from protocol.cards import encode_card, parse_card
from protocol.keys import Identity, PublicKey


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    status, out, err = run(capsys, *argv)
    assert status == 0, err
    return json.loads(out)


def assert_one_line_error(err: str, *fragments: str) -> None:
    assert err.startswith("entraide: error: ")
    assert err.count("\n") == 1 and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err


@pytest.fixture(autouse=True)
def _no_env_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ENTRAIDE_HOME", raising=False)


@pytest.fixture
def cheap_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent.cli.main, "create_node", functools.partial(
        create_node,
        opslimit=nacl.pwhash.argon2id.OPSLIMIT_MIN,
        memlimit=nacl.pwhash.argon2id.MEMLIMIT_MIN,
    ))


@pytest.fixture
def qc(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    root = tmp_path / "qc"
    status, _, err = run(capsys, "--data-dir", str(root), "init", "--name", "QC",
                         "--jurisdiction", "Québec", "--public-url", "https://qc.example:8471")
    assert status == 0, err
    return root


@pytest.fixture
def on_card(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    root = tmp_path / "on"
    assert run(capsys, "init", "--data-dir", str(root), "--name", "ON")[0] == 0
    card: str = run_json(capsys, "id", "--data-dir", str(root), "--json")["card"]
    return card


# --- init, id --------------------------------------------------------------------------


def test_init_creates_private_node_files(qc: Path) -> None:
    modes = {p.name: stat.S_IMODE(os.stat(p).st_mode) for p in qc.iterdir()}
    assert modes["node.key"] == 0o600
    assert {"entraide.toml", "peers.toml", "node.pub"} <= set(modes)
    assert stat.S_IMODE(os.stat(qc).st_mode) == 0o700
    config = load_node_config(DataDir(qc))
    assert (config.name, config.jurisdiction) == ("QC", "Québec")
    assert len(load_trust_list(DataDir(qc))) == 0


def test_init_passes_listener_options_to_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "n"
    info = run_json(capsys, "init", "--data-dir", str(root), "--name", "NB", "--api-port", "9470",
                    "--peer-port", "9471", "--peer-host", "10.1.2.3", "--json")
    config = load_node_config(DataDir(root))
    assert (config.api.port, config.peer.port, config.peer.host) == (9470, 9471, "10.1.2.3")
    assert info["peer_url"] == "http://10.1.2.3:9471"
    assert info["data_dir"] == str(root)


def test_init_refuses_an_existing_node(qc: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key_before = (qc / "node.key").read_bytes()
    status, out, err = run(capsys, "init", "--data-dir", str(qc), "--name", "ON")
    assert status == 1 and out == ""
    assert_one_line_error(err, "already exists")
    assert (qc / "node.key").read_bytes() == key_before
    assert load_node_config(DataDir(qc)).name == "QC"


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--name", "Q C"], "bad peer name"),
        (["--name", "QC", "--public-url", "ftp://x"], "public_url"),
        (["--name", "QC", "--api-port", "70000"], "api.port"),
        (["--name", "QC", "--jurisdiction", ""], "jurisdiction"),
        (["--name", "QC", "--passphrase-env", "ENTRAIDE_TEST_UNSET"], "ENTRAIDE_TEST_UNSET"),
    ],
)
def test_init_refuses_bad_input_without_creating_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], fragment: str
) -> None:
    root = tmp_path / "n"
    status, _, err = run(capsys, "init", "--data-dir", str(root), *args)
    assert status == 1
    assert_one_line_error(err, fragment)
    assert not root.exists()


def test_id_json_describes_the_node(qc: Path, capsys: pytest.CaptureFixture[str]) -> None:
    info = run_json(capsys, "id", "--json", "--data-dir", str(qc))
    assert set(info) == {"name", "key", "fingerprint", "card", "peer_url", "previous_keys",
                         "next_key"}
    assert info["previous_keys"] == [] and info["next_key"] is None
    key = DataDir(qc).load_identity().public_key
    assert (info["name"], info["key"], info["fingerprint"]) == ("QC", key.text, key.fingerprint)
    assert info["peer_url"] == "https://qc.example:8471"
    card = parse_card(info["card"])
    assert (card.name, card.key, card.url) == ("QC", key, "https://qc.example:8471")


def test_id_default_peer_url_is_loopback_for_wildcard_host(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "n"
    run(capsys, "init", "--data-dir", str(root), "--name", "NB")
    info = run_json(capsys, "id", "--data-dir", str(root), "--json")
    assert info["peer_url"] == "http://127.0.0.1:8471"
    assert parse_card(info["card"]).url == "http://127.0.0.1:8471"


def test_id_text_shows_card_and_fingerprint(qc: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "id", "--data-dir", str(qc))
    key = DataDir(qc).public_key()
    assert status == 0
    assert key.fingerprint in out and "entraide1.QC." in out


def test_data_dir_from_env_and_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ENTRAIDE_HOME", str(tmp_path / "from-env"))
    assert run(capsys, "init", "--name", "ENV")[0] == 0
    assert run_json(capsys, "id", "--json")["name"] == "ENV"
    monkeypatch.delenv("ENTRAIDE_HOME")
    monkeypatch.chdir(tmp_path)
    assert run(capsys, "init", "--name", "DEF")[0] == 0
    assert (tmp_path / "entraide-data" / "node.key").exists()
    # --data-dir beats the environment, before or after the command words.
    monkeypatch.setenv("ENTRAIDE_HOME", str(tmp_path / "from-env"))
    before = run_json(capsys, "--data-dir", str(tmp_path / "entraide-data"), "id", "--json")
    after = run_json(capsys, "id", "--json", "--data-dir", str(tmp_path / "entraide-data"))
    assert before["name"] == after["name"] == "DEF"


def test_commands_on_a_missing_node_say_how_to_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (["id"], ["peers", "list"], ["token", "create", "--scope", "read"]):
        status, _, err = run(capsys, *argv, "--data-dir", str(tmp_path / "none"))
        assert status == 1
        assert_one_line_error(err, "entraide init")


def test_os_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("x")
    status, _, err = run(capsys, "init", "--data-dir", str(tmp_path / "file" / "sub"),
                         "--name", "QC")
    assert status == 1
    assert_one_line_error(err, "Not a directory")


# --- passphrase ------------------------------------------------------------------------


def test_sealed_key_needs_the_right_passphrase(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    cheap_kdf: None,
) -> None:
    monkeypatch.setenv("NODE_PW", "correct horse")
    monkeypatch.setenv("WRONG_PW", "wrong horse")
    root = tmp_path / "sealed"
    assert run(capsys, "init", "--data-dir", str(root), "--name", "NB",
               "--passphrase-env", "NODE_PW")[0] == 0
    assert DataDir(root).key_is_sealed()
    assert b"correct" not in (root / "node.key").read_bytes()
    status, _, err = run(capsys, "id", "--data-dir", str(root), "--passphrase-env", "WRONG_PW")
    assert status == 1
    assert_one_line_error(err, "wrong passphrase")
    good = run_json(capsys, "id", "--data-dir", str(root), "--passphrase-env", "NODE_PW", "--json")
    # Without a passphrase, id reads node.pub.
    assert run_json(capsys, "id", "--data-dir", str(root), "--json") == good


# --- peers -----------------------------------------------------------------------------


def test_peers_add_card_list_remove(
    qc: Path, on_card: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run(capsys, "peers", "add", "--data-dir", str(qc), "--card", on_card,
                           "--jurisdiction", "Ontario")
    assert status == 0, err
    on_key = parse_card(on_card).key
    assert on_key.fingerprint in out
    fed_key = Identity(bytes(32)).public_key
    assert run(capsys, "--data-dir", str(qc), "peers", "add", "--name", "FED",
               "--key", fed_key.text)[0] == 0
    listed = run_json(capsys, "peers", "list", "--json", "--data-dir", str(qc))["peers"]
    assert listed == [
        {"name": "ON", "jurisdiction": "Ontario", "key": on_key.text,
         "url": "http://127.0.0.1:8471", "retired": [], "compromised_since_seq": None,
         "fingerprint": on_key.fingerprint},
        {"name": "FED", "jurisdiction": None, "key": fed_key.text, "url": None,
         "retired": [], "compromised_since_seq": None, "fingerprint": fed_key.fingerprint},
    ]
    status, out, _ = run(capsys, "peers", "list", "--data-dir", str(qc))
    assert "ON" in out and "FED" in out and on_key.fingerprint in out
    assert run(capsys, "peers", "remove", "ON", "--data-dir", str(qc))[0] == 0
    assert [p.name for p in load_trust_list(DataDir(qc))] == ["FED"]


def test_peers_add_refuses_mistyped_card(
    qc: Path, on_card: str, capsys: pytest.CaptureFixture[str]
) -> None:
    index = on_card.index(".", len("entraide1.")) + 5  # inside the key
    typo = on_card[:index] + ("A" if on_card[index] != "A" else "B") + on_card[index + 1 :]
    status, _, err = run(capsys, "peers", "add", "--data-dir", str(qc), "--card", typo)
    assert status == 1
    assert_one_line_error(err, "checksum")
    assert len(load_trust_list(DataDir(qc))) == 0


@pytest.mark.parametrize(
    ("make_args", "fragment"),
    [
        (lambda card, own: ["--card", card], "already in the trust list"),
        (lambda card, own: ["--name", "on", "--key", Identity(bytes(32)).public_key.text],
         "clashes"),
        (lambda card, own: ["--name", "NB", "--key", parse_card(card).key.text],
         "already trusted as 'ON'"),
        (lambda card, own: ["--name", "SELF", "--key", own], "own key"),
        (lambda card, own: ["--name", "qc", "--key", Identity(bytes(32)).public_key.text],
         "own name"),
        (lambda card, own: ["--name", "bad name", "--key", own], "bad peer name"),
        (lambda card, own: ["--name", "NB", "--key", "ed25519:nope"], "key"),
        (lambda card, own: ["--name", "NB", "--key", own, "--url", "file:///etc"], "url"),
        (lambda card, own: ["--card", "entraide1.garbage"], "not an Entraide peer card"),
    ],
)
def test_peers_add_refuses_bad_or_duplicate_peers(
    qc: Path, on_card: str, capsys: pytest.CaptureFixture[str], make_args: Any, fragment: str
) -> None:
    assert run(capsys, "peers", "add", "--data-dir", str(qc), "--card", on_card)[0] == 0
    before = (qc / "peers.toml").read_bytes()
    own = DataDir(qc).public_key().text
    status, _, err = run(capsys, "peers", "add", "--data-dir", str(qc), *make_args(on_card, own))
    assert status == 1
    assert_one_line_error(err, fragment)
    assert (qc / "peers.toml").read_bytes() == before


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--name", "NB"],
        ["--card", "entraide1.x", "--name", "NB"],
    ],
)
def test_peers_add_usage_errors_exit_2(
    qc: Path, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    status, _, err = run(capsys, "peers", "add", "--data-dir", str(qc), *args)
    assert status == 2
    assert_one_line_error(err)


def test_peers_remove_unknown(qc: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "peers", "remove", "NOPE", "--data-dir", str(qc))
    assert status == 1
    assert_one_line_error(err, "no peer named 'NOPE'")


def test_peers_list_reports_broken_file(qc: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (qc / "peers.toml").write_text("[[peer]]\nname = 'ON'\nkey = 'x'\n")
    status, _, err = run(capsys, "peers", "list", "--data-dir", str(qc))
    assert status == 1
    assert_one_line_error(err, "peers.toml", "peer.0.key")


# --- tokens ----------------------------------------------------------------------------


def test_token_create_json_gives_a_working_token(
    qc: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    info = run_json(capsys, "token", "create", "--scope", "write", "--name", "siem", "--json",
                    "--data-dir", str(qc))
    record = TokenStore(DataDir(qc)).authenticate(info["token"])
    assert record is not None and record.scope is Scope.WRITE and record.name == "siem"
    assert info["name"] == "siem" and info["scope"] == "write"


def test_token_create_prints_only_the_token_on_stdout(
    qc: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run(capsys, "token", "create", "--scope", "read", "--data-dir", str(qc))
    assert status == 0
    token = out.strip()
    assert out.count("\n") == 1 and token.startswith("ent_")
    assert "shown only" in err
    assert TokenStore(DataDir(qc)).authenticate(token) is not None


def test_token_list_and_revoke(qc: Path, capsys: pytest.CaptureFixture[str]) -> None:
    token = run_json(capsys, "token", "create", "--scope", "admin", "--json",
                     "--data-dir", str(qc))["token"]
    listed = run_json(capsys, "token", "list", "--json", "--data-dir", str(qc))["tokens"]
    assert [(t["name"], t["scope"]) for t in listed] == [("admin-1", "admin")]
    assert token not in json.dumps(listed)
    assert run(capsys, "token", "revoke", "admin-1", "--data-dir", str(qc))[0] == 0
    assert TokenStore(DataDir(qc)).authenticate(token) is None
    status, _, err = run(capsys, "token", "revoke", "admin-1", "--data-dir", str(qc))
    assert status == 1
    assert_one_line_error(err, "no token named")


def test_token_create_refuses_bad_scope_and_duplicate_name(
    qc: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "token", "create", "--scope", "root", "--data-dir", str(qc))[0] == 2
    assert run(capsys, "token", "create", "--scope", "read", "--name", "a",
               "--data-dir", str(qc))[0] == 0
    status, _, err = run(capsys, "token", "create", "--scope", "read", "--name", "a",
                         "--data-dir", str(qc))
    assert status == 1
    assert_one_line_error(err, "already exists")


# --- parser, external commands ---------------------------------------------------------


def test_main_usage_errors_return_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys)[0] == 2
    assert run(capsys, "bogus")[0] == 2
    assert run(capsys, "peers")[0] == 2
    assert run(capsys, "peers", "list", "extra")[0] == 2
    assert run(capsys, "id", "--jsn")[0] == 2
    status, out, _ = run(capsys, "--version")
    assert status == 0 and out.startswith("entraide ")
    assert run(capsys, "--help")[0] == 0


calls: list[tuple[list[str], Path]] = []


def fake_command(argv: list[str], data_dir: Path) -> int:
    calls.append((argv, data_dir))
    return 7


def test_passthrough_commands_get_their_argv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import agent.cli.client

    monkeypatch.setattr(agent.cli.client, "submit_command", fake_command)
    calls.clear()
    status = main(["submit", "--type", "ipv4-addr", "--data-dir", str(tmp_path), "-h", "--to",
                   "ON,FED"])
    assert status == 7
    assert calls == [(["--type", "ipv4-addr", "-h", "--to", "ON,FED"], tmp_path)]
    monkeypatch.setattr(agent.cli.client, "ledger_verify_command", fake_command)
    assert main(["--data-dir", str(tmp_path), "ledger", "verify", "--json"]) == 7
    assert calls[-1] == (["--json"], tmp_path)


def test_every_command_has_a_handler() -> None:
    from agent.cli.main import build_parser

    parser = build_parser()
    for words in (["init", "--name", "X"], ["id"], ["peers", "list"], ["token", "list"],
                  ["run"], ["submit"], ["query"], ["ledger", "verify"],
                  ["ledger", "export", "f"], ["ledger", "import", "f"], ["forks", "list"],
                  ["forks", "clear"], ["demo"], ["import", "misp"], ["export", "misp"]):
        args, _ = parser.parse_known_args(words)
        handler = getattr(args, "handler", None) or getattr(args, "passthrough", None)
        assert callable(handler), words


def test_id_imports_no_heavy_module(tmp_path: Path) -> None:
    home = tmp_path / "node"
    assert main(["init", "--name", "QC", "--data-dir", str(home), "--json"]) == 0
    heavy = ("aiohttp", "aiosqlite", "agent.node.node", "agent.daemon", "agent.cli.client")
    code = (f"import sys; from agent.cli.main import main; main(['id', '--data-dir', "
            f"{str(home)!r}]); print([m for m in {heavy!r} if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


# --- subprocess --------------------------------------------------------------------------


def test_console_script_end_to_end(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "entraide"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "agent.cli"]
    env = {**os.environ, "ENTRAIDE_HOME": str(tmp_path / "node")}
    done = subprocess.run([*command, "init", "--name", "YT", "--json"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert PublicKey.from_text(info["key"]) == parse_card(info["card"]).key
    again = subprocess.run([*command, "init", "--name", "YT"], env=env,
                           capture_output=True, text=True, timeout=60, check=False)
    assert again.returncode == 1
    assert_one_line_error(again.stderr, "already exists")
    card = encode_card(parse_card(info["card"]))
    assert card == info["card"]
