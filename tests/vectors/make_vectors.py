"""Regenerate tests/vectors/core.json (run by hand only when the format changes).

    .venv/bin/python tests/vectors/make_vectors.py > tests/vectors/core.json

The vectors are the interop contract: another implementation given the same seeds
and randomness must produce the same bytes.
"""

from __future__ import annotations

import hashlib
import json

from protocol.entries import TLP, detect_fork, sign_entry
from protocol.envelope import seal_envelope
from protocol.keys import Identity


def seeded(label: str) -> Identity:
    return Identity(hashlib.blake2b(label.encode(), digest_size=32).digest())


def counter_rand(label: str):  # deterministic "randomness" for vectors
    state = {"n": 0}

    def randbytes(n: int) -> bytes:
        state["n"] += 1
        return hashlib.blake2b(f"{label}/{state['n']}".encode(), digest_size=64).digest()[:n]

    return randbytes


def main() -> None:
    qc, on, fed = seeded("vector/QC"), seeded("vector/ON"), seeded("vector/FED")
    keys = {name: {"seed": ident.seed.hex(), "key": ident.public_key.text,
                   "fingerprint": ident.public_key.fingerprint,
                   "key_id": ident.public_key.key_id.hex(),
                   "x25519": ident.public_key.x25519.hex()}
            for name, ident in (("QC", qc), ("ON", on), ("FED", fed))}
    e1 = sign_entry(qc, seq=1, prev=None, now_ms=1_790_000_000_000, tlp=TLP.CLEAR,
                    audience=None, body=b"first entry")
    e2 = sign_entry(qc, seq=2, prev=e1.hash, now_ms=1_790_000_000_500, tlp=TLP.GREEN,
                    audience=None, body=bytes(range(256)))
    payload = b"AMBER: 203.0.113.7 is a C2 server"
    audience, body = seal_envelope(payload, [qc.public_key, on.public_key],
                                   counter_rand("vector/envelope"))
    # An AMBER entry whose body every holder drops after 365 days (expires_ms, §3).
    e3 = sign_entry(qc, seq=3, prev=e2.hash, now_ms=1_790_000_001_000, tlp=TLP.AMBER,
                    audience=audience, body=body,
                    expires_ms=1_790_000_001_000 + 365 * 86_400_000)
    entries = []
    for e in (e1, e2, e3):
        assert e.body is not None
        entries.append({"author": "QC", "seq": e.seq, "prev": e.prev.hex() if e.prev else None,
                        "ts": e.ts, "tlp": e.tlp.value,
                        "audience": [a.hex() for a in e.audience] if e.audience else None,
                        "body": e.body.hex(), "body_hash": e.body_hash.hex(),
                        "body_len": e.body_len, "expires_ms": e.expires_ms,
                        "header": e.header.hex(),
                        "sig": e.sig.hex(), "raw": e.raw.hex(), "id": e.id})
    bare = e2.without_body()
    # A fork: another entry signed at QC's seq 2.
    e2b = sign_entry(qc, seq=2, prev=e1.hash, now_ms=1_790_000_000_600, tlp=TLP.GREEN,
                     audience=None, body=b"equivocation")
    proof = detect_fork(e2, e2b)
    assert proof is not None
    print(json.dumps({
        "keys": keys,
        "entries": entries,
        "header_only": {"entry_index": 1, "raw": bare.raw.hex(), "id": bare.id},
        "fork": {"other": {"seq": 2, "ts": e2b.ts, "tlp": e2b.tlp.value,
                           "body": (e2b.body or b"").hex(), "raw": e2b.raw.hex(),
                           "id": e2b.id},
                 "proof": proof.encode().hex()},
        "envelope": {"entry_index": 2, "plaintext": payload.hex(),
                     "randomness_label": "vector/envelope",
                     "readers": ["QC", "ON"], "non_readers": ["FED"],
                     # The audience field holds blinded ids; the real key ids are inside.
                     "key_ids": sorted(i.public_key.key_id.hex() for i in (qc, on))},
    }, indent=2))


if __name__ == "__main__":
    main()
