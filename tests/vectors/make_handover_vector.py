"""Regenerate tests/vectors/handover.json (run by hand only when the format changes).

    .venv/bin/python tests/vectors/make_handover_vector.py > tests/vectors/handover.json

A key rotation's hand-over entry (docs/protocol.md §9): the old key's seq 3, GREEN,
naming the new key with the new key's countersignature. Ed25519 is deterministic, so
the seeds fix every byte.
"""

from __future__ import annotations

import hashlib
import json

from protocol.entries import TLP, sign_entry
from protocol.handover import countersign, handover_message
from protocol.keys import Identity
from protocol.payloads import encode_payload

OLD_SEED = hashlib.blake2b(b"entraide-vector-handover-old", digest_size=32).digest()
NEW_SEED = hashlib.blake2b(b"entraide-vector-handover-new", digest_size=32).digest()
PREV = hashlib.blake2b(b"entraide-vector-handover-prev", digest_size=32).digest()


def main() -> None:
    old, new = Identity(OLD_SEED), Identity(NEW_SEED)
    payload = countersign(new, old.public_key)
    body = encode_payload(payload)
    entry = sign_entry(old, seq=3, prev=PREV, now_ms=1_767_225_600_000, tlp=TLP.GREEN,
                       audience=None, body=body)
    print(json.dumps({
        "old_seed": OLD_SEED.hex(),
        "new_seed": NEW_SEED.hex(),
        "old_key": old.public_key.text,
        "new_key": new.public_key.text,
        "countersigned": handover_message(old.public_key, new.public_key).hex(),
        "payload": payload.model_dump(mode="json"),
        "body": body.hex(),
        "entry": entry.raw.hex(),
        "id": entry.hash.hex(),
    }, indent=2))


if __name__ == "__main__":
    main()
