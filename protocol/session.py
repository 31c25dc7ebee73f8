"""The sans-I/O peer session: authenticated handshake, then encrypted frames.

One WebSocket binary message is one frame. A session runs the three-message
handshake of protocol/handshake.py, then carries opaque application messages in two
crypto_secretstream_xchacha20poly1305 streams, one per direction, keyed by crypto_kx
over the ephemeral keys (initiator = kx client). A clean close is a frame tagged
TAG_FINAL carrying a close reason (docs/protocol.md, "Peer session").

The state table (``SessionState``, ``TRANSITIONS``), the events and the frame codec
live in :mod:`protocol.session_states` and are re-exported here; an input with no
entry in the table is a ``LocalProtocolError``; peer misbehaviour is a
``RemoteProtocolError`` (``HandshakeError`` during the handshake,
``FrameTooLargeError`` for an oversize frame) and leaves the session ``FAILED``.

Invariants:
- No frame over ``MAX_FRAME_BYTES`` is decrypted or decoded.
- No application data is sent or delivered before the peer has proven possession of
  a trusted static key over a transcript binding both ephemeral keys and the label.
- Delivered messages are exactly the peer's messages, in order, each once
  (secretstream authenticates each frame and its position in the stream).
- ``repr``/``str`` and error messages never contain secret bytes. Ephemeral secrets
  and session keys are dropped as soon as they are no longer needed (Python cannot
  zero them; dropping is the best it can do).
- No I/O, no clock, no randomness: the caller passes a fresh 32-byte ephemeral seed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import nacl.bindings as sodium
import nacl.exceptions

from protocol.errors import (
    BadSignatureError,
    FrameTooLargeError,
    HandshakeError,
    LocalProtocolError,
    OversizeError,
    RemoteProtocolError,
)
from protocol.handshake import (
    MAX_LABEL_BYTES,
    PROTOCOL_LABEL,
    STREAM_HEADER_BYTES,
    Finish,
    Hello,
    Reply,
    check_label,
    decode_finish,
    decode_hello,
    decode_reply,
    signature_input,
    transcript_hash,
)
from protocol.keys import Identity, PublicKey
from protocol.session_states import (
    FRAME_OVERHEAD_BYTES,
    HANDSHAKING,
    HEADER_DOMAIN,
    MAX_CLOSE_MESSAGE_BYTES,
    MAX_FRAME_BYTES,
    MAX_MESSAGE_BYTES,
    SENDABLE,
    TAG_FINAL,
    TAG_MESSAGE,
    TRANSITIONS,
    CloseReason,
    Event,
    HandshakeComplete,
    MessageReceived,
    SessionClosed,
    SessionInput,
    SessionState,
    decode_close,
    encode_close,
    open_stream,
)

__all__ = [
    "FRAME_OVERHEAD_BYTES",
    "MAX_CLOSE_MESSAGE_BYTES",
    "MAX_FRAME_BYTES",
    "MAX_MESSAGE_BYTES",
    "PROTOCOL_LABEL",
    "TRANSITIONS",
    "CloseReason",
    "Event",
    "HandshakeComplete",
    "MessageReceived",
    "Session",
    "SessionClosed",
    "SessionInput",
    "SessionState",
    "simultaneous_dial_winner",
]


class Session:
    """One peer session, either role, with no I/O (h11 shape).

    Driving it: the initiator sends the frames ``start()`` returns; both sides feed
    every received WebSocket binary message to ``receive()`` and then send whatever
    ``frames_to_send()`` returns, before anything else; ``send()`` and ``close()``
    return the one frame to send. When the transport closes, call
    ``transport_closed()``. Any ``RemoteProtocolError`` means: drop the connection
    (optionally after sending ``close(CloseReason.PROTOCOL_ERROR)``).
    """

    __slots__ = (
        "_eph_pk", "_eph_sk", "_identity", "_initiator", "_is_trusted", "_label",
        "_own_hdr", "_peer", "_peer_claimed", "_peer_eph", "_peer_final_seen",
        "_pending", "_pull", "_push", "_rx_key", "_state", "_transcript_hash",
    )

    def __init__(
        self,
        identity: Identity,
        *,
        initiator: bool,
        is_trusted: Callable[[PublicKey], bool],
        ephemeral_seed: bytes,
        label: bytes = PROTOCOL_LABEL,
    ) -> None:
        """Prepare a session; nothing is sent until ``start()`` (initiator) or the
        peer's HELLO (responder).

        Args:
            identity: this node's static key.
            initiator: True on the side that dialled (the crypto_kx client).
            is_trusted: called with the peer's claimed static key during the
                handshake; False refuses it. An initiator that dialled a specific
                peer should accept only that peer's key.
            ephemeral_seed: 32 fresh random bytes, never reused: they determine the
                ephemeral X25519 key pair and this side's stream header.
            label: protocol label; peers with a different label are refused.

        Raises:
            LocalProtocolError: a seed that is not 32 bytes, or a label outside
                1..MAX_LABEL_BYTES bytes.
        """
        if not isinstance(ephemeral_seed, bytes) or len(ephemeral_seed) != 32:
            raise LocalProtocolError("ephemeral_seed must be 32 random bytes")
        if not isinstance(label, bytes) or not 1 <= len(label) <= MAX_LABEL_BYTES:
            raise LocalProtocolError(f"label must be 1..{MAX_LABEL_BYTES} bytes")
        self._identity = identity
        self._initiator = initiator
        self._is_trusted = is_trusted
        self._label = label
        eph_pk, eph_sk = sodium.crypto_kx_seed_keypair(ephemeral_seed)
        self._eph_pk: bytes = eph_pk
        self._eph_sk: bytes | None = eph_sk
        # Any 24 bytes unique per key will do (the keys are fresh per session); deriving
        # them from the seed keeps the library from drawing randomness of its own.
        self._own_hdr = hashlib.blake2b(HEADER_DOMAIN, key=ephemeral_seed,
                                        digest_size=STREAM_HEADER_BYTES).digest()
        self._state = SessionState.IDLE if initiator else SessionState.AWAIT_HELLO
        self._peer: PublicKey | None = None
        self._peer_claimed: PublicKey | None = None
        self._peer_eph: bytes | None = None
        self._transcript_hash: bytes | None = None
        self._rx_key: bytes | None = None
        self._push: sodium.crypto_secretstream_xchacha20poly1305_state | None = None
        self._pull: sodium.crypto_secretstream_xchacha20poly1305_state | None = None
        self._pending: list[bytes] = []
        self._peer_final_seen = False

    # --- read-only views ------------------------------------------------------------

    @property
    def state(self) -> SessionState:
        return self._state

    @property
    def initiator(self) -> bool:
        return self._initiator

    @property
    def local_key(self) -> PublicKey:
        return self._identity.public_key

    @property
    def peer(self) -> PublicKey | None:
        """The peer's verified static key; None until the handshake completes."""
        return self._peer

    @property
    def transcript_hash(self) -> bytes | None:
        """BLAKE2b-256 of the handshake transcript (a session id both sides agree on);
        None until the handshake completes."""
        return self._transcript_hash if self._peer is not None else None

    @property
    def initiator_key(self) -> PublicKey | None:
        """Static key of the side that dialled; None until the handshake completes."""
        if self._peer is None:
            return None
        return self.local_key if self._initiator else self._peer

    # --- inputs ---------------------------------------------------------------------

    def start(self) -> list[bytes]:
        """Begin the handshake: the initiator's HELLO.

        Returns:
            The frames to send, in order (one HELLO).

        Raises:
            LocalProtocolError: not an initiator, or already started.
        """
        next_state = self._next(SessionInput.START)
        hello = Hello(label=self._label, key=self.local_key, eph=self._eph_pk)
        self._state = next_state
        return [hello.encode()]

    def receive(self, frame: bytes) -> list[Event]:
        """Process one frame (one WebSocket binary message) from the peer.

        Handshake replies this produces wait in ``frames_to_send()``.

        Returns:
            The events it caused, in order (possibly none).

        Raises:
            FrameTooLargeError: the frame is over ``MAX_FRAME_BYTES`` (any state).
            HandshakeError: a handshake message that is malformed, has the wrong type
                or label, a bad signature, or an untrusted or reflected key.
            RemoteProtocolError: an encrypted frame that does not authenticate
                (tampered, replayed, reordered, from another session), a bad close
                frame, or any frame after the peer's final frame.
            After any of these the session is ``FAILED``.
            LocalProtocolError: called before ``start()``, after the transport closed,
                or after a failure (state unchanged).
        """
        if isinstance(frame, bytearray | memoryview):
            frame = bytes(frame)
        if not isinstance(frame, bytes):
            raise LocalProtocolError("a frame is bytes")
        state = self._state
        if state is SessionState.IDLE:
            raise LocalProtocolError("call start() before receive()")
        if state is SessionState.FAILED or (
                state is SessionState.CLOSED and not self._peer_final_seen):
            raise LocalProtocolError(f"the session is {state.value}; drop the connection")
        try:
            if len(frame) > MAX_FRAME_BYTES:
                raise FrameTooLargeError(f"frame of {len(frame)} bytes is over the "
                                         f"{MAX_FRAME_BYTES}-byte cap")
            if state is SessionState.AWAIT_HELLO:
                return self._on_hello(frame)
            if state is SessionState.SENT_HELLO:
                return self._on_reply(frame)
            if state is SessionState.SENT_REPLY:
                return self._on_finish(frame)
            if state in (SessionState.ESTABLISHED, SessionState.LOCAL_CLOSED):
                return self._on_encrypted(frame)
            raise RemoteProtocolError("frame after the peer's final frame")
        except RemoteProtocolError:
            self._fail()
            raise

    def frames_to_send(self) -> list[bytes]:
        """Drain the handshake frames ``receive()`` produced; send them before anything
        else (``send`` and ``close`` refuse to run while any are pending)."""
        frames, self._pending = self._pending, []
        return frames

    def send(self, data: bytes) -> bytes:
        """Encrypt one application message.

        Returns:
            The frame to send (``len(data) + 17`` bytes).

        Raises:
            LocalProtocolError: the session is not ``ESTABLISHED`` (handshaking,
                closing or closed), or ``frames_to_send()`` holds frames that must go first.
            OversizeError: ``data`` is over ``MAX_MESSAGE_BYTES``.
        """
        if not isinstance(data, bytes):
            raise LocalProtocolError("a message is bytes")
        next_state = self._next(SessionInput.SEND_DATA)
        self._check_drained()
        if len(data) > MAX_MESSAGE_BYTES:
            raise OversizeError(f"message of {len(data)} bytes is over the "
                                f"{MAX_MESSAGE_BYTES}-byte cap")
        assert self._push is not None
        frame = sodium.crypto_secretstream_xchacha20poly1305_push(self._push, data,
                                                                  tag=TAG_MESSAGE)
        self._state = next_state
        return frame

    def close(self, reason: CloseReason = CloseReason.NORMAL, message: str = "") -> bytes | None:
        """End our direction of the session with a reason.

        Legal in every state. ``message`` is cut to ``MAX_CLOSE_MESSAGE_BYTES`` of UTF-8.

        Returns:
            The final frame to send, or None when there is no encrypted channel to
            carry it (handshake not finished, final already sent): then just close
            the transport.

        Raises:
            LocalProtocolError: ``reason`` is ``UNKNOWN`` or ``CONNECTION_LOST``, or
                ``frames_to_send()`` holds frames that must go first.
        """
        if reason not in SENDABLE:
            raise LocalProtocolError(f"{reason.name} is not a reason one can send")
        next_state = self._next(SessionInput.CLOSE)
        if self._push is None or self._state in HANDSHAKING:
            # Before the peer is verified nothing is sent to it, not even a reason.
            self._push = None
            self._pending.clear()
            self._state = next_state
            self._drop_handshake_secrets()
            return None
        self._check_drained()
        payload = encode_close(reason, message)
        frame = sodium.crypto_secretstream_xchacha20poly1305_push(self._push, payload,
                                                                  tag=TAG_FINAL)
        self._push = None
        self._state = next_state
        return frame

    def transport_closed(self) -> list[Event]:
        """Tell the session the WebSocket is gone (clean or not).

        Returns:
            ``[SessionClosed(CONNECTION_LOST, ...)]`` when the peer's final frame never
            came (a truncated session: messages may have been lost), else ``[]``.
        """
        state = self._state
        self._state = self._next(SessionInput.TRANSPORT_CLOSED)
        self._push = self._pull = None
        self._pending.clear()
        self._drop_handshake_secrets()
        if state in (SessionState.CLOSED, SessionState.FAILED, SessionState.REMOTE_CLOSED):
            return []
        what = "during the handshake" if state in HANDSHAKING else "without a final frame"
        return [SessionClosed(CloseReason.CONNECTION_LOST, f"transport closed {what}")]

    def __repr__(self) -> str:
        role = "initiator" if self._initiator else "responder"
        peer = self._peer.text if self._peer is not None else None
        return (f"Session({role}, state={self._state.name}, "
                f"local={self.local_key.text!r}, peer={peer!r})")

    __str__ = __repr__

    # --- handshake --------------------------------------------------------------------

    def _on_hello(self, frame: bytes) -> list[Event]:
        next_state = self._next(SessionInput.RECV_HELLO)
        hello = decode_hello(frame)
        check_label(hello.label, self._label)
        self._check_peer_key(hello.key)
        if hello.eph == self._eph_pk:
            raise HandshakeError("the peer reflected our ephemeral key")
        assert self._eph_sk is not None
        try:
            rx, tx = sodium.crypto_kx_server_session_keys(self._eph_pk, self._eph_sk, hello.eph)
        except nacl.exceptions.CryptoError as exc:
            raise HandshakeError("the peer's ephemeral key is unusable") from exc
        th = transcript_hash(self._label, hello.key, hello.eph, self.local_key, self._eph_pk)
        self._push = open_stream(self._own_hdr, tx)
        sig = self._identity.sign(signature_input(initiator=False, th=th, hdr=self._own_hdr))
        reply = Reply(key=self.local_key, eph=self._eph_pk, hdr=self._own_hdr, sig=sig)
        self._eph_sk = None
        self._rx_key = rx
        self._peer_claimed = hello.key
        self._peer_eph = hello.eph
        self._transcript_hash = th  # exposed only once the peer is verified
        self._pending.append(reply.encode())
        self._state = next_state
        return []

    def _on_reply(self, frame: bytes) -> list[Event]:
        next_state = self._next(SessionInput.RECV_REPLY)
        reply = decode_reply(frame)
        self._check_peer_key(reply.key)
        if reply.eph == self._eph_pk:
            raise HandshakeError("the peer reflected our ephemeral key")
        th = transcript_hash(self._label, self.local_key, self._eph_pk, reply.key, reply.eph)
        _verify(reply.key, signature_input(initiator=False, th=th, hdr=reply.hdr), reply.sig)
        assert self._eph_sk is not None
        try:
            rx, tx = sodium.crypto_kx_client_session_keys(self._eph_pk, self._eph_sk, reply.eph)
        except nacl.exceptions.CryptoError as exc:
            raise HandshakeError("the peer's ephemeral key is unusable") from exc
        self._pull = open_stream(reply.hdr, rx)
        self._push = open_stream(self._own_hdr, tx)
        sig = self._identity.sign(signature_input(initiator=True, th=th, hdr=self._own_hdr))
        self._eph_sk = None
        self._peer = reply.key
        self._transcript_hash = th
        self._pending.append(Finish(hdr=self._own_hdr, sig=sig).encode())
        self._state = next_state
        return [HandshakeComplete(peer=reply.key)]

    def _on_finish(self, frame: bytes) -> list[Event]:
        next_state = self._next(SessionInput.RECV_FINISH)
        finish = decode_finish(frame)
        assert self._peer_claimed is not None and self._transcript_hash is not None
        assert self._rx_key is not None
        _verify(self._peer_claimed,
                signature_input(initiator=True, th=self._transcript_hash, hdr=finish.hdr),
                finish.sig)
        self._pull = open_stream(finish.hdr, self._rx_key)
        self._rx_key = None
        self._peer = self._peer_claimed
        self._state = next_state
        return [HandshakeComplete(peer=self._peer)]

    def _check_peer_key(self, key: PublicKey) -> None:
        if key == self.local_key:
            raise HandshakeError("the peer presents our own key (a reflected or looped "
                                 "connection)")
        if not self._is_trusted(key):
            raise HandshakeError(f"untrusted peer key {key.text}")

    # --- established ----------------------------------------------------------------

    def _on_encrypted(self, frame: bytes) -> list[Event]:
        assert self._pull is not None
        if len(frame) < FRAME_OVERHEAD_BYTES:
            raise RemoteProtocolError("frame shorter than the 17-byte stream overhead")
        try:
            plain, tag = sodium.crypto_secretstream_xchacha20poly1305_pull(self._pull, frame)
        except (nacl.exceptions.CryptoError, ValueError) as exc:
            raise RemoteProtocolError("frame does not authenticate (tampered, replayed, "
                                      "reordered or from another session)") from exc
        if tag == TAG_MESSAGE:
            self._state = self._next(SessionInput.RECV_DATA)
            return [MessageReceived(plain)]
        if tag != TAG_FINAL:
            raise RemoteProtocolError(f"unexpected secretstream tag {tag}")
        reason, message = decode_close(plain)
        self._state = self._next(SessionInput.RECV_FINAL)
        self._pull = None
        self._peer_final_seen = True
        return [SessionClosed(reason, message)]

    # --- helpers --------------------------------------------------------------------

    def _next(self, inp: SessionInput) -> SessionState:
        try:
            return TRANSITIONS[(self._state, inp)]
        except KeyError:
            raise LocalProtocolError(
                f"cannot {inp.value} in state {self._state.name}") from None

    def _check_drained(self) -> None:
        if self._pending:
            raise LocalProtocolError("send the frames from frames_to_send() first: the "
                                     "handshake's last message must precede encrypted frames")

    def _fail(self) -> None:
        self._state = self._next(SessionInput.REMOTE_ERROR)
        # Keep the push stream so close(PROTOCOL_ERROR) can still tell a verified peer
        # why; an unverified one gets nothing.
        if self._peer is None:
            self._push = None
        self._pull = None
        self._pending.clear()
        self._drop_handshake_secrets()

    def _drop_handshake_secrets(self) -> None:
        self._eph_sk = None
        self._rx_key = None


def simultaneous_dial_winner(a: Session, b: Session) -> Session | None:
    """Pick the connection to keep when two established sessions link the same peers.

    Both nodes reach the same answer on their own: the session whose initiator has
    the bytewise-lower static key wins; close the other with
    ``CloseReason.DUPLICATE_SESSION``. Returns None when both sessions have the same
    initiator (not a simultaneous dial: keep the newer one).

    Raises:
        LocalProtocolError: a session is not past its handshake, or the two sessions
            are with different peers.
    """
    ka, kb = a.initiator_key, b.initiator_key
    if ka is None or kb is None or a.peer is None or b.peer is None:
        raise LocalProtocolError("both sessions must have completed their handshake")
    if a.peer != b.peer or a.local_key != b.local_key:
        raise LocalProtocolError("the sessions are not between the same two nodes")
    if ka == kb:
        return None
    return a if ka.raw < kb.raw else b


def _verify(key: PublicKey, message: bytes, sig: bytes) -> None:
    try:
        key.verify(message, sig)
    except BadSignatureError as exc:
        raise HandshakeError("the peer's handshake signature does not verify") from exc
