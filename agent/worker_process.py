"""What this node's worker processes share (agent/prepare.py, agent/taxii_post.py).

A worker started through ``multiprocessing`` waits on its pipe for work; if the node
is killed with -9 nothing closes that pipe, and the worker would wait for ever. Each
worker therefore runs :func:`watch_parent` as its initializer.
"""

from __future__ import annotations

import os
import threading
import time

__all__ = ["watch_parent"]

WATCH_INTERVAL_S = 0.5
"""How often a worker checks that its node is still its parent."""


def watch_parent(parent: int) -> None:
    """In a worker process: end it as soon as ``parent`` (the node's pid) is gone."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(WATCH_INTERVAL_S)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
