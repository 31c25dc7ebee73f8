from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.encoding import encode
from protocol.entries import MAX_ENTRY_BYTES, MAX_SEQ, TLP, entry_hash, sign_entry
from protocol.errors import EncodingError, OversizeError
from protocol.keys import Identity
from protocol.messages import (
    MAX_BATCH,
    MAX_IHAVE,
    MAX_MESSAGE_BYTES,
    MAX_WANT_SPAN,
    Announcement,
    Beacon,
    Entries,
    Fork,
    Graft,
    Have,
    IHave,
    Kind,
    Message,
    Ping,
    Pong,
    Prune,
    VectorItem,
    Want,
    WantRange,
    decode_message,
    encode_message,
    message_kind,
    peek_entry,
)

kids = st.binary(min_size=8, max_size=8)
seqs = st.integers(1, MAX_SEQ)
tokens = st.binary(min_size=8, max_size=8)


@st.composite
def haves(draw: st.DrawFn) -> Have:
    digest = draw(st.binary(min_size=16, max_size=16))
    if draw(st.booleans()):
        return Have(digest)
    origins = sorted(draw(st.sets(kids, max_size=8)))
    vector = tuple(VectorItem(k, draw(seqs), draw(st.binary(min_size=16, max_size=16)))
                   for k in origins)
    forked = tuple(sorted(draw(st.sets(kids, max_size=3))))
    return Have(digest, vector, forked)


@st.composite
def want_ranges(draw: st.DrawFn) -> WantRange:
    first = draw(st.integers(1, MAX_SEQ - MAX_WANT_SPAN))
    return WantRange(draw(kids), first, first + draw(st.integers(0, MAX_WANT_SPAN - 1)))


messages: st.SearchStrategy[Message] = st.one_of(
    haves(),
    st.builds(Want, st.lists(want_ranges(), min_size=1, max_size=5).map(tuple)),
    st.builds(Entries, st.lists(st.binary(min_size=1, max_size=64), min_size=1,
                                max_size=5).map(tuple), st.booleans()),
    st.builds(IHave, st.lists(st.builds(Announcement, kids, seqs), min_size=1,
                              max_size=5).map(tuple)),
    st.just(Graft()),
    st.just(Prune()),
    st.builds(Fork, st.binary(min_size=1, max_size=64)),
    st.builds(Ping, tokens),
    st.builds(Pong, tokens),
    st.builds(Beacon, kids, seqs, st.integers(0, 1024)),
)


@given(messages)
def test_messages_round_trip(msg: Message) -> None:
    data = encode_message(msg)
    assert decode_message(data) == msg
    assert message_kind(data) is not None


@given(messages)
def test_messages_encoding_is_the_canonical_encoding(msg: Message) -> None:
    # encode_message skips the generic canonicaliser; it must agree with it.
    data = encode_message(msg)
    assert encode(msgpack.unpackb(data)) == data


@settings(max_examples=5_000, deadline=None)
@given(st.binary(max_size=80))
def test_messages_random_bytes_raise_only_encoding_errors(data: bytes) -> None:
    try:
        msg = decode_message(data)
    except EncodingError:
        return
    assert encode_message(msg) == data


@settings(max_examples=2_000, deadline=None)
@given(messages, st.data())
def test_messages_mutated_bytes_raise_only_encoding_errors(msg: Message, data: st.DataObject
                                                           ) -> None:
    raw = bytearray(encode_message(msg))
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] = data.draw(st.integers(0, 255))
    try:
        decoded = decode_message(bytes(raw))
    except EncodingError:
        return
    assert encode_message(decoded) == bytes(raw)


@pytest.mark.parametrize("value", [
    [],                                           # no kind
    [0],                                          # unknown kind
    [99, b"x"],                                   # unknown kind
    [True],                                       # a boolean is not a kind
    [Kind.GRAFT, 1],                              # GRAFT has no fields
    [Kind.HAVE, b"short"],                        # digest of the wrong size
    [Kind.HAVE, b"d" * 16, []],                   # HAVE has 1 or 3 fields
    [Kind.HAVE, b"d" * 16, [[b"k" * 8, 1, b"h" * 16], [b"a" * 8, 1, b"h" * 16]], []],  # unsorted
    [Kind.HAVE, b"d" * 16, [[b"k" * 8, 1, b"h" * 16], [b"k" * 8, 2, b"h" * 16]], []],  # repeated
    [Kind.HAVE, b"d" * 16, [[b"k" * 8, 0, b"h" * 16]], []],  # seq 0
    [Kind.HAVE, b"d" * 16, [], [b"b" * 8, b"a" * 8]],          # forked unsorted
    [Kind.WANT, []],                              # nothing wanted
    [Kind.WANT, [[b"k" * 8, 5, 4]]],              # ends before it starts
    [Kind.WANT, [[b"k" * 8, 0, 4]]],              # seq 0
    [Kind.WANT, [[b"k" * 8, 1, MAX_WANT_SPAN + 1]]],  # absurd span
    [Kind.WANT, [[b"k" * 7, 1, 2]]],              # short key id
    [Kind.WANT, [[b"k" * 8, 1]]],                 # wrong arity
    [Kind.WANT, [[b"k" * 8, 1, 1 << 63]]],        # seq over 2^63-1
    [Kind.ENTRIES, True, []],                     # empty batch
    [Kind.ENTRIES, 1, [b"x"]],                    # push is a boolean
    [Kind.ENTRIES, False, [b""]],                 # empty entry
    [Kind.ENTRIES, False, ["text"]],              # entry of the wrong type
    [Kind.IHAVE, [[b"k" * 8, -1]]],               # negative seq
    [Kind.FORK, b""],                             # empty proof
    [Kind.PING, b"1234567"],                      # short token
    [Kind.BEACON, b"k" * 8, 1, 1025],             # too many hops
    [Kind.BEACON, b"k" * 8, 0, 0],                # round 0
    [Kind.PONG, {"a": 1}],                        # maps are not used
])
def test_messages_reject_malformed(value: list[object]) -> None:
    with pytest.raises(EncodingError):
        decode_message(encode(value))


def test_messages_reject_non_canonical_and_trailing_bytes() -> None:
    good = encode_message(Ping(b"12345678"))
    with pytest.raises(EncodingError):
        decode_message(good + b"\x00")
    with pytest.raises(EncodingError):
        decode_message(b"\x92\xcc\x08\xc4\x0812345678")  # uint8 for a fixint kind
    with pytest.raises(EncodingError):
        decode_message(msgpack.packb([8, 1.5]))


def test_messages_cap_sizes_and_counts() -> None:
    with pytest.raises(OversizeError):
        decode_message(b"\x00" * (MAX_MESSAGE_BYTES + 1))
    with pytest.raises(OversizeError):
        IHave(tuple(Announcement(b"k" * 8, 1) for _ in range(MAX_IHAVE + 1)))
    with pytest.raises(OversizeError):
        Entries(tuple(b"x" for _ in range(MAX_BATCH + 1)))
    with pytest.raises(OversizeError):
        Entries((b"x" * (MAX_ENTRY_BYTES + 1),))
    too_big = Entries(tuple(b"x" * (MAX_ENTRY_BYTES - 10) for _ in range(5)))
    with pytest.raises(OversizeError):
        encode_message(too_big)
    with pytest.raises(OversizeError):
        decode_message(encode([Kind.ENTRIES, False, [b"x" * (MAX_ENTRY_BYTES - 10)] * 5]))


def test_messages_refuse_to_build_invalid_values() -> None:
    with pytest.raises(EncodingError):
        Have(b"d" * 16, None, (b"k" * 8,))  # forked origins travel with a vector
    with pytest.raises(EncodingError):
        Want(())
    with pytest.raises(EncodingError):
        encode_message("PING")  # type: ignore[arg-type]


def test_messages_kind_is_read_without_decoding() -> None:
    assert message_kind(encode_message(Graft())) is Kind.GRAFT
    assert message_kind(encode_message(Entries((b"x",), True))) is Kind.ENTRIES
    assert message_kind(b"") is None
    assert message_kind(b"\x91\x63") is None


def test_messages_peek_entry_reads_the_claimed_header() -> None:
    identity = Identity(b"\x07" * 32)
    first = sign_entry(identity, seq=1, prev=None, now_ms=1, tlp=TLP.CLEAR, audience=None,
                       body=b"a")
    second = sign_entry(identity, seq=2, prev=first.hash, now_ms=2, tlp=TLP.CLEAR,
                        audience=None, body=b"b")
    header = peek_entry(second.raw)
    assert (header.origin, header.seq, header.prev) == (identity.public_key.raw, 2, first.hash)
    assert header.hash == second.hash == entry_hash(second.raw)  # the id, from one split
    assert peek_entry(first.raw).prev is None


@pytest.mark.parametrize("raw", [
    b"",
    b"\x90",
    encode([1, b"k" * 32, 1]),                                       # too short
    encode([1, b"k" * 31, 1, None, 0, "CLEAR", None, b"", b"s"]),   # short origin
    encode([1, b"k" * 32, 0, None, 0, "CLEAR", None, b"", b"s"]),   # seq 0
    encode([1, b"k" * 32, 2, b"p" * 31, 0, "CLEAR", None, b"", b"s"]),  # short prev
    encode([1, b"k" * 32, "2", None, 0, "CLEAR", None, b"", b"s"]),  # seq not an int
    b"\x99\xc1",                                                     # reserved byte
    b"\x99\x01\xc4\xff",                                             # truncated
])
def test_messages_peek_entry_rejects_garbage(raw: bytes) -> None:
    with pytest.raises(EncodingError):
        peek_entry(raw)


@settings(max_examples=3_000, deadline=None)
@given(st.binary(max_size=120))
def test_messages_peek_entry_random_bytes_raise_only_encoding_errors(raw: bytes) -> None:
    with contextlib.suppress(EncodingError):
        peek_entry(raw)


def test_messages_peek_entry_reads_header_only_entries() -> None:
    identity = Identity(b"\x07" * 32)
    first = sign_entry(identity, seq=1, prev=None, now_ms=1, tlp=TLP.CLEAR, audience=None,
                       body=b"a")
    amber = sign_entry(identity, seq=2, prev=first.hash, now_ms=2, tlp=TLP.AMBER,
                       audience=tuple(bytes([i]) * 8 for i in range(40)), body=b"b")
    for entry in (first, amber):
        assert peek_entry(entry.raw) == peek_entry(entry.without_body().raw)
        assert peek_entry(entry.raw).seq == entry.seq


@settings(max_examples=3_000, deadline=None)
@given(st.lists(st.one_of(st.none(), st.integers(-5, 1 << 64 - 1), st.binary(max_size=40)),
                max_size=11), st.one_of(st.none(), st.binary(max_size=4)), st.binary(max_size=3))
def test_messages_peek_entry_hostile_headers_raise_only_encoding_errors(
        fields: list[object], body: bytes | None, tail: bytes) -> None:
    raw = msgpack.packb([msgpack.packb(fields, use_bin_type=True), body],
                        use_bin_type=True) + tail
    with contextlib.suppress(EncodingError):
        peek_entry(raw)
