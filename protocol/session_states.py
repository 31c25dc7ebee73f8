"""The peer session's state table, events and frame codec (h11's ``_state.py`` shape).

Everything that moves the session's state machine is here: ``SessionState``, the
inputs (``SessionInput``) and the table ``TRANSITIONS``; an input with no entry in the
table is a ``LocalProtocolError`` (:class:`protocol.session.Session` raises it). Also
here: the events a session emits, the frame size caps, and the codec of encrypted
frames: one crypto_secretstream_xchacha20poly1305 stream per direction
(``open_stream``), application messages tagged ``TAG_MESSAGE`` and a close frame
tagged ``TAG_FINAL`` carrying ``{code, message}`` (``encode_close``/``decode_close``);
docs/protocol.md §7, "Session keys and frames", "Close reasons", "State machine".

No I/O, no clock, no randomness.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum

import nacl.bindings as sodium

from protocol.encoding import Limits, decode, encode
from protocol.errors import EncodingError, RemoteProtocolError
from protocol.keys import PublicKey

__all__ = [
    "FRAME_OVERHEAD_BYTES",
    "HANDSHAKING",
    "HEADER_DOMAIN",
    "MAX_CLOSE_MESSAGE_BYTES",
    "MAX_FRAME_BYTES",
    "MAX_MESSAGE_BYTES",
    "SENDABLE",
    "TAG_FINAL",
    "TAG_MESSAGE",
    "TRANSITIONS",
    "CloseReason",
    "Event",
    "HandshakeComplete",
    "MessageReceived",
    "SessionClosed",
    "SessionInput",
    "SessionState",
    "decode_close",
    "encode_close",
    "open_stream",
]

MAX_FRAME_BYTES = 1 << 20
"""Largest frame accepted or produced, in every state, checked before decrypting."""

FRAME_OVERHEAD_BYTES: int = sodium.crypto_secretstream_xchacha20poly1305_ABYTES  # 17
MAX_MESSAGE_BYTES = MAX_FRAME_BYTES - FRAME_OVERHEAD_BYTES
"""Largest application message ``send`` accepts (1 MiB minus the 17-byte overhead)."""

MAX_CLOSE_MESSAGE_BYTES = 256
"""Cap on the UTF-8 close message; ``close`` truncates longer ones."""

TAG_MESSAGE: int = sodium.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE
TAG_FINAL: int = sodium.crypto_secretstream_xchacha20poly1305_TAG_FINAL
HEADER_DOMAIN = b"entraide/stream-header/v1"
"""Domain of the blake2b hash that derives a stream header from the ephemeral seed."""
_CLOSE_LIMITS = Limits(max_bytes=MAX_CLOSE_MESSAGE_BYTES + 32, max_str=MAX_CLOSE_MESSAGE_BYTES,
                       max_bin=0, max_array=0, max_map=2, max_depth=1)


class CloseReason(IntEnum):
    """Why a session ended. Values 1..9 travel in close frames.

    ``UNKNOWN`` and ``CONNECTION_LOST`` are never sent: ``UNKNOWN`` reports a code
    this version does not define (a newer peer), ``CONNECTION_LOST`` a transport that
    closed before the peer's final frame (``Session.transport_closed``).
    """

    UNKNOWN = 0
    NORMAL = 1
    SHUTDOWN = 2
    PROTOCOL_ERROR = 3
    UNTRUSTED = 4
    REMOVED = 5
    IDLE_TIMEOUT = 6
    DUPLICATE_SESSION = 7
    TOO_SLOW = 8
    INTERNAL_ERROR = 9
    CONNECTION_LOST = 255


SENDABLE = frozenset(r for r in CloseReason
                      if r not in (CloseReason.UNKNOWN, CloseReason.CONNECTION_LOST))
"""The reasons a close frame may carry (``close`` refuses the others)."""


class SessionState(Enum):
    """Where a session is. Initiators start ``IDLE``, responders ``AWAIT_HELLO``."""

    IDLE = "idle"                    # initiator, start() not called yet
    SENT_HELLO = "sent_hello"        # initiator, waiting for REPLY
    AWAIT_HELLO = "await_hello"      # responder, waiting for HELLO
    SENT_REPLY = "sent_reply"        # responder, waiting for FINISH
    ESTABLISHED = "established"      # both directions open
    LOCAL_CLOSED = "local_closed"    # our final sent; still receiving
    REMOTE_CLOSED = "remote_closed"  # peer's final received; we may only close()
    CLOSED = "closed"                # over, cleanly or not
    FAILED = "failed"                # the peer broke the protocol; drop the connection


class SessionInput(Enum):
    """What happens to a session: a call, or a frame or event from the peer."""

    START = "start"
    RECV_HELLO = "receive HELLO"
    RECV_REPLY = "receive REPLY"
    RECV_FINISH = "receive FINISH"
    SEND_DATA = "send"
    RECV_DATA = "receive a message"
    CLOSE = "close"
    RECV_FINAL = "receive the final frame"
    TRANSPORT_CLOSED = "transport closed"
    REMOTE_ERROR = "remote protocol error"


_S, _I = SessionState, SessionInput
HANDSHAKING = (_S.IDLE, _S.SENT_HELLO, _S.AWAIT_HELLO, _S.SENT_REPLY)
"""The states before the peer is verified: nothing is sent to it encrypted."""
_LIVE = (*HANDSHAKING, _S.ESTABLISHED, _S.LOCAL_CLOSED, _S.REMOTE_CLOSED)

TRANSITIONS: dict[tuple[SessionState, SessionInput], SessionState] = {
    (_S.IDLE, _I.START): _S.SENT_HELLO,
    (_S.SENT_HELLO, _I.RECV_REPLY): _S.ESTABLISHED,
    (_S.AWAIT_HELLO, _I.RECV_HELLO): _S.SENT_REPLY,
    (_S.SENT_REPLY, _I.RECV_FINISH): _S.ESTABLISHED,
    (_S.ESTABLISHED, _I.SEND_DATA): _S.ESTABLISHED,
    (_S.ESTABLISHED, _I.RECV_DATA): _S.ESTABLISHED,
    (_S.LOCAL_CLOSED, _I.RECV_DATA): _S.LOCAL_CLOSED,
    (_S.ESTABLISHED, _I.CLOSE): _S.LOCAL_CLOSED,
    (_S.ESTABLISHED, _I.RECV_FINAL): _S.REMOTE_CLOSED,
    (_S.LOCAL_CLOSED, _I.RECV_FINAL): _S.CLOSED,
    (_S.REMOTE_CLOSED, _I.CLOSE): _S.CLOSED,
    # close() never fails for a state reason: cleanup paths call it unconditionally.
    (_S.LOCAL_CLOSED, _I.CLOSE): _S.LOCAL_CLOSED,
    (_S.CLOSED, _I.CLOSE): _S.CLOSED,
    (_S.FAILED, _I.CLOSE): _S.FAILED,
    **{(s, _I.CLOSE): _S.CLOSED for s in HANDSHAKING},
    **{(s, _I.TRANSPORT_CLOSED): _S.CLOSED for s in (*_LIVE, _S.CLOSED)},
    (_S.FAILED, _I.TRANSPORT_CLOSED): _S.FAILED,
    **{(s, _I.REMOTE_ERROR): _S.FAILED for s in (*_LIVE, _S.CLOSED)},
}
"""(state, input) -> next state. Anything missing is a ``LocalProtocolError``."""


@dataclass(frozen=True)
class HandshakeComplete:
    """The peer proved possession of ``peer`` (a trusted key); messages may flow."""

    peer: PublicKey


@dataclass(frozen=True)
class MessageReceived:
    """One application message from the peer, authenticated and in order."""

    data: bytes

    def __repr__(self) -> str:
        return f"MessageReceived(<{len(self.data)} bytes>)"


@dataclass(frozen=True)
class SessionClosed:
    """The peer's direction ended: its final frame (``CONNECTION_LOST`` if none came)."""

    reason: CloseReason
    message: str


Event = HandshakeComplete | MessageReceived | SessionClosed


def open_stream(header: bytes, key: bytes) -> sodium.crypto_secretstream_xchacha20poly1305_state:
    # init_pull and init_push leave the same state for the same (header, key): libsodium
    # derives both with HChaCha20(key, header[:16]) and header[16:] as nonce. Using
    # init_pull for our sending side lets the header come from the caller's seed rather
    # than libsodium's RNG; the peer sees an ordinary secretstream either way.
    state = sodium.crypto_secretstream_xchacha20poly1305_state()
    sodium.crypto_secretstream_xchacha20poly1305_init_pull(state, header, key)
    return state



def encode_close(reason: CloseReason, message: str) -> bytes:
    """The plaintext of a close frame: ``{code, message}``, the message cut to
    ``MAX_CLOSE_MESSAGE_BYTES`` of UTF-8 (never inside a character)."""
    text = message.encode("utf-8")[:MAX_CLOSE_MESSAGE_BYTES].decode("utf-8", "ignore")
    return encode({"code": int(reason), "message": text})


def decode_close(plain: bytes) -> tuple[CloseReason, str]:
    """The reason and message of a close frame's plaintext; a code this version does not
    send is ``UNKNOWN``.

    Raises:
        RemoteProtocolError: not ``{code: int, message: str}`` within the caps.
    """
    try:
        value = decode(plain, _CLOSE_LIMITS)
    except EncodingError as exc:
        raise RemoteProtocolError(f"malformed close frame: {exc}") from exc
    if (not isinstance(value, dict) or tuple(value) != ("code", "message")
            or not isinstance(value["code"], int) or isinstance(value["code"], bool)
            or not isinstance(value["message"], str)):
        raise RemoteProtocolError("a close frame is {code: int, message: str}")
    code: int = value["code"]
    try:
        reason = CloseReason(code)
    except ValueError:
        reason = CloseReason.UNKNOWN
    if reason not in SENDABLE:
        reason = CloseReason.UNKNOWN
    return reason, value["message"]
