"""A full disk (issue 17): a write the ledger cannot store is 507 ``storage_full`` in the
reader's language, not 500 ``storage_error``; nothing of it is stored, reads go on, and
the same write succeeds once space is back. The data dir is on a real tmpfs of a few
MB that the test fills (root only)."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.errors import StorageError, StorageFullError
from agent.storage.core import write_failed
from agent.storage.ledger import Ledger
from agent.taxii.app import API_ROOT, COLLECTIONS
from agent.web.failures import FAILURE_LOG
from protocol.keys import Identity, PublicKey
from tests.agent._api_helpers import identity, ip, obs, running_api
from tests.agent.nodes import make_entries

SIZE = "8m"
TAXII = "application/taxii+json;version=2.1"


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


async def test_full_disk_refusals_are_logged_once_a_minute_with_a_count(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A client retrying a write in a loop on a full disk: one ERROR line, then at
    most one a minute saying how many were left out, not one per attempt."""
    with small_disk(tmp_path / "disk") as disk:
        async with running_api(disk) as api:
            now = [1000.0]
            api.client.app[FAILURE_LOG].clock = lambda: now[0]
            filler = fill(disk)
            caplog.set_level(logging.ERROR)
            for n in range(6):
                status, body = await api.call("POST", "/api/v1/observations", scope="write",
                                              json_body=batch(5000 + 100 * n, 5))
                assert status == 507, body

            def lines() -> list[str]:
                return [r.getMessage() for r in caplog.records
                        if r.levelno >= logging.ERROR and "failed" in r.getMessage()]

            assert len(lines()) == 1 and "full" in lines()[0]
            now[0] += 61
            status, _ = await api.call("POST", "/api/v1/observations", scope="write",
                                       json_body=batch(6000, 5))
            assert status == 507
            assert len(lines()) == 2 and "5 more like it not logged" in lines()[1]
            filler.unlink()


async def test_full_disk_taxii_post_is_507_and_nothing_stored(tmp_path: Path) -> None:
    """A TAXII post on a full disk answers 507 storage_full as a TAXII error message
    (the whole post, not one failure per object); nothing of it is stored, and the
    same envelope goes in once space is back."""
    objects = [{"type": "indicator", "spec_version": "2.1",
                "id": f"indicator--{n:08x}-2222-4222-8222-222222222222",
                "created": "2024-01-01T00:00:00.000Z", "modified": "2024-01-01T00:00:00.000Z",
                "pattern": f"[ipv4-addr:value = '{ip(n)}']", "pattern_type": "stix",
                "valid_from": "2024-01-01T00:00:00Z", "description": "x" * 400}
               for n in range(40)]
    path = f"{API_ROOT}collections/{COLLECTIONS[1].id}/objects/"
    with small_disk(tmp_path / "disk") as disk:
        async with running_api(disk) as api:

            async def post(lang: str = "en") -> tuple[int, str, dict[str, object]]:
                async with api.client.post(path, data=json.dumps({"objects": objects}),
                                           headers={**api.auth("write"), "Accept": TAXII,
                                                    "Content-Type": TAXII,
                                                    "Accept-Language": lang}) as resp:
                    return resp.status, resp.headers["Content-Type"], await resp.json(
                        content_type=None)

            status, _, body = await post()  # the index opens (and takes its space) first
            assert status == 202 and body["success_count"] == 40, body
            objects = [{**o, "id": o["id"].replace("2222-4222", "4444-4444")} for o in objects]
            before = api.node.ledger.counts()
            filler = fill(disk)
            status, media, body = await post()
            assert (status, media) == (507, TAXII), body
            assert body["error_code"] == "storage_full" and body["http_status"] == "507"
            assert "full" in str(body["description"])
            status, _, body = await post("fr")
            assert status == 507 and "plein" in str(body["description"]), body
            assert api.node.ledger.counts() == before

            filler.unlink()
            status, _, body = await post()
            assert status == 202 and body["success_count"] == 40, body
            assert body["failure_count"] == 0


def test_taxii_disk_filled_mid_post_says_how_many_objects_went_in() -> None:
    """A disk that fills between two commits of one envelope: the 507 says how many
    objects were stored (whole) before it, in the reader's language."""
    from aiohttp.test_utils import make_mocked_request

    from agent.taxii.app import _storage_full
    from agent.taxii.post import DiskFullDuringPost

    for lang, words in (("en", "3 of its objects were stored"),
                        ("fr", "3 de ses objets ont été stockés")):
        request = make_mocked_request("POST", "/", headers={"Accept-Language": lang})
        error = _storage_full(request, DiskFullDuringPost(3))
        assert (error.status, error.code) == (507, "storage_full")
        assert words in error.description and error.headers["Content-Language"] == lang
    nothing = _storage_full(make_mocked_request("POST", "/"), DiskFullDuringPost(0))
    assert nothing.description == StorageFullError.MESSAGE
