"""The fuzz targets: one function per parser that takes hostile bytes (issue 17 item 3).

Each target feeds ``data`` to one parser and lets through only what that parser promises
to raise (its typed errors, under ``EntraideError``); anything else escapes and is a
finding. The same functions run under Hypothesis in the suite (tests/fuzz/test_fuzz.py)
and under atheris, coverage-guided, in ``scripts/fuzz TARGET --seconds N``, with the
corpus in tests/fuzz/corpus/<target>/ (seeded from the test vectors by :func:`seeds`).

Targets:
- ``encoding``: protocol.encoding.decode; what it accepts re-encodes to the same bytes.
- ``handshake``: the HELLO, REPLY and FINISH parsers and the label check.
- ``stix``: protocol.stix_check.check_stix_object on a JSON document.
- ``taxii``: a TAXII POST body: the envelope parser, then every object judged as the
  post path judges it (agent.taxii.post: STIX checks, import, TLP).
- ``misp``: agent.misp.parse.parse_misp on a JSON document.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.misp.parse import parse_misp
from agent.taxii.post import _judge, parse_envelope
from protocol.encoding import decode, encode
from protocol.errors import EntraideError
from protocol.handshake import check_label, decode_finish, decode_hello, decode_reply
from protocol.stix_check import check_stix_object

__all__ = ["CORPUS", "TARGETS", "seeds"]

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "fuzz" / "corpus"
_LABEL = b"entraide/peer/v2"


def fuzz_encoding(data: bytes) -> None:
    try:
        value = decode(data)
    except EntraideError:
        return
    assert encode(value) == data, "decode accepted a form that is not canonical"


def fuzz_handshake(data: bytes) -> None:
    for parse in (decode_hello, decode_reply, decode_finish):
        with contextlib.suppress(EntraideError):
            parse(data)
    with contextlib.suppress(EntraideError):
        check_label(data[:64], _LABEL)


def _json(data: bytes) -> Any:
    """The JSON document in ``data``, or a marker for bytes that are not JSON (the
    API's JSON reader refuses those before any parser sees them)."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return _NOT_JSON


_NOT_JSON = object()


def fuzz_stix(data: bytes) -> None:
    document = _json(data)
    if document is _NOT_JSON:
        return
    with contextlib.suppress(EntraideError):
        check_stix_object(document)


def fuzz_taxii(data: bytes) -> None:
    try:
        objects = parse_envelope(data)
    except EntraideError:
        return
    _judge(objects, 0, "QC", False)


def fuzz_misp(data: bytes) -> None:
    document = _json(data)
    if document is _NOT_JSON:
        return
    with contextlib.suppress(EntraideError):
        parse_misp(document)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "encoding": fuzz_encoding,
    "handshake": fuzz_handshake,
    "stix": fuzz_stix,
    "misp": fuzz_misp,
    "taxii": fuzz_taxii,
}


def _hex_strings(value: Any) -> list[bytes]:
    """Every hex string of a vector file (headers, frames, bodies)."""
    found: list[bytes] = []
    if isinstance(value, dict):
        for item in value.values():
            found += _hex_strings(item)
    elif isinstance(value, list):
        for item in value:
            found += _hex_strings(item)
    elif isinstance(value, str) and len(value) >= 2 and len(value) % 2 == 0:
        with contextlib.suppress(ValueError):
            found.append(bytes.fromhex(value))
    return found


def seeds(target: str) -> list[bytes]:
    """The seed inputs of ``target``, from the test vectors and test data."""
    vectors = ROOT / "tests" / "vectors"
    data = ROOT / "tests" / "data"
    if target == "encoding":
        core = json.loads((vectors / "core.json").read_text())
        return [encode(None), encode({"a": [1, b"x", "y"]}), *_hex_strings(core)]
    if target == "handshake":
        hs = json.loads((vectors / "session_handshake.json").read_text())
        return [bytes.fromhex(hs[k]) for k in ("hello", "reply", "finish")] + [_LABEL]
    if target == "stix":
        found = []
        for name in ("oasis-indicators-for-C2-with-COA.json",
                     "oasis-malicious-email-indicator-with-attachment.json"):
            bundle = json.loads((data / "stix" / name).read_text())
            found += [json.dumps(obj).encode() for obj in bundle["objects"]]
        return found
    if target == "taxii":
        return [(data / "stix" / name).read_bytes() for name in (
            "oasis-indicators-for-C2-with-COA.json",
            "oasis-malicious-email-indicator-with-attachment.json")] + [
            b'{"objects": []}', b'{"type": "indicator"}']
    if target == "misp":
        event = (data / "misp" / "57c4445b-c548-4654-af0b-4be3950d210f.json").read_bytes()
        return [event, b'{"response": []}', b"[]"]
    raise KeyError(target)
