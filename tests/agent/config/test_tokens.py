"""API tokens: scopes, creation, hashed storage, authentication, live reload."""

from __future__ import annotations

import base64
import hashlib
import itertools
import logging
import os
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.config.datadir import DataDir
from agent.config.tokens import Scope, TokenStore, authenticate, hash_token, token_of
from agent.errors import AuthError, ConfigError, ScopeError, UnknownTokenError


@pytest.fixture
def data_dir(tmp_path: Path) -> DataDir:
    d = DataDir(tmp_path / "node")
    d.create()
    return d


@pytest.mark.parametrize(
    ("held", "required", "allowed"),
    [
        (Scope.READ, Scope.READ, True),
        (Scope.READ, Scope.WRITE, False),
        (Scope.READ, Scope.ADMIN, False),
        (Scope.WRITE, Scope.READ, True),
        (Scope.WRITE, Scope.WRITE, True),
        (Scope.WRITE, Scope.ADMIN, False),
        (Scope.ADMIN, Scope.READ, True),
        (Scope.ADMIN, Scope.WRITE, True),
        (Scope.ADMIN, Scope.ADMIN, True),
    ],
)
def test_scope_allows_its_own_and_lower_scopes(held: Scope, required: Scope, allowed: bool) -> None:
    assert held.allows(required) is allowed


def test_token_store_create_returns_ent_token_that_authenticates(data_dir: DataDir) -> None:
    store = TokenStore(data_dir)
    token = store.create(Scope.WRITE, "siem")
    assert token.startswith("ent_") and len(token) == 47
    record = store.authenticate(token)
    assert record is not None
    assert (record.name, record.scope) == ("siem", Scope.WRITE)
    assert record.hash == "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def test_token_store_stores_only_the_hash_in_a_private_file(data_dir: DataDir) -> None:
    token = TokenStore(data_dir).create(Scope.ADMIN)
    text = data_dir.tokens_path.read_text("utf-8")
    assert token not in text and token[4:] not in text
    assert hash_token(token) in text
    assert stat.S_IMODE(os.stat(data_dir.tokens_path).st_mode) == 0o600


def test_token_store_uses_given_randomness_and_clock(data_dir: DataDir) -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, 678, tzinfo=UTC)
    store = TokenStore(data_dir, randbytes=lambda n: b"\xff" * n, clock=lambda: moment)
    token = store.create(Scope.READ)
    assert token == "ent_" + "_" * 42 + "8"  # 256 one bits: 42 x "_" then 1111 + 00
    (record,) = store.records()
    assert record.created == moment.replace(microsecond=0)
    assert record.to_json() == {"name": "read-1", "scope": "read",
                                "created": "2026-01-02T03:04:05Z"}


@pytest.mark.parametrize(
    "candidate",
    ["", "ent_", "Bearer x", "ent_" + "A" * 43, "ent_" + "A" * 44, "ent_" + "!" * 43, "é" * 47],
)
def test_token_store_authenticate_refuses_unknown_or_malformed(
    data_dir: DataDir, candidate: str
) -> None:
    store = TokenStore(data_dir)
    store.create(Scope.ADMIN)
    assert store.authenticate(candidate) is None


def test_token_store_authenticate_refuses_one_character_off(data_dir: DataDir) -> None:
    store = TokenStore(data_dir)
    token = store.create(Scope.READ)
    last = "A" if token[-1] != "A" else "B"
    assert store.authenticate(token[:-1] + last) is None


def test_token_store_default_names_count_up_per_scope(data_dir: DataDir) -> None:
    store = TokenStore(data_dir)
    for scope in (Scope.READ, Scope.READ, Scope.ADMIN):
        store.create(scope)
    assert [r.name for r in store.records()] == ["read-1", "read-2", "admin-1"]


@pytest.mark.parametrize("name", ["", "-x", "a b", "x" * 65, "é"])
def test_token_store_create_refuses_bad_names(data_dir: DataDir, name: str) -> None:
    with pytest.raises(ConfigError, match="bad token name"):
        TokenStore(data_dir).create(Scope.READ, name)


def test_token_store_create_refuses_duplicate_names(data_dir: DataDir) -> None:
    store = TokenStore(data_dir)
    store.create(Scope.READ, "siem")
    with pytest.raises(ConfigError, match="already exists"):
        store.create(Scope.ADMIN, "siem")
    assert len(store.records()) == 1


def test_token_store_sees_tokens_created_and_revoked_by_another_store(data_dir: DataDir) -> None:
    daemon = TokenStore(data_dir)
    assert daemon.records() == ()
    cli = TokenStore(data_dir)
    token = cli.create(Scope.READ, "late")
    assert daemon.authenticate(token) is not None
    cli.revoke("late")
    assert daemon.authenticate(token) is None


def test_token_store_revoke_unknown_name(data_dir: DataDir) -> None:
    with pytest.raises(UnknownTokenError):
        TokenStore(data_dir).revoke("nope")


def test_token_store_fails_closed_on_a_broken_file(
    data_dir: DataDir, caplog: pytest.LogCaptureFixture
) -> None:
    store = TokenStore(data_dir)
    token = store.create(Scope.ADMIN, "root")
    good = data_dir.tokens_path.read_text("utf-8")
    data_dir.tokens_path.write_text(good + "\n[[token]]\nname = 'x'\n", "utf-8")
    with caplog.at_level(logging.ERROR, logger="agent.config.tokens"):
        assert store.authenticate(token) is None
        assert store.authenticate(token) is None
    assert len([r for r in caplog.records if "refusing every token" in r.message]) == 1
    with pytest.raises(ConfigError, match="token #2"):
        store.records()
    data_dir.tokens_path.write_text(good, "utf-8")
    assert store.authenticate(token) is not None


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("x = 1\n", "unknown setting"),
        ("token = 'x'\n", "tables"),
        ("[[token]]\nname='a'\nscope='root'\ncreated=2026-01-01T00:00:00Z\nhash='sha256:"
         + "0" * 64 + "'\n", "scope"),
        ("[[token]]\nname='a'\nscope='read'\ncreated=2026-01-01T00:00:00\nhash='sha256:"
         + "0" * 64 + "'\n", "time zone"),
        ("[[token]]\nname='a'\nscope='read'\ncreated=2026-01-01T00:00:00Z\nhash='md5:00'\n",
         "hash"),
        ("[[token]]\nname='a'\nscope='read'\ncreated=2026-01-01T00:00:00Z\nhash='sha256:"
         + "0" * 64 + "'\n" + "[[token]]\nname='a'\nscope='read'\n"
         "created=2026-01-01T00:00:00Z\nhash='sha256:" + "1" * 64 + "'\n", "share a name"),
        ("[[token", "TOML"),
    ],
)
def test_token_store_refuses_invalid_files(data_dir: DataDir, body: str, match: str) -> None:
    data_dir.tokens_path.write_text(body, "utf-8")
    with pytest.raises(ConfigError, match=match):
        TokenStore(data_dir).records()


def test_token_store_refuses_more_than_max_tokens(data_dir: DataDir) -> None:
    counter = itertools.count()
    lines = [
        f"[[token]]\nname='t{i}'\nscope='read'\ncreated=2026-01-01T00:00:00Z\n"
        f"hash='sha256:{i:064x}'\n"
        for i in itertools.islice(counter, 1001)
    ]
    data_dir.tokens_path.write_text("".join(lines), "utf-8")
    with pytest.raises(ConfigError, match="1000"):
        TokenStore(data_dir).records()


# --- the one check of a request -----------------------------------------------------


def basic(text: str) -> str:
    return "Basic " + base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    ("header", "bearer", "taxii"),
    [
        (None, None, None),
        ("", None, None),
        ("Bearer tok", "tok", "tok"),
        ("bEaReR   tok  ", "tok", "tok"),
        ("Bearer", None, None),
        ("Bearer ", None, None),
        ("Bearer\ttok", None, None),
        ("Token tok", None, "tok"),
        (basic("user:tok"), None, "tok"),
        (basic("tok"), None, "tok"),
        (basic("tok:"), None, "tok"),
        (basic(":"), None, None),
        ("Basic !!!", None, None),
        ("Basic " + base64.b64encode(b"\xff:\xfe").decode(), None, None),
        ("Digest tok", None, None),
    ],
)
def test_token_of_reads_bearer_and_with_basic_taxii_s_schemes(
    header: str | None, bearer: str | None, taxii: str | None
) -> None:
    assert token_of(header) == bearer
    assert token_of(header, basic=True) == taxii


def test_authenticate_returns_the_record_of_a_token_with_the_scope(data_dir: DataDir) -> None:
    store = TokenStore(data_dir)
    token = store.create(Scope.WRITE, "siem")
    for scope in (Scope.READ, Scope.WRITE):
        assert authenticate(store, f"Bearer {token}", scope).name == "siem"
    assert authenticate(store, basic(f"x:{token}"), Scope.READ, basic=True).name == "siem"


def test_authenticate_refuses_with_the_api_s_messages(data_dir: DataDir) -> None:
    store = TokenStore(data_dir)
    token = store.create(Scope.READ)
    for header in (None, "", "Basic abc", f"Token {token}", "Bearer "):
        with pytest.raises(AuthError, match=r"^a bearer token is required \(Authorization: "
                                            r"Bearer <token>\)$") as missing:
            authenticate(store, header, Scope.READ)
        assert not isinstance(missing.value, ScopeError)
    with pytest.raises(AuthError, match="HTTP Basic with the token as password"):
        authenticate(store, None, Scope.READ, basic=True)
    with pytest.raises(AuthError, match=r"^unknown token$") as unknown:
        authenticate(store, "Bearer ent_" + "A" * 43, Scope.READ)
    assert not isinstance(unknown.value, ScopeError)
    with pytest.raises(ScopeError, match=r"^this needs a token with the write scope; this one "
                                         r"has read$"):
        authenticate(store, f"Bearer {token}", Scope.WRITE)


def test_authenticate_fails_closed_on_a_broken_file(data_dir: DataDir) -> None:
    store = TokenStore(data_dir)
    token = store.create(Scope.ADMIN)
    data_dir.tokens_path.write_text("not toml [", "utf-8")
    with pytest.raises(AuthError, match=r"^unknown token$"):
        authenticate(store, f"Bearer {token}", Scope.READ)
