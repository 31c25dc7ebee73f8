"""A full disk (issue 17): a write the ledger cannot store is 507 ``storage_full`` in the
reader's language, not 500 ``storage_error``; nothing of it is stored, reads go on, and
the same write succeeds once space is back. The data dir is on a real tmpfs of a few
MB that the test fills (root only)."""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.errors import StorageError, StorageFullError
from agent.storage.core import write_failed
from agent.storage.ledger import Ledger
from protocol.keys import Identity, PublicKey
from tests.agent._api_helpers import identity, ip, obs, running_api
from tests.agent.nodes import make_entries

SIZE = "8m"


@contextlib.contextmanager
def small_disk(where: Path) -> Iterator[Path]:
    """A tmpfs of ``SIZE`` mounted at ``where``, unmounted after (skips when not root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE},mode=0700",
                              "tmpfs", str(where)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(disk: Path) -> Path:
    """Write a file until the disk refuses a byte more (ENOSPC); return its path."""
    filler = disk / "filler"
    chunk = b"\0" * 65536
    with filler.open("wb", buffering=0) as out:
        with contextlib.suppress(OSError):
            while True:
                out.write(chunk)
        with contextlib.suppress(OSError):
            while True:
                out.write(b"\0")
    return filler


def batch(start: int, n: int = 50) -> dict[str, object]:
    return {"observations": [obs(ip(start + i), description={"en": "x" * 400})
                             for i in range(n)]}


async def test_full_disk_is_507_and_nothing_half_written(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk") as disk:
        async with running_api(disk) as api:
            status, first = await api.call("POST", "/api/v1/observations", scope="write",
                                           json_body=batch(0))
            assert status == 201, first
            before = api.node.ledger.counts()
            filler = fill(disk)

            status, body = await api.call("POST", "/api/v1/observations", scope="write",
                                          json_body=batch(1000))
            assert status == 507, body
            assert body["error"]["code"] == "storage_full"
            assert "full" in body["error"]["message"]
            status, body = await api.call("POST", "/api/v1/observations", scope="write",
                                          json_body=batch(2000),
                                          headers={"Accept-Language": "fr"})
            assert status == 507, body
            assert body["error"]["code"] == "storage_full"
            assert "plein" in body["error"]["message"]

            # Nothing of the refused batches; reads still answer.
            assert api.node.ledger.counts() == before
            status, listed = await api.call("GET", "/api/v1/observations?limit=500",
                                            scope="read")
            assert status == 200
            assert sorted(o["id"] for o in listed["observations"]) == sorted(first["ids"])
            status, _ = await api.call("GET", f"/api/v1/indicators/ipv4-addr/{ip(1000)}",
                                       scope="read")
            assert status in (200, 404)
            status, _ = await api.call("GET", "/api/v1/health", scope=None)
            assert status == 200
            # peers.toml on the same full disk: 507 too, and the trust list unchanged.
            status, body = await api.call("POST", "/api/v1/peers", json_body={
                "name": "NB", "key": identity("NB").public_key.text})
            assert status == 507 and body["error"]["code"] == "storage_full", body
            status, peers = await api.call("GET", "/api/v1/peers")
            assert status == 200 and "NB" not in {p["name"] for p in peers["peers"]}

            # Space back: the same write goes through, and the chain verifies.
            filler.unlink()
            status, again = await api.call("POST", "/api/v1/observations", scope="write",
                                           json_body=batch(1000))
            assert status == 201, again
            status, verify = await api.call("GET", "/api/v1/ledger/verify")
            assert status == 200 and verify["ok"] is True, verify
            assert api.node.ledger.counts().entries == before.entries + 50


async def test_full_disk_ingest_acknowledges_nothing_it_did_not_store(tmp_path: Path) -> None:
    """Entries from a peer on a full disk: refused whole, and the version vector (what
    the node tells its peers it holds) does not move until they are stored."""
    me, alice = Identity(b"m" * 32), Identity(b"a" * 32)

    def trusted(key: PublicKey) -> bool:
        return key == alice.public_key

    with small_disk(tmp_path / "disk") as disk:
        async with await Ledger.open(disk / "ledger.sqlite3", identity=me,
                                     is_trusted_origin=trusted) as ledger:
            first = make_entries(alice, 10)
            await ledger.ingest(first)
            vector = ledger.version_vector()
            more = make_entries(alice, 500, head=(first[-1].seq, first[-1].hash))
            filler = fill(disk)
            with pytest.raises(StorageFullError):
                await ledger.ingest(more)
            assert ledger.version_vector() == vector
            assert ledger.counts().entries == 10
            filler.unlink()
            await ledger.ingest(more)
            assert ledger.version_vector()[alice.public_key][0] == 510


def test_write_failed_tells_a_full_disk_from_other_failures() -> None:
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorcode = sqlite3.SQLITE_FULL  # type: ignore[attr-defined]
    assert isinstance(write_failed(full), StorageFullError)
    assert isinstance(write_failed(OSError(errno.ENOSPC, "No space left")), StorageFullError)
    # A ROLLBACK failing after the full disk hides it as the context.
    hidden = sqlite3.OperationalError("cannot rollback - no transaction is active")
    hidden.__context__ = full
    assert isinstance(write_failed(hidden), StorageFullError)
    other = write_failed(sqlite3.OperationalError("disk I/O error"))
    assert type(other) is StorageError
    assert "disk I/O error" in str(other)
