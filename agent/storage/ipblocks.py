"""Which CIDR blocks an IP lookup must probe: the prefix lengths of the blocks stored,
learned per connection (agent/storage/queries.py runs the lookups); and schema 7,
which indexes the stored blocks and re-keys URL rows (:func:`migrate_v7`).

``protocol.matching.containment_keys`` gives the keys an address or block matches;
probing only the block lengths actually stored keeps a lookup on a ledger without
blocks at one key (docs/operations.md, "Indicator").

Invariants:
- The lengths known for a connection are a superset of the lengths stored in the rows
  it has seen: rows only get higher ``obs_no``s while the writer runs, so each call
  reads the rows written since the last one (the first reads every stored block once); an
  erased block's length stays (one probe too many, never one too few).
- Reading those rows walks the partial index ``observations_ip_blocks`` (schema 7):
  the blocks written since, never every IP row (0.31 ms instead of 194 ms for the
  first read at 1M IPv4 rows, docs/benchmarks.md).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

from protocol.indicators import IndicatorType
from protocol.matching import containment_keys, indicator_key

__all__ = ["matching_keys", "migrate_v7", "rekey_urls"]


@dataclass
class _Blocks:
    """The prefix lengths of the CIDR blocks stored, per IP type, up to ``obs_no``."""

    conn: sqlite3.Connection
    obs_no: int = 0
    lengths: dict[str, set[int]] = field(default_factory=dict)
    frozen: dict[str, frozenset[int]] = field(default_factory=dict)


# By connection (sqlite3 connections take no weak references): the newest 64, each
# entry holding its connection so that an id is never taken for another's.
_BLOCKS: dict[int, _Blocks] = {}
_MAX_BLOCK_STATES = 64
_IP_TYPES = (IndicatorType.IPV4_ADDR.value, IndicatorType.IPV6_ADDR.value)
# The index's WHERE and the query's are the same text, and the query names the index:
# SQLite's planner would otherwise take the (type, value) index and read every IP row.
_BLOCKS_WHERE = "type IN ('ipv4-addr', 'ipv6-addr') AND instr(value, '/') > 0"
_BLOCKS_INDEX = ("CREATE INDEX observations_ip_blocks ON observations (obs_no) "
                 f"WHERE {_BLOCKS_WHERE}")
_NEW_BLOCKS_SQL = ("SELECT obs_no, type, value FROM observations INDEXED BY observations_ip_blocks "
                   f"WHERE obs_no > ? AND {_BLOCKS_WHERE}")


def migrate_v7(conn: sqlite3.Connection) -> None:
    """Schema 7: the partial index of the stored CIDR blocks (the first IP lookup of a
    connection reads the blocks, not every IP row), and the ``url`` rows of the query
    tables re-keyed by ``indicator_key`` (:func:`rekey_urls`)."""
    conn.execute(_BLOCKS_INDEX)
    rekey_urls(conn)


_REKEY_BATCH = 10_000


def rekey_urls(conn: sqlite3.Connection, *, batch: int = _REKEY_BATCH) -> int:
    """Give the ``url`` rows written before ``indicator_key`` their key (they kept the
    spelling submitted, which an upgraded node's URL lookups would miss); return how
    many changed. Reads ``batch`` rows at a time along the (type, value) index, so its
    memory is bounded; a row whose value the key refuses, or whose key is not its own
    key, is left as it is (each row changes at most once, so the walk ends)."""
    after: tuple[str, int] = ("", 0)
    changed = 0
    while rows := conn.execute(
            "SELECT value, obs_no FROM observations WHERE type = 'url' "
            "AND (value, obs_no) > (?, ?) ORDER BY value, obs_no LIMIT ?",
            (*after, batch)).fetchall():
        after = rows[-1]
        updates = []
        for value, obs_no in rows:
            try:
                key = indicator_key(IndicatorType.URL, value)
                if key != value and indicator_key(IndicatorType.URL, key) == key:
                    updates.append((key, obs_no))
            except ValueError:
                continue
        conn.executemany("UPDATE observations SET value = ? WHERE obs_no = ?", updates)
        changed += len(updates)
    return changed


def _block_lengths(conn: sqlite3.Connection, type: str) -> frozenset[int]:
    """The prefix lengths of ``type``'s CIDR blocks stored (a superset: an erased
    block's length stays). Rows only get higher ``obs_no``s, so each call reads the
    rows written since the last one (the first reads every stored block once)."""
    state = _BLOCKS.get(id(conn))
    if state is None or state.conn is not conn:
        if len(_BLOCKS) >= _MAX_BLOCK_STATES:
            del _BLOCKS[next(iter(_BLOCKS))]
        state = _BLOCKS[id(conn)] = _Blocks(conn)
    top = conn.execute("SELECT max(obs_no) FROM observations").fetchone()[0] or 0
    if top > state.obs_no:
        for _no, kind, value in conn.execute(_NEW_BLOCKS_SQL, (state.obs_no,)):
            state.lengths.setdefault(kind, set()).add(int(value.rpartition("/")[2]))
        state.obs_no = top
        state.frozen = {k: frozenset(v) for k, v in state.lengths.items()}
    return state.frozen.get(type, frozenset())


def matching_keys(conn: sqlite3.Connection, type: str,
              value: str) -> tuple[str, tuple[str, ...]]:
    """The ``{keys}`` placeholders and the keys a lookup of (type, value) matches on
    ``conn`` (protocol.indicators.containment_keys with the block lengths stored)."""
    if type not in _IP_TYPES:
        return "?", (value,)
    keys = containment_keys(type, value, _block_lengths(conn, type))
    return ",".join("?" * len(keys)), keys
