"""Data dir: path resolution, atomic writes, stamps and key files."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import nacl.pwhash.argon2id
import pytest

from agent.config.datadir import (
    DataDir,
    atomic_write,
    file_stamp,
    passphrase_from_env,
    read_bounded,
    resolve_data_dir,
)
from agent.errors import ConfigError, NodeExistsError
from protocol.errors import PassphraseError
from protocol.keys import Identity

CHEAP_KDF: dict[str, Any] = {
    "opslimit": nacl.pwhash.argon2id.OPSLIMIT_MIN,
    "memlimit": nacl.pwhash.argon2id.MEMLIMIT_MIN,
}


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def data_dir(tmp_path: Path) -> DataDir:
    d = DataDir(tmp_path / "node")
    d.create()
    return d


def test_resolve_data_dir_prefers_argument_then_env_then_default() -> None:
    env = {"ENTRAIDE_HOME": "/srv/entraide"}
    assert resolve_data_dir("/x", env) == Path("/x")
    assert resolve_data_dir(None, env) == Path("/srv/entraide")
    assert resolve_data_dir("", env) == Path("/srv/entraide")
    assert resolve_data_dir(None, {}) == Path("entraide-data")
    assert resolve_data_dir(None, {"ENTRAIDE_HOME": ""}) == Path("entraide-data")


def test_passphrase_from_env_refuses_unset_or_empty() -> None:
    assert passphrase_from_env("P", {"P": "é"}) == "é".encode()
    with pytest.raises(ConfigError, match="P is unset"):
        passphrase_from_env("P", {})
    with pytest.raises(ConfigError):
        passphrase_from_env("P", {"P": ""})


def test_data_dir_create_makes_private_directory(tmp_path: Path) -> None:
    d = DataDir(tmp_path / "a" / "b")
    d.create()
    assert _mode(d.root) == 0o700
    os.chmod(d.root, 0o755)
    d.create()
    assert _mode(d.root) == 0o700


def test_data_dir_create_refuses_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        DataDir(tmp_path / "f").create()


def test_atomic_write_replaces_content_with_mode_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "f.toml"
    atomic_write(path, b"one", mode=0o600)
    atomic_write(path, b"two", mode=0o600)
    assert path.read_bytes() == b"two"
    assert _mode(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.toml"]


def test_atomic_write_exclusive_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    atomic_write(path, b"first", exclusive=True)
    with pytest.raises(FileExistsError):
        atomic_write(path, b"second", exclusive=True)
    assert path.read_bytes() == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node.key"]


def test_file_stamp_changes_on_replace_and_is_none_when_missing(tmp_path: Path) -> None:
    path = tmp_path / "f"
    assert file_stamp(path) is None
    atomic_write(path, b"same")
    first = file_stamp(path)
    atomic_write(path, b"same")
    assert first is not None and file_stamp(path) != first


def test_read_bounded_refuses_larger_files(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 11)
    assert read_bounded(path, 11) == b"x" * 11
    with pytest.raises(ConfigError, match="larger than 10 bytes"):
        read_bounded(path, 10)


def test_write_identity_plain_round_trips(data_dir: DataDir) -> None:
    identity = Identity(bytes(range(32)))
    data_dir.write_identity(identity)
    assert _mode(data_dir.key_path) == 0o600
    assert data_dir.load_identity().public_key == identity.public_key
    assert data_dir.public_key() == identity.public_key
    assert not data_dir.key_is_sealed()


def test_write_identity_refuses_existing_key(data_dir: DataDir) -> None:
    data_dir.write_identity(Identity(bytes(32)))
    with pytest.raises(NodeExistsError):
        data_dir.write_identity(Identity(bytes(range(32))))
    assert data_dir.load_identity().public_key == Identity(bytes(32)).public_key


def test_load_identity_sealed_needs_the_right_passphrase(data_dir: DataDir) -> None:
    identity = Identity(bytes(range(32)))
    data_dir.write_identity(identity, b"correct horse", **CHEAP_KDF)
    assert data_dir.key_is_sealed()
    assert b"correct" not in data_dir.key_path.read_bytes()
    with pytest.raises(PassphraseError, match="wrong passphrase"):
        data_dir.load_identity(b"wrong horse")
    with pytest.raises(PassphraseError, match="passphrase is needed"):
        data_dir.load_identity()
    assert data_dir.load_identity(b"correct horse").public_key == identity.public_key
    # The public key is available without the passphrase, from node.pub.
    assert data_dir.public_key() == identity.public_key


def test_load_identity_refuses_key_readable_by_others(data_dir: DataDir) -> None:
    data_dir.write_identity(Identity(bytes(32)))
    os.chmod(data_dir.key_path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        data_dir.load_identity()


def test_load_identity_refuses_pub_that_does_not_match(data_dir: DataDir) -> None:
    data_dir.write_identity(Identity(bytes(32)))
    data_dir.pub_path.write_text(Identity(bytes(range(32))).public_key.text + "\n")
    with pytest.raises(ConfigError, match="does not match"):
        data_dir.load_identity()
    with pytest.raises(ConfigError, match="does not match"):
        data_dir.public_key()


def test_public_key_of_sealed_key_without_pub_is_an_error(data_dir: DataDir) -> None:
    data_dir.write_identity(Identity(bytes(32)), b"pw", **CHEAP_KDF)
    data_dir.pub_path.unlink()
    with pytest.raises(ConfigError, match=r"node\.pub"):
        data_dir.public_key()


def test_load_identity_reports_missing_or_damaged_key(data_dir: DataDir) -> None:
    with pytest.raises(ConfigError, match="entraide init"):
        data_dir.load_identity()
    atomic_write(data_dir.key_path, b"garbage\n", mode=0o600)
    with pytest.raises(ConfigError, match=r"node\.key"):
        data_dir.load_identity()


def test_require_node_explains_the_way_out(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="entraide init"):
        DataDir(tmp_path).require_node()
