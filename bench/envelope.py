"""envelope: what blinded audiences cost (docs/protocol.md §4, docs/benchmarks.md).

Run alone: ``.venv/bin/python -m bench.envelope`` (a few seconds, no node). For an
audience of 2, 16 and 256 recipients and a 1,000-byte payload it prints the best of
three runs of:
- seal: the author's cost (one X25519 per recipient);
- recognise: ``is_recipient`` for a recipient and for a non-recipient, the test every
  node makes on every encrypted entry it stores: one X25519, whatever the size;
- open: a recipient's full decryption (recognise, unwrap, decrypt, inner ids);
- trial: for comparison, what finding one's slot by trying each would cost: one
  libsodium sealed-box open per slot, every slot for a non-recipient.
"""

from __future__ import annotations

import os
import timeit
from collections.abc import Callable

import nacl.bindings

from protocol.envelope import is_recipient, open_envelope, seal_envelope
from protocol.keys import Identity

SIZES = (2, 16, 256)
PAYLOAD = b"x" * 1000


def _best(fn: Callable[[], object], number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=3)) / number


def _trial(boxes: list[bytes], me: Identity) -> None:
    for box in boxes:
        try:
            nacl.bindings.crypto_box_seal_open(box, me.public_key.x25519, me.x25519_secret)
        except Exception:  # every slot fails for a non-recipient
            continue


def _row(n: int, ids: list[Identity], outsider: Identity) -> str:
    keys = [i.public_key for i in ids[:n]]
    seal = _best(lambda: seal_envelope(PAYLOAD, keys, os.urandom), 10)
    audience, body = seal_envelope(PAYLOAD, keys, os.urandom)
    mine = _best(lambda: is_recipient(body, audience, ids[n - 1]), 200)
    not_mine = _best(lambda: is_recipient(body, audience, outsider), 200)
    opened = _best(lambda: open_envelope(body, audience, ids[n - 1]), 200)
    boxes = [nacl.bindings.crypto_box_seal(os.urandom(32), k.x25519) for k in keys]
    trial = _best(lambda: _trial(boxes, outsider), 5)
    return (f"| {n} | {seal * 1e3:.2f} ms | {mine * 1e6:.0f} µs | {not_mine * 1e6:.0f} µs "
            f"| {opened * 1e6:.0f} µs | {trial * 1e3:.2f} ms |")


def main() -> None:
    ids = [Identity(os.urandom(32)) for _ in range(max(SIZES) + 1)]
    print("| recipients | seal | recognise (recipient) | recognise (non-recipient) "
          "| open | trial of every slot |")
    print("|---|---|---|---|---|---|")
    for n in SIZES:
        print(_row(n, ids, ids[-1]))


if __name__ == "__main__":
    main()
