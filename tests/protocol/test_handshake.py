"""Handshake message codec: exact shapes only."""

from __future__ import annotations

import msgpack
import pytest

from protocol.errors import HandshakeError
from protocol.handshake import (
    MAX_HANDSHAKE_BYTES,
    PROTOCOL_LABEL,
    SIG_LABEL,
    Finish,
    Hello,
    Reply,
    decode_finish,
    decode_hello,
    decode_reply,
    signature_input,
    transcript,
)
from protocol.keys import Identity

KEY = Identity(bytes(range(32))).public_key
EPH = bytes(range(32, 64))
HDR = bytes(24)
SIG = bytes(64)


def pack(fields: dict[str, object]) -> bytes:
    return msgpack.packb(dict(sorted(fields.items())), use_bin_type=True)


def test_handshake_messages_round_trip() -> None:
    hello = Hello(label=PROTOCOL_LABEL, key=KEY, eph=EPH)
    reply = Reply(key=KEY, eph=EPH, hdr=HDR, sig=SIG)
    finish = Finish(hdr=HDR, sig=SIG)
    assert decode_hello(hello.encode()) == hello
    assert decode_reply(reply.encode()) == reply
    assert decode_finish(finish.encode()) == finish
    assert max(len(m.encode()) for m in (hello, reply, finish)) <= MAX_HANDSHAKE_BYTES


GOOD_HELLO = {"type": "hello", "label": PROTOCOL_LABEL, "key": KEY.raw, "eph": EPH}


@pytest.mark.parametrize("fields", [
    {**GOOD_HELLO, "extra": 1},
    {k: v for k, v in GOOD_HELLO.items() if k != "eph"},
    {**GOOD_HELLO, "type": "reply"},
    {**GOOD_HELLO, "eph": EPH[:31]},
    {**GOOD_HELLO, "eph": "not bytes"},
    {**GOOD_HELLO, "key": bytes(32)},  # small-order point
    {**GOOD_HELLO, "label": b""},
    {**GOOD_HELLO, "label": b"x" * 65},
])
def test_handshake_decode_hello_refuses_wrong_shapes(fields: dict[str, object]) -> None:
    with pytest.raises(HandshakeError):
        decode_hello(pack(fields))


def test_handshake_decode_refuses_non_canonical_and_non_maps() -> None:
    unsorted = msgpack.packb({"type": "finish", "sig": SIG, "hdr": HDR}, use_bin_type=True)
    for frame in (unsorted, msgpack.packb([HDR, SIG]), b"", b"\xc1",
                  Finish(hdr=HDR, sig=SIG).encode() + b"\x00"):
        with pytest.raises(HandshakeError):
            decode_finish(frame)


def test_handshake_transcript_and_signature_input_layout() -> None:
    t = transcript(PROTOCOL_LABEL, KEY, EPH, KEY, EPH)
    assert t[:2] == b"\x95\xc4" and t[2] == len(PROTOCOL_LABEL)
    assert len(t) == 1 + 2 + len(PROTOCOL_LABEL) + 4 * 34
    th = bytes(32)
    assert signature_input(initiator=True, th=th, hdr=HDR) == SIG_LABEL + b"I" + th + HDR
    assert signature_input(initiator=False, th=th, hdr=HDR) == SIG_LABEL + b"R" + th + HDR
