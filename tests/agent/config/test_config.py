"""entraide.toml and peers.toml: models, loading, atomic edits, the watcher, node creation."""

from __future__ import annotations

import os
import shutil
import stat
import threading
from pathlib import Path
from typing import Any

import nacl.pwhash.argon2id
import pytest

from agent.config.datadir import DataDir
from agent.config.settings import (
    NodeConfig,
    PeerEntry,
    TrustList,
    TrustListWatcher,
    create_node,
    edit_trust_list,
    load_node_config,
    load_trust_list,
    parse_node_config,
    save_trust_list,
    write_node_config,
)
from agent.errors import ConfigError, DuplicatePeerError, NodeExistsError, UnknownPeerError
from protocol.cards import PeerCard
from protocol.keys import Identity, PublicKey

REPO = Path(__file__).resolve().parents[3]
CHEAP_KDF: dict[str, Any] = {
    "opslimit": nacl.pwhash.argon2id.OPSLIMIT_MIN,
    "memlimit": nacl.pwhash.argon2id.MEMLIMIT_MIN,
}


def _key(n: int) -> PublicKey:
    return Identity(bytes([n]) * 32).public_key


def _entry(name: str, n: int, url: str | None = None) -> PeerEntry:
    return PeerEntry.build(name=name, key=_key(n).text, url=url)


@pytest.fixture
def data_dir(tmp_path: Path) -> DataDir:
    d = DataDir(tmp_path / "node")
    d.create()
    return d


# --- NodeConfig ----------------------------------------------------------------------


def test_node_config_defaults_follow_design() -> None:
    config = NodeConfig(name="QC")
    assert (config.api.host, config.api.port) == ("127.0.0.1", 8470)
    assert (config.peer.host, config.peer.port, config.peer.public_url) == ("0.0.0.0", 8471, None)
    assert config.gossip.beacon_interval_ms == 5000
    assert config.gossip.lazy_delay_ms == 50
    assert config.gossip.anti_entropy_interval_ms == 2000
    assert config.gossip.max_batch_entries == 256
    assert (config.log.format, config.log.level) == ("text", "INFO")


def test_node_config_round_trips_through_file(data_dir: DataDir) -> None:
    config = parse_node_config({
        "name": "QC", "jurisdiction": "Québec",
        "peer": {"port": 9001, "public_url": "https://qc.example"},
        "log": {"format": "json", "level": "debug"},
    })
    write_node_config(data_dir, config)
    assert data_dir.config_path.read_text("utf-8").startswith("# Entraide node configuration")
    loaded = load_node_config(data_dir)
    assert loaded == config
    assert loaded.log.level == "DEBUG"


def test_node_config_ignores_the_retired_storage_settings(data_dir: DataDir) -> None:
    # Every entraide.toml written before their removal holds them: it must still load.
    data_dir.config_path.write_text(
        'name = "QC"\n[storage]\npath = "l.sqlite3"\ningest_batch_max = 512\n'
        "ingest_flush_ms = 5\n", "utf-8")
    config = load_node_config(data_dir)
    assert config.storage.path == "l.sqlite3"
    write_node_config(data_dir, config)
    assert "ingest_" not in data_dir.config_path.read_text("utf-8")


@pytest.mark.parametrize(
    ("toml", "match"),
    [
        ('name = "QC"\ncolour = "blue"\n', "colour: unknown setting"),
        ('name = "QC"\n[api]\nport = "8470"\n', "api.port"),
        ('name = "QC"\n[api]\nport = 0\n', "api.port"),
        ('name = "QC"\n[gossip]\nbeacon_interval_ms = true\n', "gossip.beacon_interval_ms"),
        ('name = "QC"\n[gossip]\nbeacon_interval_ms = 1.5\n', "gossip.beacon_interval_ms"),
        ('name = "Q C"\n', "bad peer name"),
        ('name = "QC"\n[peer]\npublic_url = "ftp://x"\n', "peer.public_url"),
        ('name = "QC"\n[log]\nformat = "xml"\n', "log.format"),
        ('name = "QC"\njurisdiction = ""\n', "jurisdiction"),
        ("jurisdiction = 'x'\n", "name"),
        ("name = \n", "not valid TOML"),
    ],
)
def test_load_node_config_refuses_bad_files_in_one_line(
    data_dir: DataDir, toml: str, match: str
) -> None:
    data_dir.config_path.write_text(toml, "utf-8")
    with pytest.raises(ConfigError, match=match) as info:
        load_node_config(data_dir)
    assert "entraide.toml" in str(info.value)
    assert "\n" not in str(info.value)


def test_load_node_config_reports_missing_file(data_dir: DataDir) -> None:
    with pytest.raises(ConfigError, match=r"entraide\.toml: missing"):
        load_node_config(data_dir)


@pytest.mark.parametrize(
    ("peer", "url"),
    [
        ({}, "http://127.0.0.1:8471"),
        ({"host": "::", "port": 9000}, "http://127.0.0.1:9000"),
        ({"host": "10.1.2.3"}, "http://10.1.2.3:8471"),
        ({"host": "::1"}, "http://[::1]:8471"),
        ({"host": "node.example"}, "http://node.example:8471"),
        ({"host": "10.1.2.3", "public_url": "https://qc.example/e"}, "https://qc.example/e"),
    ],
)
def test_node_config_peer_url(peer: dict[str, object], url: str) -> None:
    assert parse_node_config({"name": "QC", "peer": peer}).peer_url == url


# --- PeerEntry, TrustList ---------------------------------------------------------------


def test_peer_entry_from_card_and_build_agree() -> None:
    card = PeerCard("ON", _key(1), "https://on.example")
    assert PeerEntry.from_card(card, "Ontario") == PeerEntry.build(
        name="ON", key=_key(1).text, url="https://on.example", jurisdiction="Ontario"
    )


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"name": "O N", "key": _key(1).text}, "name"),
        ({"name": "ON", "key": "ed25519:AAAA"}, "key"),
        ({"name": "ON", "key": _key(1).raw.hex()}, "key"),
        ({"name": "ON", "key": _key(1).text, "url": "gopher://x"}, "url"),
        ({"name": "ON", "key": _key(1).text, "jurisdiction": "a\nb"}, "jurisdiction"),
    ],
)
def test_peer_entry_build_refuses_bad_fields(fields: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        PeerEntry.build(**fields)


def test_trust_list_refuses_duplicate_names_ignoring_case() -> None:
    with pytest.raises(DuplicatePeerError, match="already in the trust list"):
        TrustList([_entry("ON", 1), _entry("ON", 2)])
    with pytest.raises(DuplicatePeerError, match="clashes"):
        TrustList([_entry("ON", 1), _entry("on", 2)])


def test_trust_list_refuses_duplicate_keys() -> None:
    with pytest.raises(DuplicatePeerError, match="already trusted as 'ON'"):
        TrustList([_entry("ON", 1), _entry("NB", 1)])


def test_trust_list_refuses_the_node_itself() -> None:
    with pytest.raises(DuplicatePeerError, match="own key"):
        TrustList([_entry("ON", 1)], own_key=_key(1))
    with pytest.raises(DuplicatePeerError, match="own name"):
        TrustList([_entry("qc", 1)], own_name="QC")


def test_trust_list_lookups_and_edits_return_new_lists() -> None:
    trust = TrustList([_entry("ON", 1)])
    bigger = trust.with_peer(_entry("FED", 2))
    assert len(trust) == 1 and len(bigger) == 2
    assert bigger.by_name("FED") == _entry("FED", 2)
    assert bigger.by_key(_key(1)) == _entry("ON", 1)
    assert "ON" in bigger and _key(2) in bigger and "on" not in bigger
    assert bigger.without("ON") == TrustList([_entry("FED", 2)])
    with pytest.raises(UnknownPeerError):
        bigger.without("NB")


# --- peers.toml ---------------------------------------------------------------------


def test_load_trust_list_missing_file_is_empty(data_dir: DataDir) -> None:
    assert len(load_trust_list(data_dir)) == 0


def test_peers_example_is_a_valid_trust_list(data_dir: DataDir) -> None:
    shutil.copy(REPO / "peers.example.toml", data_dir.peers_path)
    trust = load_trust_list(data_dir)
    assert [p.name for p in trust] == ["FED", "ON", "CCCS-LAB"]
    assert trust.by_name("CCCS-LAB") is not None and trust.by_name("CCCS-LAB").url is None  # type: ignore[union-attr]


def test_save_trust_list_round_trips_and_keeps_header(data_dir: DataDir) -> None:
    data_dir.peers_path.write_text("# my own notes\n#   about peers\n\n", "utf-8")
    trust = TrustList([_entry("ON", 1, "https://on.example"), _entry("FED", 2)])
    save_trust_list(data_dir, trust)
    text = data_dir.peers_path.read_text("utf-8")
    assert text.startswith("# my own notes\n#   about peers\n")
    assert load_trust_list(data_dir) == trust
    save_trust_list(data_dir, TrustList())
    assert load_trust_list(data_dir) == TrustList()
    assert data_dir.peers_path.read_text("utf-8").startswith("# my own notes")


@pytest.mark.parametrize(
    ("toml", "error", "match"),
    [
        ("[[peer]]\nname = 'ON'\n", ConfigError, r"peer\.0\.key"),
        ("[[peer]]\nname = 'ON'\nkey = 'x'\nextra = 1\n", ConfigError, "peer.0"),
        ("peers = []\n", ConfigError, "peers: unknown setting"),
        ("peer = 'x'\n", ConfigError, "peer"),
        (
            f"[[peer]]\nname = 'ON'\nkey = '{_key(1).text}'\n"
            f"[[peer]]\nname = 'NB'\nkey = '{_key(1).text}'\n",
            DuplicatePeerError,
            "peers.toml: key of peer 'NB'",
        ),
    ],
)
def test_load_trust_list_refuses_bad_files(
    data_dir: DataDir, toml: str, error: type[Exception], match: str
) -> None:
    data_dir.peers_path.write_text(toml, "utf-8")
    with pytest.raises(error, match=match):
        load_trust_list(data_dir)


def test_load_trust_list_refuses_own_key(data_dir: DataDir) -> None:
    save_trust_list(data_dir, TrustList([_entry("ON", 1)]))
    with pytest.raises(DuplicatePeerError, match="own key"):
        load_trust_list(data_dir, own_key=_key(1))


def test_edit_trust_list_refusal_leaves_file_unchanged(data_dir: DataDir) -> None:
    save_trust_list(data_dir, TrustList([_entry("ON", 1)]))
    before = data_dir.peers_path.read_bytes()
    with pytest.raises(DuplicatePeerError):
        edit_trust_list(data_dir, lambda t: t.with_peer(_entry("NB", 1)))
    with pytest.raises(DuplicatePeerError, match="own key"):
        edit_trust_list(data_dir, lambda t: t.with_peer(_entry("NB", 9)), own_key=_key(9))
    assert data_dir.peers_path.read_bytes() == before


def test_edit_trust_list_concurrent_edits_are_not_lost(data_dir: DataDir) -> None:
    names = [f"P{i}" for i in range(12)]

    def add(i: int) -> None:
        edit_trust_list(data_dir, lambda t: t.with_peer(_entry(names[i], i + 1)))

    threads = [threading.Thread(target=add, args=(i,)) for i in range(len(names))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(p.name for p in load_trust_list(data_dir)) == sorted(names)
    assert {p.name for p in data_dir.root.iterdir()} <= {"peers.toml", ".lock"}


def test_trust_list_watcher_sees_changes_and_survives_bad_edits(data_dir: DataDir) -> None:
    watcher = TrustListWatcher(data_dir, own_key=_key(9))
    assert len(watcher.current) == 0 and watcher.poll() is None
    edit_trust_list(data_dir, lambda t: t.with_peer(_entry("ON", 1)))
    new = watcher.poll()
    assert new is not None and [p.name for p in new] == ["ON"]
    assert watcher.poll() is None
    data_dir.peers_path.write_text("[[peer]]\nname = 'broken'\n", "utf-8")
    with pytest.raises(ConfigError):
        watcher.poll()
    assert [p.name for p in watcher.current] == ["ON"]
    assert watcher.poll() is None  # the same bad file is reported once
    save_trust_list(data_dir, TrustList([_entry("ON", 1), _entry("FED", 2)]))
    new = watcher.poll()
    assert new is not None and [p.name for p in new] == ["ON", "FED"]


# --- create_node ---------------------------------------------------------------------


def test_create_node_writes_all_files_with_modes(tmp_path: Path) -> None:
    d = DataDir(tmp_path / "qc")
    identity = Identity(bytes(range(32)))
    create_node(d, NodeConfig(name="QC"), identity)
    modes = {p.name: stat.S_IMODE(os.stat(p).st_mode) for p in d.root.iterdir()}
    assert modes == {"entraide.toml": 0o644, "peers.toml": 0o644, "node.pub": 0o644,
                     "node.key": 0o600, ".lock": 0o600}
    assert stat.S_IMODE(os.stat(d.root).st_mode) == 0o700
    assert load_node_config(d).name == "QC"
    assert len(load_trust_list(d)) == 0
    assert d.load_identity().public_key == identity.public_key


def test_create_node_refuses_existing_node_and_changes_nothing(tmp_path: Path) -> None:
    d = DataDir(tmp_path / "qc")
    create_node(d, NodeConfig(name="QC"), Identity(bytes(32)))
    before = {p.name: p.read_bytes() for p in d.root.iterdir()}
    with pytest.raises(NodeExistsError, match="already exists"):
        create_node(d, NodeConfig(name="ON"), Identity(bytes(range(32))))
    assert {p.name: p.read_bytes() for p in d.root.iterdir()} == before


def test_create_node_can_be_rerun_after_a_partial_init_and_keeps_peers(tmp_path: Path) -> None:
    d = DataDir(tmp_path / "qc")
    d.create()
    save_trust_list(d, TrustList([_entry("ON", 1)]))
    d.config_path.write_text("half-written", "utf-8")
    create_node(d, NodeConfig(name="QC"), Identity(bytes(32)), b"pw", **CHEAP_KDF)
    assert load_node_config(d).name == "QC"
    assert [p.name for p in load_trust_list(d)] == ["ON"]
    assert d.key_is_sealed()


def test_trust_list_refuses_two_keys_with_one_key_id(monkeypatch: pytest.MonkeyPatch) -> None:
    TrustList([_entry("ON", 1), _entry("FED", 2)])  # distinct ids: fine
    monkeypatch.setattr(PublicKey, "key_id", property(lambda self: b"\x00" * 8))
    with pytest.raises(DuplicatePeerError, match="same key id"):
        TrustList([_entry("ON", 1), _entry("FED", 2)])
    with pytest.raises(DuplicatePeerError, match="this node"):
        TrustList([_entry("ON", 1)], own_key=_key(3))
