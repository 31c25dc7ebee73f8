from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.encoding import Limits, decode, encode
from protocol.errors import EncodingError, OversizeError

values = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 64) - 1) | st.text(max_size=50)
    | st.binary(max_size=50),
    lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)


@given(values)
def test_encoding_round_trips(value: object) -> None:
    assert decode(encode(value)) == value


@settings(max_examples=10_000, deadline=None)
@given(st.binary(max_size=64))
def test_encoding_random_bytes_raise_only_typed_errors(data: bytes) -> None:
    try:
        value = decode(data)
    except EncodingError:
        return
    assert encode(value) == data


@pytest.mark.parametrize("data", [
    msgpack.packb(1.5),                    # float
    b"\xc7\x00\x00",                       # ext 8 of length 0 (max_ext_len=0 allows it)
    b"\xcc\x01",                           # uint8 for a fixint
    b"\xd9\x01a",                          # str8 for a fixstr
    msgpack.packb({"b": 1, "a": 2}),       # unsorted map keys
    b"\x82\xa1a\x01\xa1a\x02",             # duplicate map key
    b"\x01\x01",                           # trailing byte
    b"\xc1",                               # never used
    b"\xd4\x01\x00",                       # extension type
    b"\x92\x01",                           # truncated
])
def test_encoding_rejects_non_canonical(data: bytes) -> None:
    with pytest.raises(EncodingError):
        decode(data)


def test_encoding_caps_sizes() -> None:
    with pytest.raises(OversizeError):
        decode(encode(b"x" * 100), Limits(max_bin=10))
    with pytest.raises(OversizeError):
        decode(encode(list(range(20))), Limits(max_array=10))
    with pytest.raises(OversizeError):
        decode(encode("x" * 100), Limits(max_bytes=50))


def test_encoding_refuses_unencodable() -> None:
    for bad in (1.0, {1: 2}, object(), 1 << 64):
        with pytest.raises(EncodingError):
            encode(bad)


def test_encoding_caps_depth() -> None:
    nested: list[object] = []
    for _ in range(30):
        nested = [nested]
    with pytest.raises(EncodingError):
        decode(msgpack.packb(nested))


@pytest.mark.parametrize("data", [
    b"\x81\xc4\x01a\x01",            # {b"a": 1}: msgpack's strict_map_key allows binary keys
    b"\x91\x81\xc4\x00\xc0",         # [{b"": None}]
])
def test_encoding_refuses_binary_map_keys(data: bytes) -> None:
    # Found by the fuzzer (tests/fuzz): a binary key raised AttributeError out of decode.
    with pytest.raises(EncodingError, match="map keys must be strings"):
        decode(data)
