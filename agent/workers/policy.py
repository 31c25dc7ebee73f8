"""The one restart policy for every helper process of a node.

Every helper (a pipe worker, a read-lane reader) that fails is started again after a
delay that doubles with each failure in a row, from :attr:`RestartPolicy.first_s` up to
:attr:`RestartPolicy.most_s`; after :attr:`RestartPolicy.max_failures` failures in a
row (nothing done by the helper in between) the node gives it up for good and does its
work in-process (agent/workers/supervisor.py lists the helpers and their fall-backs).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RESTART", "RestartPolicy"]


@dataclass(frozen=True)
class RestartPolicy:
    """When to start a failed helper again, and when to give up on it.

    Args:
        first_s: the delay after the first failure, in seconds.
        most_s: the longest delay.
        max_failures: failures in a row after which the helper is not started again.
    """

    first_s: float = 1.0
    most_s: float = 30.0
    max_failures: int = 3

    def delay(self, failures: int) -> float:
        """Seconds to wait before starting again after ``failures`` failures in a row
        (0 before the first failure)."""
        if failures <= 0:
            return 0.0
        return min(self.most_s, self.first_s * 2.0 ** (failures - 1))

    def gives_up(self, failures: int) -> bool:
        """True when ``failures`` failures in a row mean: never start it again."""
        return failures >= self.max_failures


RESTART = RestartPolicy()
"""The node's policy: 1 s, 2 s, 4 s ... up to 30 s; given up after 3 failures in a row."""
