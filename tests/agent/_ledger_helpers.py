"""Shared builders for the ledger tests: real keys, real signed entries, real files."""

from __future__ import annotations

import asyncio
import hashlib
import os
import weakref
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from agent.node.author import Author
from agent.storage.ledger import Ledger, OwnDraft
from protocol.entries import TLP, VerifiedEntry, sign_entry
from protocol.envelope import seal_envelope
from protocol.keys import Identity, PublicKey
from protocol.payloads import Observation, Payload, Retraction, Sighting, encode_payload


def identity(n: int) -> Identity:
    """A fixed identity per small integer, so failures replay."""
    return Identity(hashlib.blake2b(b"ledger-test-%d" % n, digest_size=32).digest())


def ip(n: int) -> str:
    return f"198.51.{n // 256 % 256}.{n % 256}"


def observation(value: str = "203.0.113.7", type: str = "ipv4-addr", **fields: Any) -> Observation:
    return Observation(type=type, value=value, **fields)


def draft(payload: Payload | None = None, tlp: TLP = TLP.GREEN,
          recipients: Iterable[PublicKey] = ()) -> OwnDraft:
    return OwnDraft(payload or observation(), tlp, tuple(recipients))


def chain(author: Identity, count: int, *, start: tuple[int, bytes] | None = None,
          tlp: TLP = TLP.GREEN, recipients: Iterable[PublicKey] = (), ts: int = 1_700_000_000_000,
          payload: Callable[[int], Payload] | None = None) -> list[VerifiedEntry]:
    """``count`` signed entries of ``author`` following ``start`` (seq, hash)."""
    seq, prev = (0, None) if start is None else start
    out = []
    for i in range(count):
        body_payload = payload(seq + 1) if payload else observation(ip(seq + 1))
        data = encode_payload(body_payload)
        audience = None
        if tlp.encrypted:
            audience, data = seal_envelope(data, list(recipients), os.urandom)
        entry = sign_entry(author, seq=seq + 1, prev=prev, now_ms=ts + i, tlp=tlp,
                           audience=audience, body=data)
        out.append(entry)
        seq, prev = entry.seq, entry.hash
    return out


def head_of(entries: list[VerifiedEntry]) -> tuple[int, bytes]:
    return entries[-1].seq, entries[-1].hash


def retraction(of: VerifiedEntry) -> Retraction:
    return Retraction(of=of.id)


def sighting(of: VerifiedEntry, count: int = 1) -> Sighting:
    return Sighting(of=of.id, count=count)


class Trust:
    """A mutable trust list: ``trust.keys`` is consulted live by the ledger."""

    def __init__(self, *keys: PublicKey) -> None:
        self.keys = set(keys)

    def __call__(self, key: PublicKey) -> bool:
        return key in self.keys


_APPEND_LOCKS: weakref.WeakKeyDictionary[Ledger, asyncio.Lock] = weakref.WeakKeyDictionary()


async def append_own(ledger: Ledger, author: Author,
                     drafts: Sequence[OwnDraft]) -> list[VerifiedEntry]:
    """Sign ``drafts`` after the ledger's stored head and store them durably: the
    node's submit path (agent/node/committer.py) without its grouping. Calls on one
    ledger run one after the other, as the committer's rounds do."""
    drafts = list(drafts)
    lock = _APPEND_LOCKS.setdefault(ledger, asyncio.Lock())

    async def locked() -> list[VerifiedEntry]:
        async with lock:
            built = await author.sign(drafts, ledger.head(author.public_key))
            return await ledger.store_own(built)

    # Shielded as a whole, as the committer's rounds are: a caller that goes away does
    # not release the next call before this one's entries are stored.
    return await asyncio.shield(asyncio.ensure_future(locked()))


class AuthoringLedger(Ledger):
    """A ledger that also signs, for tests: ``append_own`` is :func:`append_own` with
    the author :func:`open_ledger` gave it (the product's ledger only stores)."""

    author: Author

    async def append_own(self, drafts: Sequence[OwnDraft]) -> list[VerifiedEntry]:
        return await append_own(self, self.author, drafts)


async def open_ledger(path: Path, me: Identity, trust: Callable[[PublicKey], bool] | None = None,
                      *, randbytes: Callable[[int], bytes] = os.urandom,
                      **kwargs: Any) -> AuthoringLedger:
    """A ledger of ``me`` at ``path`` whose clock stands still at 1_800_000_000 s, with
    an ``append_own`` that signs as ``me`` (envelopes sealed with ``randbytes``)."""
    clock = lambda: 1_800_000_000.0  # noqa: E731
    ledger = await AuthoringLedger.open(path, identity=me,
                                        is_trusted_origin=trust or (lambda _k: True),
                                        clock=clock, **kwargs)
    ledger.author = Author(me, clock=clock, randbytes=randbytes)
    return ledger
