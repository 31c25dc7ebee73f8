"""agent/workers/gcsettings.py: the collector settings of the node's processes.

Run in a child interpreter: settle_heap changes the whole process's collector.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

_CHILD = """
import gc, weakref
import agent.workers.verify  # a worker's imports: what settle_heap freezes
from agent.workers.gcsettings import THRESHOLDS, settle_heap

before = gc.get_freeze_count()
settle_heap()
assert gc.get_threshold() == THRESHOLDS, gc.get_threshold()
assert gc.get_freeze_count() > before + 10_000, (before, gc.get_freeze_count())

class Node:
    pass

a, b = Node(), Node()
a.other, b.other = b, a  # a cycle made after the freeze is still collected
gone = weakref.ref(a)
del a, b
gc.collect()
assert gone() is None
print("ok")
"""


def test_settle_heap_freezes_start_up_objects_and_still_collects_cycles() -> None:
    done = subprocess.run([sys.executable, "-c", _CHILD], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
