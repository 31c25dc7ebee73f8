"""Regenerate tests/vectors/session_handshake.json (by hand, only when the format changes).

    .venv/bin/python tests/vectors/make_session_vector.py > tests/vectors/session_handshake.json

QC dials ON. Identity seeds are BLAKE2b-256("vector/QC") and BLAKE2b-256("vector/ON")
(as in core.json); ephemeral seeds are BLAKE2b-256("vector/session/QC") and
BLAKE2b-256("vector/session/ON"). Another implementation given the same seeds, the
same ephemeral key pairs (crypto_kx_seed_keypair) and the same stream headers must
produce the same bytes (docs/protocol.md §7).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import msgpack

from protocol.handshake import PROTOCOL_LABEL, signature_input, transcript
from protocol.keys import Identity
from protocol.session import CloseReason, Session


def seed(label: str) -> bytes:
    return hashlib.blake2b(label.encode(), digest_size=32).digest()


MESSAGES_QC = [b"HAVE from QC", b""]
MESSAGES_ON = [b"ENTRIES from ON"]
CLOSE_ON = (CloseReason.SHUTDOWN, "au revoir")


def build() -> dict[str, Any]:
    qc, on = Identity(seed("vector/QC")), Identity(seed("vector/ON"))
    eph_qc, eph_on = seed("vector/session/QC"), seed("vector/session/ON")
    init = Session(qc, initiator=True, is_trusted=lambda k: k == on.public_key,
                   ephemeral_seed=eph_qc)
    resp = Session(on, initiator=False, is_trusted=lambda k: k == qc.public_key,
                   ephemeral_seed=eph_on)
    [hello] = init.start()
    resp.receive(hello)
    [reply] = resp.frames_to_send()
    init.receive(reply)
    [finish] = init.frames_to_send()
    resp.receive(finish)
    frames_qc = [init.send(m) for m in MESSAGES_QC]
    frames_on = [resp.send(m) for m in MESSAGES_ON]
    for frame in frames_qc:
        resp.receive(frame)
    for frame in frames_on:
        init.receive(frame)
    close_on = resp.close(*CLOSE_ON)
    assert close_on is not None
    init.receive(close_on)
    close_qc = init.close()
    assert close_qc is not None

    # msgpack only lays the handshake fields out for readers of the vector.
    h, r, f = (msgpack.unpackb(x) for x in (hello, reply, finish))
    th = init.transcript_hash
    assert th is not None
    return {
        "label": PROTOCOL_LABEL.hex(),
        "initiator": {"name": "QC", "seed": qc.seed.hex(), "key": qc.public_key.text,
                      "ephemeral_seed": eph_qc.hex(), "eph": h["eph"].hex(),
                      "stream_header": f["hdr"].hex()},
        "responder": {"name": "ON", "seed": on.seed.hex(), "key": on.public_key.text,
                      "ephemeral_seed": eph_on.hex(), "eph": r["eph"].hex(),
                      "stream_header": r["hdr"].hex()},
        "transcript": transcript(PROTOCOL_LABEL, qc.public_key, h["eph"], on.public_key,
                                 r["eph"]).hex(),
        "transcript_hash": th.hex(),
        "responder_signature_input": signature_input(initiator=False, th=th,
                                                     hdr=r["hdr"]).hex(),
        "initiator_signature_input": signature_input(initiator=True, th=th,
                                                     hdr=f["hdr"]).hex(),
        "hello": hello.hex(),
        "reply": reply.hex(),
        "finish": finish.hex(),
        "initiator_messages": [m.hex() for m in MESSAGES_QC],
        "initiator_frames": [x.hex() for x in frames_qc],
        "responder_messages": [m.hex() for m in MESSAGES_ON],
        "responder_frames": [x.hex() for x in frames_on],
        "responder_close": {"code": int(CLOSE_ON[0]), "message": CLOSE_ON[1],
                            "frame": close_on.hex()},
        "initiator_close": {"code": int(CloseReason.NORMAL), "message": "",
                            "frame": close_qc.hex()},
    }


if __name__ == "__main__":
    print(json.dumps(build(), indent=2))
