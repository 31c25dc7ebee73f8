"""Chain-authenticated catch-up with real nodes on 127.0.0.1 (docs/protocol.md §3).

A node that catches up checks each received run of one origin's entries with one
signature (protocol/chainrun.py ``verify_batch``, run by the verify pool); a tampered
run is refused whole and its sender counted; a fork brought by a run is still proven.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import aiohttp
import pytest

from agent.peering.links import run_handshake
from agent.peering.replicator import TrustedPeer
from protocol import chainrun
from protocol.encoding import decode, encode
from protocol.entries import VerifiedEntry, decode_fork_proof, verify_entry
from protocol.keys import Identity, PublicKey
from protocol.messages import Entries, encode_message
from protocol.session import Session
from tests.agent.nodes import FAST_TRANSPORT, Federation, Node, make_entries, wait_for

# Threads only: every check runs in this process, where it can be counted.
IN_PROCESS = dataclasses.replace(FAST_TRANSPORT, verify_processes=0)


async def test_chainrun_fresh_node_catches_up_with_one_signature_per_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checks = {"sigs": 0}
    real = chainrun._check_signature

    def counted(entry: VerifiedEntry) -> None:
        checks["sigs"] += 1
        real(entry)

    monkeypatch.setattr(chainrun, "_check_signature", counted)
    async with Federation.start(tmp_path, 2, transport=IN_PROCESS) as fed:
        writer, late = fed.nodes
        await fed.wait_connected()
        await late.stop()
        await writer.write(3000)
        checks["sigs"] = 0
        await late.restart()
        await wait_for(lambda: late.head_seq(writer.key) == 3000, timeout=120,
                       what="3,000 entries caught up")
        assert (await late.db.verify()).ok
        assert fed.converged()
    # Runs of up to a WANT reply's entries: far fewer checks than entries.
    assert 0 < checks["sigs"] <= 3000 // 10, checks


def _with_sig(entry: VerifiedEntry, sig: bytes) -> bytes:
    header, body = decode(entry.raw)
    fields = decode(header)
    fields[10] = sig
    return bytes(encode([encode(fields), body]))


def decode_origin(raw: bytes) -> PublicKey:
    return verify_entry(raw).origin


async def _send_as(node: Node, evil: Identity, raws: list[bytes], *, refused: bool) -> None:
    """Push ``raws`` as one ENTRIES message from ``evil``; with ``refused``, wait until the
    node cut it off, else until the node stored the run's newest entry."""
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(node.url + "/peer/v1", max_msg_size=4 << 20)
        session = Session(evil, initiator=True, is_trusted=lambda k: k == node.key,
                          ephemeral_seed=b"v" * 32)
        await run_handshake(ws, session, 5.0)
        await wait_for(lambda: evil.public_key in node.repl.connected(), what="evil attached")
        await ws.send_bytes(session.send(encode_message(Entries(tuple(raws), push=True))))
        if refused:
            await wait_for(lambda: evil.public_key not in node.repl.connected(),
                           what="evil cut off")
        else:
            await wait_for(lambda: node.db.is_forked(decode_origin(raws[-1])),
                           what="the fork detected")


@pytest.mark.parametrize("where", ["middle", "newest"])
async def test_chainrun_tampered_run_is_refused_whole(tmp_path: Path, where: str) -> None:
    evil = Identity(b"!" * 32)
    async with Federation.start(tmp_path, 2, transport=IN_PROCESS) as fed:
        a, b = fed.nodes
        a.set_trust([*fed.trust_for(0), TrustedPeer("EVIL", evil.public_key, None)])
        await fed.wait_connected()
        before = a.head_seq(b.key)
        run = make_entries(b.identity, 6, head=b.db.head(b.key))  # B's next six entries
        raws = [e.raw for e in run]
        # The middle entry's signature changed (its hash, hence the next link, breaks),
        # or the newest one's (the run's one signature check fails).
        at = 2 if where == "middle" else 5
        raws[at] = _with_sig(run[at], bytes(64))
        await _send_as(a, evil, raws, refused=True)
        await wait_for(lambda: a.repl.counters["EVIL"].errors.get("bad_entries", 0) >= 1,
                       what="bad entries counted")
        assert a.head_seq(b.key) == before  # not one entry of the run stored
        assert not a.db.is_forked(b.key)
        # The genuine entries still arrive from B itself.
        await b.db.ingest(run)
        b.repl.publish(run)
        await wait_for(lambda: a.head_seq(b.key) == before + 6, what="B's genuine run")


async def test_chainrun_fork_in_a_run_is_detected(tmp_path: Path) -> None:
    evil = Identity(b"!" * 32)
    async with Federation.start(tmp_path, 2, transport=IN_PROCESS) as fed:
        a, b = fed.nodes
        a.set_trust([*fed.trust_for(0), TrustedPeer("EVIL", evil.public_key, None)])
        await fed.wait_connected()
        written = await b.write(5)
        await wait_for(lambda: a.head_seq(b.key) == 5, what="B's five entries at A")
        # B's key signs a second version of seqs 3..6 (an equivocating origin), relayed
        # as one run: the run verifies, the ledger proves the fork at seq 3.
        second = make_entries(b.identity, 4, head=(2, written[1].hash), tag="fork")
        await _send_as(a, evil, [e.raw for e in second], refused=False)
        (record,) = await a.db.forks()
        assert record.origin == b.key and record.seq == 3
        proof = decode_fork_proof(record.proof)  # both signatures verify
        assert {proof.a.hash, proof.b.hash} == {written[2].hash, second[0].hash}
