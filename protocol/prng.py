"""A small deterministic PRNG for sans-I/O state machines (BLAKE2b in counter mode).

The protocol core draws no randomness of its own: the caller passes a seed (from a
CSPRNG in the agent, a fixed value in tests), and every choice the engine makes
(which peer to gossip with, timer jitter) is replayable from it. This is not a
source of secrets: never derive keys from it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TypeVar

__all__ = ["Prng"]

T = TypeVar("T")

_BLOCK = 64


class Prng:
    """Deterministic stream of bytes, integers and floats from a seed."""

    __slots__ = ("_buf", "_counter", "_key")

    def __init__(self, seed: bytes) -> None:
        """Args: seed: any bytes; equal seeds give equal streams."""
        self._key = hashlib.blake2b(bytes(seed), digest_size=64, person=b"entraide-prng").digest()
        self._counter = 0
        self._buf = b""

    def randbytes(self, n: int) -> bytes:
        """The next ``n`` bytes of the stream."""
        while len(self._buf) < n:
            block = hashlib.blake2b(self._counter.to_bytes(16, "little"), key=self._key,
                                    digest_size=_BLOCK).digest()
            self._counter += 1
            self._buf += block
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def below(self, n: int) -> int:
        """A uniform integer in ``[0, n)``; ``n`` must be positive."""
        if n <= 0:
            raise ValueError("below() needs a positive bound")
        bits = n.bit_length()
        nbytes = (bits + 7) // 8
        mask = (1 << bits) - 1
        while True:  # rejection sampling: no modulo bias
            value = int.from_bytes(self.randbytes(nbytes), "little") & mask
            if value < n:
                return value

    def random(self) -> float:
        """A uniform float in ``[0, 1)`` with 53 bits of precision."""
        return (int.from_bytes(self.randbytes(8), "little") >> 11) / float(1 << 53)

    def uniform(self, low: float, high: float) -> float:
        """A uniform float in ``[low, high)``."""
        return low + (high - low) * self.random()

    def choice(self, items: Sequence[T]) -> T:
        """One element of a non-empty sequence."""
        return items[self.below(len(items))]

    def shuffle(self, items: list[T]) -> None:
        """Shuffle ``items`` in place (Fisher-Yates)."""
        for i in range(len(items) - 1, 0, -1):
            j = self.below(i + 1)
            items[i], items[j] = items[j], items[i]

    def sample(self, items: Sequence[T], k: int) -> list[T]:
        """``min(k, len(items))`` distinct elements, in random order."""
        pool = list(items)
        self.shuffle(pool)
        return pool[:k]
