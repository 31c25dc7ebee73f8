"""What callers hand the node to write: own entries with their TLP and audience by name.

A :class:`Submission` names its audience as peers are named in the trust list; the
node turns each into an :class:`~agent.storage.types.OwnDraft` (recipients as keys)
with :func:`drafts` before anything is signed, so a bad audience writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from agent.storage.types import OwnDraft, PreparedObservation
from protocol.entries import TLP
from protocol.keys import PublicKey
from protocol.payloads import Payload

__all__ = ["PreparedSubmission", "Submission", "drafts"]


@dataclass(frozen=True)
class Submission:
    """One own entry to write: a payload, its TLP and its audience (peer names).

    ``audience`` None means: nobody in particular (CLEAR, GREEN), or, for AMBER and
    AMBER+STRICT, every member of the trust list now. RED needs explicit names.
    """

    payload: Payload
    tlp: TLP = TLP.GREEN
    audience: tuple[str, ...] | None = None


@dataclass(frozen=True)
class PreparedSubmission:
    """A :class:`Submission` of an observation validated and encoded in the batch
    worker (agent/workers/batch.py; :meth:`agent.node.node.Node.prepare_batch`)."""

    payload: PreparedObservation
    tlp: TLP
    audience: tuple[str, ...] | None


Recipients = Callable[[TLP, Sequence[str] | None], tuple[PublicKey, ...]]
"""Resolves a TLP and audience names to recipient keys (``Membership.recipients``)."""


def drafts(submissions: Sequence[Submission | PreparedSubmission],
           recipients: Recipients) -> list[OwnDraft]:
    """The drafts of ``submissions``, in order, recipients resolved.

    Raises:
        UnknownAudienceError: a bad audience (whatever ``recipients`` raises).
    """
    # A batch's items nearly all share a TLP and audience: resolve each pair once.
    resolved: dict[tuple[TLP, tuple[str, ...] | None], tuple[TLP, tuple[PublicKey, ...]]] = {}
    out = []
    for s in submissions:
        route = resolved.get((s.tlp, s.audience))
        if route is None:
            route = resolved[(s.tlp, s.audience)] = (TLP(s.tlp), recipients(s.tlp, s.audience))
        out.append(OwnDraft(s.payload, *route))
    return out
