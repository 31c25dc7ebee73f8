"""Peer session: two Session objects wired by handing frames across, no sockets."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable
from pathlib import Path

import msgpack
import nacl.bindings as sodium
import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import (
    FrameTooLargeError,
    HandshakeError,
    LocalProtocolError,
    OversizeError,
    RemoteProtocolError,
)
from protocol.keys import Identity, PublicKey
from protocol.session import (
    MAX_CLOSE_MESSAGE_BYTES,
    MAX_FRAME_BYTES,
    MAX_MESSAGE_BYTES,
    PROTOCOL_LABEL,
    TRANSITIONS,
    CloseReason,
    Event,
    HandshakeComplete,
    MessageReceived,
    Session,
    SessionClosed,
    SessionState,
    simultaneous_dial_winner,
)

VECTOR = Path(__file__).parent.parent / "vectors" / "session_handshake.json"


def _seed(label: str) -> bytes:
    return hashlib.blake2b(label.encode(), digest_size=32).digest()


QC = Identity(_seed("test/session/QC"))
ON = Identity(_seed("test/session/ON"))
FED = Identity(_seed("test/session/FED"))
_counter = itertools.count()


def fresh_seed() -> bytes:
    return _seed(f"test/session/eph/{next(_counter)}")


def trusting(*idents: Identity) -> Callable[[PublicKey], bool]:
    keys = {i.public_key for i in idents}
    return lambda key: key in keys


def make(ident: Identity, *, initiator: bool, trusts: tuple[Identity, ...],
         label: bytes = PROTOCOL_LABEL, seed: bytes | None = None) -> Session:
    return Session(ident, initiator=initiator, is_trusted=trusting(*trusts),
                   ephemeral_seed=seed or fresh_seed(), label=label)


def pair(a: Identity = QC, b: Identity = ON) -> tuple[Session, Session]:
    """a dials b; each trusts the other."""
    return (make(a, initiator=True, trusts=(b,)), make(b, initiator=False, trusts=(a,)))


def handshake(init: Session, resp: Session) -> tuple[list[Event], list[Event]]:
    """Run the three messages; return (initiator events, responder events)."""
    [hello] = init.start()
    assert resp.receive(hello) == []
    [reply] = resp.frames_to_send()
    init_events = init.receive(reply)
    [finish] = init.frames_to_send()
    resp_events = resp.receive(finish)
    assert resp.frames_to_send() == []
    return init_events, resp_events


def established(a: Identity = QC, b: Identity = ON) -> tuple[Session, Session]:
    init, resp = pair(a, b)
    handshake(init, resp)
    return init, resp


def flip(data: bytes, pos: int, mask: int = 0x01) -> bytes:
    return data[:pos] + bytes([data[pos] ^ mask]) + data[pos + 1 :]


# --- handshake ----------------------------------------------------------------------


@pytest.mark.parametrize(("dialer", "listener"), [(QC, ON), (ON, QC)])
def test_session_handshake_completes_both_ways(dialer: Identity, listener: Identity) -> None:
    init, resp = pair(dialer, listener)
    init_events, resp_events = handshake(init, resp)
    assert init_events == [HandshakeComplete(peer=listener.public_key)]
    assert resp_events == [HandshakeComplete(peer=dialer.public_key)]
    assert init.state is resp.state is SessionState.ESTABLISHED
    assert init.peer == listener.public_key and resp.peer == dialer.public_key
    assert init.transcript_hash is not None and len(init.transcript_hash) == 32
    assert init.transcript_hash == resp.transcript_hash
    assert init.initiator_key == resp.initiator_key == dialer.public_key


def test_session_messages_flow_in_order_both_ways() -> None:
    init, resp = established()
    sent = [b"", b"one", bytes(range(256)) * 10, b"three"]
    for data in sent:
        assert resp.receive(init.send(data)) == [MessageReceived(data)]
    frames = [resp.send(data) for data in sent]
    assert [e for f in frames for e in init.receive(f)] == [MessageReceived(d) for d in sent]


def test_session_frame_size_is_message_plus_17() -> None:
    init, _ = established()
    assert len(init.send(b"x" * 100)) == 117


def test_session_transcript_hash_differs_per_session() -> None:
    a_init, _ = established()
    b_init, _ = established()
    assert a_init.transcript_hash != b_init.transcript_hash


def test_session_transcript_hash_hidden_until_verified() -> None:
    init, resp = pair()
    [hello] = init.start()
    resp.receive(hello)
    assert resp.transcript_hash is None and resp.peer is None and resp.initiator_key is None


def test_session_responder_refuses_untrusted_initiator_and_reveals_nothing() -> None:
    init = make(FED, initiator=True, trusts=(ON,))
    resp = make(ON, initiator=False, trusts=(QC,))
    [hello] = init.start()
    with pytest.raises(HandshakeError, match="untrusted"):
        resp.receive(hello)
    assert resp.frames_to_send() == []
    assert resp.state is SessionState.FAILED and resp.peer is None


def test_session_initiator_refuses_untrusted_responder() -> None:
    init = make(QC, initiator=True, trusts=(ON,))  # dialled ON, FED answered
    resp = make(FED, initiator=False, trusts=(QC,))
    [hello] = init.start()
    resp.receive(hello)
    [reply] = resp.frames_to_send()
    with pytest.raises(HandshakeError, match="untrusted"):
        init.receive(reply)
    assert init.frames_to_send() == [] and init.state is SessionState.FAILED


def test_session_is_trusted_sees_the_claimed_key() -> None:
    seen: list[PublicKey] = []

    def is_trusted(key: PublicKey) -> bool:
        seen.append(key)
        return True

    init = Session(QC, initiator=True, is_trusted=is_trusted, ephemeral_seed=fresh_seed())
    resp = Session(ON, initiator=False, is_trusted=is_trusted, ephemeral_seed=fresh_seed())
    handshake(init, resp)
    assert seen == [QC.public_key, ON.public_key]


def test_session_refuses_wrong_label() -> None:
    init = make(QC, initiator=True, trusts=(ON,), label=b"other/protocol")
    resp = make(ON, initiator=False, trusts=(QC,))
    [hello] = init.start()
    with pytest.raises(HandshakeError, match="label"):
        resp.receive(hello)
    assert resp.frames_to_send() == []


def test_session_refuses_a_protocol_v1_peer_by_name() -> None:
    init = make(QC, initiator=True, trusts=(ON,), label=b"entraide/peer/v1")
    resp = make(ON, initiator=False, trusts=(QC,))
    [hello] = init.start()
    with pytest.raises(HandshakeError, match=r"^peer speaks protocol v1; this node needs v2$"):
        resp.receive(hello)
    assert resp.frames_to_send() == []


def _resign(frame: bytes, **changes: bytes) -> bytes:
    fields = msgpack.unpackb(frame)
    fields.update(changes)
    return msgpack.packb(dict(sorted(fields.items())), use_bin_type=True)


def test_session_refuses_bad_signature_in_reply() -> None:
    init, resp = pair()
    [hello] = init.start()
    resp.receive(hello)
    [reply] = resp.frames_to_send()
    forged = _resign(reply, sig=ON.sign(b"something else"))
    with pytest.raises(HandshakeError, match="signature"):
        init.receive(forged)


def test_session_refuses_bad_signature_in_finish() -> None:
    init, resp = pair()
    [hello] = init.start()
    resp.receive(hello)
    [reply] = resp.frames_to_send()
    init.receive(reply)
    [finish] = init.frames_to_send()
    with pytest.raises(HandshakeError, match="signature"):
        resp.receive(_resign(finish, sig=QC.sign(b"something else")))
    assert resp.state is SessionState.FAILED and resp.peer is None
    assert resp.close(CloseReason.PROTOCOL_ERROR) is None  # nothing for an unverified peer


def test_session_refuses_reply_from_another_session() -> None:
    # Same two identities, an earlier session: its signed REPLY binds other ephemeral keys.
    old_init, old_resp = pair()
    [old_hello] = old_init.start()
    old_resp.receive(old_hello)
    [old_reply] = old_resp.frames_to_send()
    init, _ = pair()
    init.start()
    with pytest.raises(HandshakeError, match="signature"):
        init.receive(old_reply)


def test_session_refuses_finish_from_another_session() -> None:
    old_init, old_resp = pair()
    handshake_frames: list[bytes] = []
    [hello] = old_init.start()
    old_resp.receive(hello)
    old_init.receive(old_resp.frames_to_send()[0])
    handshake_frames += old_init.frames_to_send()
    init, resp = pair()
    [hello] = init.start()
    resp.receive(hello)
    with pytest.raises(HandshakeError):
        resp.receive(handshake_frames[0])


def test_session_refuses_own_key_reflected() -> None:
    init = make(QC, initiator=True, trusts=(QC,))
    resp = make(QC, initiator=False, trusts=(QC,))
    [hello] = init.start()
    with pytest.raises(HandshakeError, match="own key"):
        resp.receive(hello)


@pytest.mark.parametrize("index", [0, 1, 2], ids=["hello", "reply", "finish"])
def test_session_handshake_byte_flips_never_authenticate(index: int) -> None:
    """Flip each bit 0 of each byte of one handshake message: the responder never
    completes, and the initiator completes only when the flip is in its own FINISH."""
    init, resp = pair()
    [hello] = init.start()
    resp.receive(hello)
    [reply] = resp.frames_to_send()
    init.receive(reply)
    [finish] = init.frames_to_send()
    target = (hello, reply, finish)[index]
    for pos in range(len(target)):
        init, resp = pair()
        completed: list[str] = []
        with pytest.raises(HandshakeError):
            [h] = init.start()
            resp.receive(flip(h, pos) if index == 0 else h)
            [r] = resp.frames_to_send()
            if init.receive(flip(r, pos) if index == 1 else r):
                completed.append("initiator")
            [f] = init.frames_to_send()
            if resp.receive(flip(f, pos) if index == 2 else f):
                completed.append("responder")
        assert completed == (["initiator"] if index == 2 else []), pos


def test_session_refuses_oversize_handshake_message() -> None:
    init, resp = pair()
    [hello] = init.start()
    with pytest.raises(HandshakeError, match="over"):
        resp.receive(hello + b"\x00" * 256)


def test_session_refuses_frames_before_the_handshake() -> None:
    # Responder expecting HELLO gets something else.
    _, resp = pair()
    with pytest.raises(HandshakeError):
        resp.receive(b"\x00" * 40)
    # Initiator expecting REPLY gets a HELLO (two initiators wired together).
    a = make(QC, initiator=True, trusts=(ON,))
    b = make(ON, initiator=True, trusts=(QC,))
    [hello_a] = a.start()
    b.start()
    with pytest.raises(HandshakeError, match="REPLY"):
        b.receive(hello_a)
    # Responder expecting FINISH gets the initiator's first data frame instead.
    init, resp = pair()
    [hello] = init.start()
    resp.receive(hello)
    init.receive(resp.frames_to_send()[0])
    init.frames_to_send()  # FINISH lost
    with pytest.raises(HandshakeError):
        resp.receive(init.send(b"too early"))


def test_session_replayed_hello_refused_after_reply() -> None:
    init, resp = pair()
    [hello] = init.start()
    resp.receive(hello)
    with pytest.raises(HandshakeError, match="FINISH"):
        resp.receive(hello)


# --- encrypted frames ---------------------------------------------------------------


def test_session_tampered_frame_refused_at_every_byte() -> None:
    frame_len = len(established()[0].send(b"gossip"))
    for pos in range(frame_len):
        init, resp = established()
        frame = init.send(b"gossip")
        with pytest.raises(RemoteProtocolError):
            resp.receive(flip(frame, pos, 0x80))
        assert resp.state is SessionState.FAILED
        with pytest.raises(LocalProtocolError):
            resp.receive(frame)  # a failed session takes nothing more


def test_session_tampered_final_frame_refused() -> None:
    for pos in (0, 1, 20, -1):
        init, resp = established()
        final = init.close(CloseReason.SHUTDOWN, "bye")
        assert final is not None
        with pytest.raises(RemoteProtocolError):
            resp.receive(flip(final, pos % len(final)))


def test_session_replayed_frame_refused() -> None:
    init, resp = established()
    frame = init.send(b"once")
    assert resp.receive(frame) == [MessageReceived(b"once")]
    with pytest.raises(RemoteProtocolError):
        resp.receive(frame)


def test_session_reordered_frames_refused() -> None:
    init, resp = established()
    first, second = init.send(b"1"), init.send(b"2")
    with pytest.raises(RemoteProtocolError):
        resp.receive(second)
    del first


def test_session_dropped_frame_refused() -> None:
    init, resp = established()
    init.send(b"lost")
    with pytest.raises(RemoteProtocolError):
        resp.receive(init.send(b"after the loss"))


def test_session_frame_from_another_session_refused() -> None:
    init_a, _ = established()
    _, resp_b = established()
    with pytest.raises(RemoteProtocolError):
        resp_b.receive(init_a.send(b"wrong session"))


def test_session_own_frame_reflected_refused() -> None:
    init, resp = established()
    with pytest.raises(RemoteProtocolError):
        init.receive(init.send(b"echo"))
    del resp


def test_session_short_frame_refused() -> None:
    _, resp = established()
    with pytest.raises(RemoteProtocolError, match="shorter"):
        resp.receive(b"\x00" * 16)


def test_session_oversize_frame_refused_before_decrypting() -> None:
    init, resp = established()
    with pytest.raises(FrameTooLargeError) as info:
        resp.receive(b"\x00" * (MAX_FRAME_BYTES + 1))
    assert isinstance(info.value, RemoteProtocolError) and isinstance(info.value, OversizeError)
    assert resp.state is SessionState.FAILED
    _, fresh = pair()
    with pytest.raises(FrameTooLargeError):
        fresh.receive(b"\x00" * (MAX_FRAME_BYTES + 1))
    del init


def test_session_largest_message_fits_one_frame() -> None:
    init, resp = established()
    data = b"\xab" * MAX_MESSAGE_BYTES
    frame = init.send(data)
    assert len(frame) == MAX_FRAME_BYTES
    assert resp.receive(frame) == [MessageReceived(data)]


def test_session_send_refuses_oversize_message_and_stays_usable() -> None:
    init, resp = established()
    with pytest.raises(OversizeError):
        init.send(b"\x00" * (MAX_MESSAGE_BYTES + 1))
    assert init.state is SessionState.ESTABLISHED
    assert resp.receive(init.send(b"still fine")) == [MessageReceived(b"still fine")]


# --- closing ------------------------------------------------------------------------


def test_session_clean_close_exchange() -> None:
    init, resp = established()
    final = init.close(CloseReason.SHUTDOWN, "maintenance")
    assert final is not None and init.state is SessionState.LOCAL_CLOSED
    assert resp.receive(final) == [SessionClosed(CloseReason.SHUTDOWN, "maintenance")]
    assert resp.state is SessionState.REMOTE_CLOSED
    answer = resp.close()
    assert answer is not None and resp.state is SessionState.CLOSED
    assert init.receive(answer) == [SessionClosed(CloseReason.NORMAL, "")]
    assert init.state is SessionState.CLOSED
    assert init.transport_closed() == [] and resp.transport_closed() == []


def test_session_receives_messages_sent_before_the_peer_saw_our_final() -> None:
    init, resp = established()
    in_flight = resp.send(b"crossing")
    final = init.close()
    assert final is not None
    assert init.receive(in_flight) == [MessageReceived(b"crossing")]
    assert resp.receive(final) == [SessionClosed(CloseReason.NORMAL, "")]


def test_session_truncated_stream_reported_as_connection_lost() -> None:
    init, resp = established()
    for data in (b"a", b"b"):
        resp.receive(init.send(data))
    [event] = resp.transport_closed()
    assert isinstance(event, SessionClosed) and event.reason is CloseReason.CONNECTION_LOST
    assert "without a final" in event.message
    assert resp.state is SessionState.CLOSED


def test_session_transport_closed_during_handshake() -> None:
    init, _ = pair()
    init.start()
    [event] = init.transport_closed()
    assert isinstance(event, SessionClosed) and event.reason is CloseReason.CONNECTION_LOST


def test_session_frame_after_final_refused() -> None:
    init, resp = established()
    earlier = init.send(b"x")
    resp.receive(earlier)
    final = init.close()
    assert final is not None
    resp.receive(final)
    with pytest.raises(RemoteProtocolError, match="after the peer's final"):
        resp.receive(earlier)


def test_session_send_after_close_is_local_error() -> None:
    init, resp = established()
    final = init.close()
    with pytest.raises(LocalProtocolError):
        init.send(b"late")
    assert final is not None
    resp.receive(final)
    with pytest.raises(LocalProtocolError):
        resp.send(b"peer has gone")  # after the peer's final only close() is allowed
    init2, _ = established()
    init2.transport_closed()
    with pytest.raises(LocalProtocolError):
        init2.send(b"no transport")


def test_session_send_after_failure_is_local_error() -> None:
    init, resp = established()
    with pytest.raises(RemoteProtocolError):
        resp.receive(b"\x00" * 40)
    with pytest.raises(LocalProtocolError):
        resp.send(b"x")
    # ... but it may still tell the peer why, once.
    final = resp.close(CloseReason.PROTOCOL_ERROR, "bad frame")
    assert final is not None and resp.close() is None
    assert init.receive(final) == [SessionClosed(CloseReason.PROTOCOL_ERROR, "bad frame")]


def test_session_close_is_idempotent_and_silent_during_handshake() -> None:
    init, resp = pair()
    assert init.close() is None and init.state is SessionState.CLOSED
    [hello] = make(QC, initiator=True, trusts=(ON,)).start()
    resp.receive(hello)
    assert resp.close(CloseReason.UNTRUSTED) is None  # nothing sent before verification
    assert resp.frames_to_send() == [] and resp.state is SessionState.CLOSED
    with pytest.raises(LocalProtocolError):
        resp.send(b"x")
    est, _ = established()
    assert est.close() is not None and est.close() is None


def test_session_close_refuses_receive_only_reasons() -> None:
    init, _ = established()
    for reason in (CloseReason.UNKNOWN, CloseReason.CONNECTION_LOST):
        with pytest.raises(LocalProtocolError):
            init.close(reason)
    assert init.state is SessionState.ESTABLISHED


def test_session_close_message_is_truncated_on_a_character_boundary() -> None:
    init, resp = established()
    final = init.close(CloseReason.NORMAL, "é" * MAX_CLOSE_MESSAGE_BYTES)
    assert final is not None
    [event] = resp.receive(final)
    assert isinstance(event, SessionClosed)
    assert event.message == "é" * (MAX_CLOSE_MESSAGE_BYTES // 2)


# --- local misuse -------------------------------------------------------------------


def test_session_local_misuse_raises_local_protocol_error() -> None:
    init, resp = pair()
    with pytest.raises(LocalProtocolError):
        init.receive(b"anything")  # before start()
    with pytest.raises(LocalProtocolError):
        init.send(b"x")
    with pytest.raises(LocalProtocolError):
        resp.start()  # responders wait for HELLO
    init.start()
    with pytest.raises(LocalProtocolError):
        init.start()
    with pytest.raises(LocalProtocolError):
        init.send(b"x")  # handshake not finished
    with pytest.raises(LocalProtocolError):
        Session(QC, initiator=True, is_trusted=trusting(ON), ephemeral_seed=b"short")
    with pytest.raises(LocalProtocolError):
        Session(QC, initiator=True, is_trusted=trusting(ON), ephemeral_seed=fresh_seed(),
                label=b"")


def test_session_responder_cannot_send_before_finish() -> None:
    init, resp = pair()
    [hello] = init.start()
    resp.receive(hello)
    resp.frames_to_send()
    with pytest.raises(LocalProtocolError):
        resp.send(b"before the initiator proved its key")


def test_session_send_refused_while_handshake_frame_pending() -> None:
    init, resp = pair()
    [hello] = init.start()
    resp.receive(hello)
    init.receive(resp.frames_to_send()[0])
    with pytest.raises(LocalProtocolError, match="frames_to_send"):
        init.send(b"would overtake FINISH")
    with pytest.raises(LocalProtocolError, match="frames_to_send"):
        init.close()
    [finish] = init.frames_to_send()
    resp.receive(finish)
    assert resp.receive(init.send(b"now")) == [MessageReceived(b"now")]


def test_session_transition_table_targets_are_states() -> None:
    assert all(isinstance(s, SessionState) for key in TRANSITIONS for s in (key[0],))
    assert all(isinstance(s, SessionState) for s in TRANSITIONS.values())
    # Nothing leaves FAILED except closing (at most one final frame).
    assert {dst for (src, _), dst in TRANSITIONS.items() if src is SessionState.FAILED} == {
        SessionState.FAILED}


def test_session_repr_shows_no_secrets() -> None:
    seed = fresh_seed()
    init = Session(QC, initiator=True, is_trusted=trusting(ON), ephemeral_seed=seed)
    resp = make(ON, initiator=False, trusts=(QC,))
    handshake(init, resp)
    for text in (repr(init), str(init), repr(resp)):
        for secret in (seed, QC.seed, ON.seed):
            assert secret.hex() not in text and repr(secret) not in text
        assert "b'" not in text and "state=ESTABLISHED" in text
    assert repr(MessageReceived(b"secret payload")) == "MessageReceived(<14 bytes>)"


def test_session_simultaneous_dial_keeps_the_lower_initiator_key() -> None:
    x_init, x_resp = established(QC, ON)  # QC dialled ON
    y_init, y_resp = established(ON, QC)  # ON dialled QC at the same time
    qc_side = simultaneous_dial_winner(x_init, y_resp)
    on_side = simultaneous_dial_winner(x_resp, y_init)
    assert qc_side is not None and on_side is not None
    assert qc_side.transcript_hash == on_side.transcript_hash  # both keep the same link
    lower = min(QC.public_key, ON.public_key, key=lambda k: k.raw)
    assert qc_side.initiator_key == lower
    z_init, _ = established(QC, ON)
    assert simultaneous_dial_winner(x_init, z_init) is None  # same initiator: not a race
    with pytest.raises(LocalProtocolError):
        simultaneous_dial_winner(x_init, pair()[0])


# --- conformance: the spec implemented again with raw libsodium and msgpack ---------


SIG_LABEL = b"entraide/handshake-sig/v1\x00"


class RawPeer:
    """docs/protocol.md §7 re-implemented without protocol/ (either role), using
    libsodium's own random stream headers (init_push)."""

    def __init__(self, seed: bytes, *, initiator: bool, label: bytes = PROTOCOL_LABEL):
        self.sk = nacl.signing.SigningKey(seed)
        self.key = bytes(self.sk.verify_key)
        self.eph, self.eph_sk = sodium.crypto_kx_keypair()
        self.initiator, self.label = initiator, label
        self.push = sodium.crypto_secretstream_xchacha20poly1305_state()
        self.pull = sodium.crypto_secretstream_xchacha20poly1305_state()

    @staticmethod
    def pack(fields: dict[str, object]) -> bytes:
        return msgpack.packb(dict(sorted(fields.items())), use_bin_type=True)

    def th(self, peer_key: bytes, peer_eph: bytes) -> bytes:
        ordered = ([self.key, self.eph, peer_key, peer_eph] if self.initiator
                   else [peer_key, peer_eph, self.key, self.eph])
        data = msgpack.packb([self.label, *ordered], use_bin_type=True)
        return hashlib.blake2b(data, digest_size=32).digest()

    def hello(self) -> bytes:
        return self.pack({"type": "hello", "label": self.label, "key": self.key,
                          "eph": self.eph})

    def on_reply(self, frame: bytes) -> bytes:
        m = msgpack.unpackb(frame)
        assert list(m) == ["eph", "hdr", "key", "sig", "type"] and m["type"] == "reply"
        self.th_ = self.th(m["key"], m["eph"])
        nacl.signing.VerifyKey(m["key"]).verify(SIG_LABEL + b"R" + self.th_ + m["hdr"], m["sig"])
        rx, tx = sodium.crypto_kx_client_session_keys(self.eph, self.eph_sk, m["eph"])
        sodium.crypto_secretstream_xchacha20poly1305_init_pull(self.pull, m["hdr"], rx)
        hdr = sodium.crypto_secretstream_xchacha20poly1305_init_push(self.push, tx)
        sig = self.sk.sign(SIG_LABEL + b"I" + self.th_ + hdr).signature
        return self.pack({"type": "finish", "hdr": hdr, "sig": sig})

    def on_hello(self, frame: bytes) -> bytes:
        m = msgpack.unpackb(frame)
        assert list(m) == ["eph", "key", "label", "type"] and m["label"] == self.label
        self.peer_key = m["key"]
        self.th_ = self.th(m["key"], m["eph"])
        self.rx, tx = sodium.crypto_kx_server_session_keys(self.eph, self.eph_sk, m["eph"])
        hdr = sodium.crypto_secretstream_xchacha20poly1305_init_push(self.push, tx)
        sig = self.sk.sign(SIG_LABEL + b"R" + self.th_ + hdr).signature
        return self.pack({"type": "reply", "key": self.key, "eph": self.eph, "hdr": hdr,
                          "sig": sig})

    def on_finish(self, frame: bytes) -> None:
        m = msgpack.unpackb(frame)
        assert list(m) == ["hdr", "sig", "type"] and m["type"] == "finish"
        nacl.signing.VerifyKey(self.peer_key).verify(SIG_LABEL + b"I" + self.th_ + m["hdr"],
                                                     m["sig"])
        sodium.crypto_secretstream_xchacha20poly1305_init_pull(self.pull, m["hdr"], self.rx)

    def frame(self, data: bytes, tag: int = sodium.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE
              ) -> bytes:
        return sodium.crypto_secretstream_xchacha20poly1305_push(self.push, data, tag=tag)

    def final(self, fields: object) -> bytes:
        return self.frame(msgpack.packb(fields, use_bin_type=True),
                          sodium.crypto_secretstream_xchacha20poly1305_TAG_FINAL)

    def read(self, frame: bytes) -> tuple[bytes, int]:
        return sodium.crypto_secretstream_xchacha20poly1305_pull(self.pull, frame)


def raw_initiator_and_responder() -> tuple[RawPeer, Session]:
    raw = RawPeer(QC.seed, initiator=True)
    resp = make(ON, initiator=False, trusts=(QC,))
    assert resp.receive(raw.hello()) == []
    [reply] = resp.frames_to_send()
    finish = raw.on_reply(reply)
    assert resp.receive(finish) == [HandshakeComplete(peer=QC.public_key)]
    return raw, resp


def test_session_interoperates_with_raw_initiator() -> None:
    raw, resp = raw_initiator_and_responder()
    assert resp.receive(raw.frame(b"from raw")) == [MessageReceived(b"from raw")]
    assert raw.read(resp.send(b"from session")) == (b"from session", 0)
    final = resp.close(CloseReason.REMOVED, "removed from peers.toml")
    assert final is not None
    plain, tag = raw.read(final)
    assert tag == sodium.crypto_secretstream_xchacha20poly1305_TAG_FINAL
    assert msgpack.unpackb(plain) == {"code": 5, "message": "removed from peers.toml"}


def test_session_interoperates_with_raw_responder() -> None:
    raw = RawPeer(ON.seed, initiator=False)
    init = make(QC, initiator=True, trusts=(ON,))
    [hello] = init.start()
    assert init.receive(raw.on_hello(hello)) == [HandshakeComplete(peer=ON.public_key)]
    [finish] = init.frames_to_send()
    raw.on_finish(finish)
    assert raw.read(init.send(b"hi")) == (b"hi", 0)
    assert init.receive(raw.frame(b"hello")) == [MessageReceived(b"hello")]


def test_session_unknown_close_code_reported_as_unknown() -> None:
    for code in (42, 0, 255):
        raw, resp = raw_initiator_and_responder()
        assert resp.receive(raw.final({"code": code, "message": "newer peer"})) == [
            SessionClosed(CloseReason.UNKNOWN, "newer peer")]


@pytest.mark.parametrize("payload", [
    {"code": 1}, {"code": "1", "message": ""}, {"code": True, "message": ""},
    {"code": 1, "message": "x" * (MAX_CLOSE_MESSAGE_BYTES + 1)}, [1, ""],
    {"code": 1, "message": "", "extra": 0},
])
def test_session_malformed_close_frame_refused(payload: object) -> None:
    raw, resp = raw_initiator_and_responder()
    with pytest.raises(RemoteProtocolError, match="close frame"):
        resp.receive(raw.final(payload))


@pytest.mark.parametrize("tag", [sodium.crypto_secretstream_xchacha20poly1305_TAG_PUSH,
                                 sodium.crypto_secretstream_xchacha20poly1305_TAG_REKEY])
def test_session_unused_stream_tags_refused(tag: int) -> None:
    raw, resp = raw_initiator_and_responder()
    with pytest.raises(RemoteProtocolError, match="tag"):
        resp.receive(raw.frame(b"x", tag))


def test_session_low_order_ephemeral_key_refused() -> None:
    raw = RawPeer(QC.seed, initiator=True)
    raw.eph = bytes(32)
    resp = make(ON, initiator=False, trusts=(QC,))
    with pytest.raises(HandshakeError, match="ephemeral"):
        resp.receive(raw.hello())


# --- hostile input never escapes the error tree -------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_session_arbitrary_bytes_in_handshake_raise_handshake_error(data: bytes) -> None:
    _, resp = pair()
    with pytest.raises(HandshakeError):
        resp.receive(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_session_arbitrary_bytes_when_established_raise_remote_error(data: bytes) -> None:
    _, resp = established()
    with pytest.raises(RemoteProtocolError):
        resp.receive(data)


# --- fixed vector -------------------------------------------------------------------


def test_session_vector_reproduces_exact_bytes() -> None:
    from tests.vectors.make_session_vector import build

    assert build() == json.loads(VECTOR.read_text())


def test_session_vector_frames_are_accepted_by_a_responder() -> None:
    v = json.loads(VECTOR.read_text())
    qc = Identity(bytes.fromhex(v["initiator"]["seed"]))
    on = Identity(bytes.fromhex(v["responder"]["seed"]))
    resp = Session(on, initiator=False, is_trusted=lambda k: k == qc.public_key,
                   ephemeral_seed=bytes.fromhex(v["responder"]["ephemeral_seed"]))
    assert resp.receive(bytes.fromhex(v["hello"])) == []
    assert resp.frames_to_send() == [bytes.fromhex(v["reply"])]
    assert resp.receive(bytes.fromhex(v["finish"])) == [HandshakeComplete(qc.public_key)]
    assert resp.transcript_hash == bytes.fromhex(v["transcript_hash"])
    got = [e for f in v["initiator_frames"] for e in resp.receive(bytes.fromhex(f))]
    assert got == [MessageReceived(bytes.fromhex(m)) for m in v["initiator_messages"]]
    assert [resp.send(bytes.fromhex(m)) for m in v["responder_messages"]] == [
        bytes.fromhex(f) for f in v["responder_frames"]]
