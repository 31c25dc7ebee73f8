"""Query tables: what this node may read, decoded and indexed for the local API.

The ledger (agent/storage/ledger.py) calls :func:`build_record` for every entry whose payload
it can read (plaintext CLEAR/GREEN, or an envelope sealed to this node) and writes the
record in the same transaction as the entry. :class:`QueryReader` answers the API's
reads from those tables on the ledger's read-only connection.

Invariants:
- Only entries this node can read have rows here; an AMBER/RED entry not addressed to
  this node is in ``entries`` (replicated, verifiable) and nowhere else.
- Rows are never deleted: a retraction sets ``retracted = 1`` on the items of *its own*
  origin that it names; a retraction naming another origin's entry changes nothing.
- ``obs_no`` (and ``sighting_no``, ``item_no``) only grow, so a cursor holding the last
  one returned gives stable keyset paging: rows inserted while a client pages through
  never make it see a row twice or skip one that existed when it started.
- Returned observations are plain dicts shaped like docs/design's JSON; ``origin`` is
  the key text; ``origin_name`` is for the API layer to add from the trust list.
"""

from __future__ import annotations

import functools
import sqlite3
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiosqlite

from agent.errors import InvalidRuleError
from agent.jsoncodec import dumps, loads
from agent.storage.cursors import (
    decode_cursor,
    decode_time_cursor,
    encode_cursor,
    encode_time_cursor,
    format_ms,
)
from agent.storage.ipblocks import matching_keys
from agent.storage.observation_rows import (
    FIRST_SEEN,
    LAST_SEEN,
    OBS_FROM,
    OBS_SELECT,
    SEALED_ONLY,
    body_fields,
)
from protocol.entries import TLP
from protocol.errors import EncodingError, PayloadError
from protocol.indicators import IndicatorType, normalise_indicator
from protocol.keys import PublicKey
from protocol.matching import containment_keys, indicator_key
from protocol.payloads import Observation, Payload, Playbook, Retraction, Rule, Sighting

__all__ = [
    "DEFAULT_PAGE",
    "MAX_PAGE",
    "IndexRecord",
    "Page",
    "QueryReader",
    "build_record",
    "canonical_indicator",
    "decode_cursor",
    "encode_cursor",
    "format_ms",
    "indicator_aggregated",
    "indicator_bounded",
    "with_names",
]

DEFAULT_PAGE = 100
MAX_PAGE = 1000
MAX_INDICATOR_OBSERVATIONS = 1000
FAST_ROWS = 32
"""Most rows an indicator lookup reads on the event loop (more: the reader thread)."""
COMMON_TYPE_ROWS = 4096
"""A type filter of a list with at least this many rows is not served from the
(type, value) index (:meth:`QueryReader.list_observations`): at most this many rows
are sorted for a page of a rarer type."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def _to_ms(value: datetime) -> int:
    return (value - _EPOCH) // _MS


# --- records (write side) ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IndexRecord:
    """The query-table row(s) one readable entry contributes.

    ``fields`` is the payload's JSON dump without ``kind``; ``doc`` is its JSON text.
    ``fields`` None: not kept (records from the verify worker); ``loads(doc)`` gives it.
    """

    kind: str
    fields: dict[str, Any] | None = field(repr=False)
    doc: str = field(repr=False)
    type: str | None = None
    value: str | None = None
    first_seen: int = 0
    last_seen: int = 0
    target: bytes | None = None


def build_record(payload: Payload, ts: int,
                 dumped: dict[str, Any] | None = None) -> IndexRecord:
    """The index record of a decoded payload carried by an entry stamped ``ts`` (ms).

    ``dumped``: ``payload.model_dump(mode="json")`` when the caller already has it
    (``encode_payload_with_fields``); it is taken over, not copied.
    """
    fields = payload.model_dump(mode="json") if dumped is None else dumped
    del fields["kind"]
    if isinstance(payload, Rule | Playbook):
        fields["valid"], fields["engine_message"] = tool_check(payload)
    doc = dumps(fields)
    if isinstance(payload, Observation):
        first = _to_ms(payload.first_seen) if payload.first_seen else ts
        last = _to_ms(payload.last_seen) if payload.last_seen else max(first, ts)
        return IndexRecord("observation", fields, doc, payload.type.value,
                           indicator_key(payload.type, payload.value), first, last)
    if isinstance(payload, Sighting | Retraction):
        return IndexRecord(payload.kind, fields, doc, target=bytes.fromhex(payload.of))
    return IndexRecord(payload.kind, fields, doc)


def tool_check(payload: Rule | Playbook) -> tuple[bool, str | None]:
    """(valid, the engine's message) of a rule or playbook, checked by its real engine
    (agent/tools) as it is stored, own or received: the query row keeps the verdict, so
    an invalid remote rule is listed with ``"valid": false`` and never exported."""
    from agent.tools.cacao import parse_playbook
    from agent.tools.engines import check_rule

    try:
        if isinstance(payload, Rule):
            check_rule(payload.rule_type.value, payload.text)
        else:
            parse_playbook(payload.playbook_json)
    except InvalidRuleError as exc:
        return False, str(exc)
    return True, None


def observation_dict(entry_id: str, origin: str, seq: int, ts: int, tlp: str,
                     retracted: bool, fields: Mapping[str, Any]) -> dict[str, Any]:
    """An observation as the API returns it (without ``origin_name``)."""
    result: dict[str, Any] = {"id": entry_id}
    result.update(fields)
    result.update(origin=origin, seq=seq, ts=ts, tlp=tlp, retracted=retracted)
    return result


# --- reads ------------------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    """One page of a list: the rows, and the cursor of the next page (None at the end)."""

    items: list[dict[str, Any]]
    next: str | None


OriginIdOf = Callable[[PublicKey], int | None]

_OBS_COLUMNS = f"{OBS_SELECT} {OBS_FROM}"
_ALL_TYPES = tuple(t.value for t in IndicatorType)


@functools.lru_cache(maxsize=4096)
def key_text(raw: bytes) -> str:
    """``ed25519:...`` text of a stored origin key (checked once, then cached)."""
    return PublicKey(raw).text


def _observation_row(row: Sequence[Any]) -> dict[str, Any]:
    """The answer of an ``OBS_SELECT`` row: a sealed payload's JSON is kept on the row,
    a plaintext one is its entry's body (agent/storage/observation_rows.py)."""
    fields = loads(row[7]) if row[7] is not None else body_fields(row[8])
    return observation_dict(row[1].hex(), key_text(row[2]), row[3], row[4], row[5],
                            bool(row[6]), fields)


def _limit(limit: int) -> int:
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_PAGE:
        raise EncodingError(f"limit must be between 1 and {MAX_PAGE}")
    return limit


def _check_type(type: str) -> str:
    if type not in _ALL_TYPES:
        raise PayloadError(f"unknown indicator type {type!r}")
    return type


def canonical_indicator(type: str, value: str) -> tuple[str, str]:
    """(type, the value's match key): what the query tables index an indicator by
    (``protocol.indicators.indicator_key``: a URL's path in RFC 3986 normal form, every
    other value canonical); raises PayloadError for an unknown type or a bad value."""
    type = _check_type(type)
    return type, indicator_key(type, normalise_indicator(type, value))


def _any_type_key(value: str) -> str:
    """A value matched against every type: a URL by its match key, else as given."""
    if "://" not in value:
        return value
    try:
        return canonical_indicator(IndicatorType.URL.value, value)[1]
    except PayloadError:
        return value


# ``{keys}``: one "?" per key of protocol.indicators.containment_keys (one for most
# types; an IP address also matches the CIDR blocks holding it, a small block the
# addresses inside): each key is one probe of the (type, value) index.
_AGGREGATES_SQL = (f"SELECT count(*), min({FIRST_SEEN}), max({LAST_SEEN}) FROM observations o "
                   "WHERE o.type = ? AND o.value IN ({keys}){live}")
_ORIGINS_SQL = ("SELECT g.key, min(o.obs_no) AS first FROM observations o "
                "JOIN origins g ON g.origin_id = o.origin_id "
                "WHERE o.type = ? AND o.value IN ({keys}){live} GROUP BY g.key ORDER BY first")
_ROWS_SQL = (f"SELECT {OBS_SELECT}, {FIRST_SEEN}, {LAST_SEEN} {OBS_FROM} "
             "WHERE o.type = ? AND o.value IN ({keys}){live} ORDER BY o.obs_no DESC LIMIT ?")


def indicator_bounded(conn: sqlite3.Connection, type: str, value: str,
                      include_retracted: bool, limit: int,
                      max_rows: int) -> dict[str, Any] | None:
    """An indicator lookup (see :meth:`QueryReader.indicator`) in one statement on
    ``conn``, for a canonical ``type`` and ``value``; None when the indicator has more
    than ``max_rows`` rows (then :func:`indicator_aggregated`).

    The aggregates are computed from the same rows the aggregated statements read, so
    both answer alike.
    """
    live = "" if include_retracted else " AND o.retracted = 0"
    marks, keys = matching_keys(conn, type, value)
    rows = conn.execute(_ROWS_SQL.format(keys=marks, live=live),
                        (type, *keys, max_rows + 1)).fetchall()
    if len(rows) > max_rows:
        return None
    origins: dict[bytes, None] = {}
    for row in reversed(rows):  # oldest first: each origin where it first appears
        origins.setdefault(row[2])
    return {
        "type": type,
        "value": value,
        "observations": [_observation_row(r) for r in rows[:limit]],
        "count": len(rows),
        "origins": [key_text(k) for k in origins],
        "first_seen": format_ms(min(r[9] for r in rows)) if rows else None,
        "last_seen": format_ms(max(r[10] for r in rows)) if rows else None,
    }


def indicator_aggregated(conn: sqlite3.Connection, type: str, value: str,
                         include_retracted: bool, limit: int) -> dict[str, Any]:
    """The lookup of an indicator with any number of rows, on ``conn``: aggregates in
    SQL, and the newest ``limit`` observations."""
    live = "" if include_retracted else " AND o.retracted = 0"
    marks, keys = matching_keys(conn, type, value)
    agg = conn.execute(_AGGREGATES_SQL.format(keys=marks, live=live), (type, *keys)).fetchone()
    origins = conn.execute(_ORIGINS_SQL.format(keys=marks, live=live),
                           (type, *keys)).fetchall()
    rows = conn.execute(_ROWS_SQL.format(keys=marks, live=live),
                        (type, *keys, limit)).fetchall()
    return _aggregated(type, value, [_observation_row(r) for r in rows], agg, origins)


def _aggregated(type: str, value: str, items: list[dict[str, Any]], agg: Sequence[Any],
                origins: Sequence[Sequence[Any]]) -> dict[str, Any]:
    count, first, last = agg
    return {
        "type": type,
        "value": value,
        "observations": items,
        "count": int(count),
        "origins": [key_text(r[0]) for r in origins],
        "first_seen": None if first is None else format_ms(first),
        "last_seen": None if last is None else format_ms(last),
    }


def with_names(found: dict[str, Any], name_of: Callable[[str], str | None]
               ) -> dict[str, Any]:
    """A lookup's answer as the API gives it (in place): ``origins`` as names where
    ``name_of`` knows them, the keys in ``origin_keys``, ``origin_name`` on each
    observation."""
    found["origin_keys"] = list(found["origins"])
    found["origins"] = [name_of(k) or k for k in found["origins"]]
    for item in found["observations"]:
        item["origin_name"] = name_of(item["origin"])
    return found


class QueryReader:
    """Reads over the query tables, on a connection the ledger owns (read-only).

    Filters are ANDed. Times are ms since the epoch; ``since`` is inclusive and
    ``until`` exclusive, both on the entry's ``ts``.
    """

    def __init__(self, db: aiosqlite.Connection, origin_id_of: OriginIdOf) -> None:
        self._db = db
        self._origin_id_of = origin_id_of
        self._fast: sqlite3.Connection | None = None
        self._fast_path: str | None = None
        self._close_fast: Callable[[], Any] = lambda: None
        self._closed = False

    def close(self) -> None:
        """Close the lookup connection (the ledger closes ``db`` itself). Idempotent.

        A reader dropped without ``close`` closes it when collected (a finalizer).
        """
        self._closed = True
        if self._fast is not None:
            self._fast = None
            self._close_fast()

    async def _fast_connection(self) -> sqlite3.Connection | None:
        """The loop thread's own read-only connection to the ledger file (opened on
        first use); None for a database without a file, or once closed."""
        if self._fast is None and not self._closed:
            if self._fast_path is None:
                rows = await self._rows("PRAGMA database_list")
                self._fast_path = next((str(r[2]) for r in rows if r[1] == "main"), "")
            if not self._fast_path or self._closed:
                return None
            if self._fast is not None:  # opened by a lookup that ran during the await
                return self._fast
            conn = sqlite3.connect(self._fast_path, isolation_level=None)
            try:
                # busy_timeout 0: a lookup that would wait for a lock goes to the reader
                # thread instead of stalling the event loop (WAL readers rarely wait).
                for pragma in ("query_only = ON", "busy_timeout = 0", "cache_size = -8192",
                               "temp_store = MEMORY"):
                    conn.execute(f"PRAGMA {pragma}")
            except sqlite3.Error:
                conn.close()
                raise
            self._fast = conn
            self._close_fast = weakref.finalize(self, conn.close)
        return self._fast

    async def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        return list(await self._db.execute_fetchall(sql, args))

    async def list_observations(
        self,
        *,
        type: str | None = None,
        value: str | None = None,
        origin: PublicKey | None = None,
        tlp: TLP | str | None = None,
        since: int | None = None,
        until: int | None = None,
        include_retracted: bool = False,
        limit: int = DEFAULT_PAGE,
        cursor: str | None = None,
        newest_first: bool = True,
    ) -> Page:
        """One page of observations, newest first unless ``newest_first`` is False.

        Rows come in arrival order (``obs_no``), except newest first with ``since`` or
        ``until``: then by the entry's ``ts`` (ties in arrival order), so a time window
        is one index range scan however old it is. Either way the cursor is a keyset
        position: paging sees every row that existed when it started exactly once. A
        cursor is only valid for the same ordering.

        ``value`` is normalised for ``type``; without ``type`` it is matched as given
        against every type.

        Raises:
            InvalidCursorError: a cursor this list did not issue.
            PayloadError: an unknown indicator type, or a value invalid for its type.
            EncodingError: ``limit`` out of range, or an unknown TLP.
        """
        limit = _limit(limit)
        where: list[str] = []
        args: list[Any] = []
        if type is not None:
            if value is not None:
                type, value = canonical_indicator(type, value)
                where.append("o.type = ? AND o.value = ?")
                args += [type, value]
            else:
                type = _check_type(type)
                # The (type, value) index holds a type's rows in value order: a page in
                # obs_no order from it sorts every row of the type first (seconds for a
                # type of millions). A common type is read in the list's own order and
                # filtered; a rare one from the index, sorting its few rows.
                common = bool(await self._rows(
                    "SELECT 1 FROM observations WHERE type = ? LIMIT 1 OFFSET ?",
                    (type, COMMON_TYPE_ROWS - 1)))
                where.append("+o.type = ?" if common else "o.type = ?")
                args.append(type)
        elif value is not None:
            # Every type in an IN list lets SQLite use the (type, value) index.
            where.append(f"o.type IN ({','.join('?' * len(_ALL_TYPES))}) AND o.value = ?")
            args += [*_ALL_TYPES, _any_type_key(value.strip())]
        if origin is not None:
            origin_id = self._origin_id_of(origin)
            if origin_id is None:
                return Page([], None)
            where.append("o.origin_id = ?")
            args.append(origin_id)
        if tlp is not None:
            if str(tlp) not in TLP._value2member_map_:
                raise EncodingError(f"unknown TLP {tlp!r}")
            # Only the sealed TLPs are indexed (plaintext rows are the common case, read
            # in obs_no order): the index's own WHERE lets the planner take it.
            where.append(f"o.tlp = ? AND o.{SEALED_ONLY}" if TLP(tlp).encrypted
                         else "o.tlp = ?")
            args.append(str(tlp))
        if since is not None:
            where.append("o.ts >= ?")
            args.append(since)
        if until is not None:
            where.append("o.ts < ?")
            args.append(until)
        if not include_retracted:
            where.append("o.retracted = 0")
        by_time = newest_first and (since is not None or until is not None)
        if cursor is not None and by_time:
            at_ts, at_no = decode_time_cursor(cursor)
            where.append("o.ts <= ? AND (o.ts < ? OR o.obs_no < ?)")
            args += [at_ts, at_ts, at_no]
        elif cursor is not None:
            where.append("o.obs_no < ?" if newest_first else "o.obs_no > ?")
            args.append(decode_cursor("observation", cursor))
        order = ("o.ts DESC, o.obs_no DESC" if by_time
                 else f"o.obs_no {'DESC' if newest_first else 'ASC'}")
        sql = (f"SELECT {_OBS_COLUMNS} {'WHERE ' + ' AND '.join(where) if where else ''} "
               f"ORDER BY {order} LIMIT ?")
        rows = await self._rows(sql, (*args, limit + 1))
        items = [_observation_row(r) for r in rows[:limit]]
        nxt = None
        if len(rows) > limit:
            last = rows[limit - 1]
            nxt = (encode_time_cursor(last[4], last[0]) if by_time
                   else encode_cursor("observation", last[0]))
        return Page(items, nxt)

    async def stream_position(self) -> str:
        """The cursor of the newest observation: start a stream here to see only new ones."""
        rows = await self._rows("SELECT max(obs_no) FROM observations")
        return encode_cursor("observation", int(rows[0][0] or 0))

    async def get_observation(self, entry_id: str) -> dict[str, Any] | None:
        """One observation by id (64 hex), with its sightings count; None when not indexed."""
        key = _entry_key(entry_id)
        if key is None:
            return None
        rows = await self._rows(
            f"SELECT {_OBS_COLUMNS} WHERE o.entry_no = "
            "(SELECT entry_no FROM entries WHERE hash = ?)", (key,))
        if not rows:
            return None
        result = _observation_row(rows[0])
        count = await self._rows(
            "SELECT count(*) FROM sightings WHERE target = ? AND retracted = 0", (key,))
        result["sightings"] = int(count[0][0])
        return result

    async def indicator(self, type: str, value: str, *, include_retracted: bool = False,
                        limit: int = MAX_INDICATOR_OBSERVATIONS) -> dict[str, Any]:
        """Everything known about one indicator, across origins.

        Returns ``{"type", "value", "observations": [...] (newest first, at most
        ``limit``), "count", "origins": [key text, ...], "first_seen", "last_seen"}``;
        the two times are RFC 3339 (None when nothing is known).

        An indicator observed at most ``FAST_ROWS`` times (nearly all of them) is read
        with one bounded statement on the event loop's own connection; see
        :meth:`_indicator_fast`. Others, and a lookup that would wait for a lock, take
        the reader thread.

        Raises:
            PayloadError: unknown type, or a value invalid for it.
            EncodingError: ``limit`` out of range.
        """
        type, value = canonical_indicator(type, value)
        page_limit = _limit(min(limit, MAX_PAGE))
        conn = await self._fast_connection()
        if conn is not None:
            try:
                found = self._indicator_fast(conn, type, value, include_retracted, page_limit)
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                found = None  # a lock to wait for: the reader thread waits, not the loop
            if found is not None:
                return found
        return await self._indicator_threaded(type, value, include_retracted, page_limit)

    def _indicator_fast(self, conn: sqlite3.Connection, type: str, value: str,
                        include_retracted: bool, limit: int) -> dict[str, Any] | None:
        """:func:`indicator_bounded` with ``FAST_ROWS``: the work done on the loop is
        bounded by that many rows.

        A point lookup is tens of microseconds of SQLite; each statement sent to the
        reader thread costs more than that in thread hops, event-loop wake-ups and GIL
        hand-offs.
        """
        return indicator_bounded(conn, type, value, include_retracted, limit, FAST_ROWS)

    async def _indicator_threaded(self, type: str, value: str, include_retracted: bool,
                                  limit: int) -> dict[str, Any]:
        live = "" if include_retracted else " AND o.retracted = 0"
        keys = containment_keys(type, value)  # every block length: the rare, slow path
        marks = ",".join("?" * len(keys))
        agg = await self._rows(_AGGREGATES_SQL.format(keys=marks, live=live), (type, *keys))
        origins = await self._rows(_ORIGINS_SQL.format(keys=marks, live=live), (type, *keys))
        rows = await self._rows(_ROWS_SQL.format(keys=marks, live=live),
                                (type, *keys, limit))
        return _aggregated(type, value, [_observation_row(r) for r in rows], agg[0], origins)

    async def list_sightings(self, *, of: str | None = None, limit: int = DEFAULT_PAGE,
                             cursor: str | None = None,
                             include_retracted: bool = False) -> Page:
        """Sightings, newest first, optionally of one entry id."""
        limit = _limit(limit)
        where: list[str] = []
        args: list[Any] = []
        if of is not None:
            key = _entry_key(of)
            if key is None:
                return Page([], None)
            where.append("s.target = ?")
            args.append(key)
        if not include_retracted:
            where.append("s.retracted = 0")
        if cursor is not None:
            where.append("s.sighting_no < ?")
            args.append(decode_cursor("sighting", cursor))
        rows = await self._rows(
            "SELECT s.sighting_no, e.hash, g.key, e.seq, s.ts, s.tlp, s.retracted, s.doc "
            "FROM sightings s JOIN entries e ON e.entry_no = s.entry_no "
            "JOIN origins g ON g.origin_id = s.origin_id "
            f"{'WHERE ' + ' AND '.join(where) if where else ''} "
            "ORDER BY s.sighting_no DESC LIMIT ?", (*args, limit + 1))
        items = [observation_dict(r[1].hex(), key_text(r[2]), r[3], r[4], r[5],
                                  bool(r[6]), loads(r[7])) for r in rows[:limit]]
        nxt = encode_cursor("sighting", rows[limit - 1][0]) if len(rows) > limit else None
        return Page(items, nxt)

    async def list_items(self, *, kind: str | None = None, limit: int = DEFAULT_PAGE,
                         cursor: str | None = None, include_retracted: bool = False) -> Page:
        """Alerts, rules and STIX objects, newest first; each dict carries its ``kind``."""
        limit = _limit(limit)
        where: list[str] = []
        args: list[Any] = []
        if kind is not None:
            where.append("i.kind = ?")
            args.append(kind)
        if not include_retracted:
            where.append("i.retracted = 0")
        if cursor is not None:
            where.append("i.item_no < ?")
            args.append(decode_cursor("item", cursor))
        rows = await self._rows(
            "SELECT i.item_no, e.hash, g.key, e.seq, i.ts, i.tlp, i.retracted, i.doc, i.kind "
            "FROM items i JOIN entries e ON e.entry_no = i.entry_no "
            "JOIN origins g ON g.origin_id = i.origin_id "
            f"{'WHERE ' + ' AND '.join(where) if where else ''} "
            "ORDER BY i.item_no DESC LIMIT ?", (*args, limit + 1))
        items = []
        for r in rows[:limit]:
            item = observation_dict(r[1].hex(), key_text(r[2]), r[3], r[4], r[5],
                                    bool(r[6]), loads(r[7]))
            item["kind"] = r[8]
            items.append(item)
        nxt = encode_cursor("item", rows[limit - 1][0]) if len(rows) > limit else None
        return Page(items, nxt)


def _entry_key(entry_id: str) -> bytes | None:
    if not isinstance(entry_id, str) or len(entry_id) != 64:
        return None
    try:
        return bytes.fromhex(entry_id)
    except ValueError:
        return None
