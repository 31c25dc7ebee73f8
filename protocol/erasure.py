"""Erasure of an entry's body, its receipts, and the rule for entries about entries
(docs/protocol.md §6 "Erasure", §4 "Entries about entries").

An origin erases one of its own entries with an :class:`Erasure` entry naming it
(``of``). Every node that holds the target and reads the erasure drops the target's
body and every row derived from it (the header stays: the chain still verifies, §3),
then answers with an :class:`ErasureReceipt` entry sealed to the origin. Both are
ordinary signed entries of their authors.

Invariants:
- An erasure takes effect only when its author is the target's origin
  (:func:`erasure_applies`); any other is stored, has no effect, and is counted by
  the node.
- An entry about another entry (sighting, retraction, aid follow-up, erasure,
  receipt) is at least as restricted as that entry: :func:`at_least` orders TLPs
  and :func:`covers` says whether a requested TLP is enough.
- Nothing here reads a clock or does I/O.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from protocol.entries import TLP
from protocol.payload_fields import EntryId, Note

__all__ = [
    "ERASURE_KIND",
    "RECEIPT_KIND",
    "TLP_ORDER",
    "Erasure",
    "ErasureReceipt",
    "at_least",
    "covers",
    "erasure_applies",
    "receipt_tlp",
]

ERASURE_KIND = "erasure"
RECEIPT_KIND = "erasure-receipt"

TLP_ORDER: tuple[TLP, ...] = (TLP.CLEAR, TLP.GREEN, TLP.AMBER, TLP.AMBER_STRICT, TLP.RED)
"""TLP 2.0 labels from the least to the most restricted."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)


class Erasure(_Model):
    """The author erases one of its own earlier entries (``of``): every holder drops
    its body and derived rows. ``reason`` is for the privacy officer (never the value)."""

    kind: Literal["erasure"] = "erasure"
    of: EntryId
    reason: Note | None = None


class ErasureReceipt(_Model):
    """The author has erased the body of entry ``of``, as asked by entry ``erasure``.

    Sealed to the target's origin (and the author): the receipt's own time is the
    entry's ``ts``.
    """

    kind: Literal["erasure-receipt"] = "erasure-receipt"
    of: EntryId
    erasure: EntryId


def at_least(tlp: TLP, floor: TLP) -> TLP:
    """The more restricted of ``tlp`` and ``floor``."""
    return tlp if TLP_ORDER.index(TLP(tlp)) >= TLP_ORDER.index(TLP(floor)) else TLP(floor)


def covers(tlp: TLP, target: TLP) -> bool:
    """True when an entry labelled ``tlp`` is at least as restricted as ``target``."""
    return TLP_ORDER.index(TLP(tlp)) >= TLP_ORDER.index(TLP(target))


def receipt_tlp(target: TLP) -> TLP:
    """A receipt's TLP: the target's, and at least AMBER+STRICT (sealed to the origin
    and the author only, with blinded recipient ids: §4)."""
    return at_least(target, TLP.AMBER_STRICT)


def erasure_applies(erasure_origin: bytes, target_origin: bytes) -> bool:
    """True when an erasure by ``erasure_origin`` (raw key) may erase an entry of
    ``target_origin``: only an entry's origin erases it."""
    return bytes(erasure_origin) == bytes(target_origin)
