"""Chain-authenticated runs (protocol/chainrun.py, docs/protocol.md §3)."""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

import pytest

from protocol.chainrun import MAX_RUN_ENTRIES, fork_in_run, verify_batch, verify_run
from protocol.encoding import decode, encode
from protocol.entries import (
    TLP,
    VerifiedEntry,
    check_successor,
    decode_fork_proof,
    sign_entry,
    verify_entry,
)
from protocol.errors import BadSignatureError, ChainError, EntraideError, OversizeError
from protocol.keys import Identity

QC = Identity(hashlib.blake2b(b"test/chainrun/QC", digest_size=32).digest())
ON = Identity(hashlib.blake2b(b"test/chainrun/ON", digest_size=32).digest())
REPO = Path(__file__).resolve().parents[2]


def chain(identity: Identity, count: int, *, start: int = 1, prev: bytes | None = None,
          tag: bytes = b"") -> list[VerifiedEntry]:
    out = []
    for seq in range(start, start + count):
        tlp = TLP.AMBER if seq % 3 == 0 else TLP.GREEN
        entry = sign_entry(identity, seq=seq, prev=prev, now_ms=1_700_000_000_000 + seq,
                           tlp=tlp, audience=(b"\x01" * 8,) if tlp.encrypted else None,
                           body=tag + f"body {seq}".encode(),
                           expires_ms=1_800_000_000_000 if seq % 2 else 0)
        out.append(entry)
        prev = entry.hash
    return out


def head_of(entry: VerifiedEntry) -> tuple[int, bytes]:
    return entry.seq, entry.hash


def test_chainrun_accepts_a_run_from_scratch_and_after_a_head() -> None:
    entries = chain(QC, 6)
    got = verify_run([e.raw for e in entries], None)
    assert got == tuple(entries)
    assert [e.id for e in got] == [e.id for e in entries]
    later = verify_run([e.raw for e in entries[3:]], head_of(entries[2]))
    assert later == tuple(entries[3:])
    assert verify_run([], None) == ()


def test_chainrun_header_only_entries_are_chain_members() -> None:
    entries = chain(QC, 4)
    raws = [entries[0].raw, entries[1].without_body().raw, entries[2].without_body().raw,
            entries[3].raw]
    got = verify_run(raws, None)
    assert [e.has_body for e in got] == [True, False, False, True]
    assert [e.hash for e in got] == [e.hash for e in entries]


@pytest.mark.parametrize("anchored", [False, True])
def test_chainrun_every_flipped_byte_refuses_the_run(anchored: bool) -> None:
    entries = chain(QC, 5)
    head = head_of(entries[1]) if anchored else None
    run = entries[2:] if anchored else entries
    raws = [e.raw for e in run]
    assert verify_run(raws, head) == tuple(run)
    tried = 0
    for i, raw in enumerate(raws):
        for pos in range(len(raw)):
            for mask in (0x01, 0x80):
                bad = bytearray(raw)
                bad[pos] ^= mask
                tampered = [*raws[:i], bytes(bad), *raws[i + 1:]]
                with pytest.raises(EntraideError):
                    verify_run(tampered, head)
                tried += 1
    assert tried == 2 * sum(len(r) for r in raws)


def test_chainrun_bad_head_signature_refuses_the_whole_run() -> None:
    entries = chain(QC, 5)
    header, body = decode(entries[-1].raw)
    fields = decode(header)
    fields[10] = bytes(64)  # still canonical, same length: only the signature is wrong
    forged = encode([encode(fields), body])
    raws = [e.raw for e in entries[:-1]] + [forged]
    with pytest.raises(BadSignatureError):
        verify_run(raws, None)
    # Signed by another key: the same.
    other = sign_entry(ON, seq=5, prev=entries[3].hash, now_ms=1, tlp=TLP.GREEN,
                       audience=None, body=b"x")
    fields = decode(decode(other.raw)[0])
    fields[1] = QC.public_key.raw
    with pytest.raises(BadSignatureError):
        verify_run([e.raw for e in entries[:-1]] + [encode([encode(fields), None])], None)


def test_chainrun_refuses_gaps_other_origins_and_wrong_anchors() -> None:
    entries = chain(QC, 5)
    raws = [e.raw for e in entries]
    with pytest.raises(ChainError):
        verify_run(raws[:2] + raws[3:], None)  # gap
    with pytest.raises(ChainError):
        verify_run(raws[1:], None)  # does not start at 1
    with pytest.raises(ChainError):
        verify_run(raws[2:], head_of(entries[0]))  # head is seq 1, run starts at 3
    with pytest.raises(ChainError):
        verify_run(raws[2:], (2, bytes(32)))  # head hash not the run's prev
    with pytest.raises(ChainError):
        verify_run([raws[1], raws[0]], None)  # out of order
    on = chain(ON, 2)
    with pytest.raises(ChainError):
        verify_run([raws[0], on[1].raw], None)  # two origins
    with pytest.raises(OversizeError):
        verify_run([raws[0]] * (MAX_RUN_ENTRIES + 1), None)


def test_chainrun_a_forked_run_is_refused_and_its_fork_proven() -> None:
    held = chain(QC, 6)
    # The origin signs a second version of seq 4 onwards.
    forked = chain(QC, 4, start=4, prev=held[2].hash, tag=b"fork ")
    by_seq = {e.seq: e for e in held}
    # Appended after our head (seq 6), the forked run does not link: refused.
    with pytest.raises(ChainError):
        verify_run([e.raw for e in forked[3:]], head_of(held[5]))
    # Run over the held range, it links to seq 3 but conflicts with 4..6.
    assert verify_run([e.raw for e in forked], head_of(held[2])) == tuple(forked)
    proof = fork_in_run(by_seq.get, [e.raw for e in forked])
    assert proof is not None and proof.seq == 4
    assert {proof.a.hash, proof.b.hash} == {held[3].hash, forked[0].hash}
    decoded = decode_fork_proof(proof.encode())  # both signatures verify
    assert decoded.a.hash == proof.a.hash
    # The same run as we hold it is no fork.
    assert fork_in_run(by_seq.get, [e.raw for e in held]) is None


def test_chainrun_no_fork_proof_from_an_unchecked_signature() -> None:
    held = chain(QC, 4)
    forked = chain(QC, 3, start=2, prev=held[0].hash, tag=b"fork ")
    # Seq 2 of the forked version with a broken signature, its successors re-signed over
    # it: only the origin can make such a run, and seq 2 proves nothing on its own.
    header, body = decode(forked[0].raw)
    fields = decode(header)
    fields[10] = bytes(64)
    bad2 = encode([encode(fields), body])
    bad2_hash = hashlib.blake2b(encode(fields), digest_size=32).digest()
    rest = chain(QC, 2, start=3, prev=bad2_hash, tag=b"fork ")
    raws = [bad2, *(e.raw for e in rest)]
    # Chain-authenticated: the origin endorsed seq 2 by signing seq 3 over its hash.
    got = verify_run(raws, head_of(held[0]))
    assert [e.seq for e in got] == [2, 3, 4]
    with pytest.raises(BadSignatureError):
        verify_entry(bad2)
    by_seq = {e.seq: e for e in held}
    proof = fork_in_run(by_seq.get, raws)
    assert proof is not None and proof.seq == 3  # the first conflict that is signed
    decode_fork_proof(proof.encode())


def test_chainrun_matches_per_entry_verification() -> None:
    entries = chain(QC, 8)
    run = verify_run([e.raw for e in entries], None)
    link = None
    for got, raw in zip(run, (e.raw for e in entries), strict=True):
        one = verify_entry(raw)
        check_successor(link, one)
        link = (one.seq, one.hash)
        assert got == one and got.__dict__.keys() == one.__dict__.keys()
        assert all(getattr(got, k) == getattr(one, k) for k in one.__dict__ if k != "_token")


def test_chainrun_chain_member_has_one_caller() -> None:
    """``_chain_member`` skips the signature: only protocol/chainrun.py may call it."""
    callers = []
    for path in [*(REPO / "protocol").glob("*.py"), *(REPO / "agent").rglob("*.py")]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Name | ast.Attribute):
                name = node.id if isinstance(node, ast.Name) else node.attr
                if name == "_chain_member":
                    callers.append(path.name)
    assert set(callers) <= {"entries.py", "chainrun.py"} and "chainrun.py" in callers


# --- verify_batch: what the node's verify pool runs on each received batch ------------


def _forge_sig(raw: bytes) -> bytes:
    header, body = decode(raw)
    fields = decode(header)
    fields[10] = bytes(64)
    return encode([encode(fields), body])


def test_chainrun_batch_verifies_interleaved_origins_run_by_run() -> None:
    qc, on = chain(QC, 6), chain(ON, 4, tag=b"on ")
    # Interleaved, and ON's run starting mid-chain (its link to the stored head is the
    # ledger's to check): every entry out, in order, equal to per-entry verification.
    raws = [qc[0].raw, on[1].raw, qc[1].raw, qc[2].raw, on[2].raw, on[3].raw, qc[3].raw,
            qc[4].raw, qc[5].raw]
    got = verify_batch(raws)
    assert [e.raw if e else None for e in got] == raws
    assert got == [verify_entry(r) for r in raws]
    assert verify_batch([]) == []
    # A lone entry (live gossip) is its own signature check.
    assert verify_batch([qc[3].raw]) == [qc[3]]
    assert verify_batch([_forge_sig(qc[3].raw)]) == [None]


def test_chainrun_batch_never_gives_out_a_flipped_byte() -> None:
    entries = chain(QC, 4)
    raws = [e.raw for e in entries]
    for i, raw in enumerate(raws):
        for pos in range(len(raw)):
            bad = bytearray(raw)
            bad[pos] ^= 0x01
            tampered = [*raws[:i], bytes(bad), *raws[i + 1:]]
            got = verify_batch(tampered)
            assert got[i] is None, (i, pos)
            # Whatever else is given out is an untouched entry of the origin.
            assert all(e is None or e.raw in raws for e in got)


def test_chainrun_batch_refuses_a_run_whole() -> None:
    qc, on = chain(QC, 5), chain(ON, 3, tag=b"on ")
    # The newest signature forged: the whole run is refused, the other origin's is not.
    raws = [e.raw for e in qc[:-1]] + [_forge_sig(qc[-1].raw)] + [e.raw for e in on]
    assert verify_batch(raws) == [None] * 5 + on
    # A broken link inside a run (seq 3 of another version): refused whole.
    other = chain(QC, 3, tag=b"other ")
    assert verify_batch([qc[0].raw, qc[1].raw, other[2].raw, qc[3].raw, qc[4].raw]) \
        == [None] * 5
    # An entry that does not decode is refused alone; it ends the run it was in.
    assert verify_batch([qc[0].raw, b"\x92junk", qc[1].raw]) == [qc[0], None, qc[1]]
