"""Reading stored events for `storage.verify`, and explaining what is wrong with one.

The hot loop of `storage.verify` stays small by leaving everything else here:
the SQL it pages with, the canonical bytes of a stored row, the stored Merkle
nodes read level by level, and, on the failure path only, the diagnosis of
the first bad event (`Finding`): a gap or a repeated seq, a payload that does
not fit its digest, and a hash that does not fit its event, which is tried
against every other seq to tell a moved event from an altered one.
"""

from __future__ import annotations

from collections import deque, namedtuple
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from hashlib import sha256
from itertools import islice
from typing import Any

import orjson
from sqlalchemy import Connection, TextClause, text

from storage.canonical import canonical_fields
from storage.engine import driver_rows
from storage.events import format_ms

ALTERED = "altered"
REMOVED = "removed"
INSERTED = "inserted"
REORDERED = "reordered"
BAD_SIGNATURE = "bad signature"
TRUNCATED = "truncated"

MAX_SEQ_SEARCH = 2_000_000
"""How many other seqs a mismatching hash is tried against (a failure path only)."""

# The payload is read as bytes (its UTF-8 encoding), the form its digest covers.
_EVENT_COLUMNS = (
    "pk, seq, id, entity, entity_id, event_type, action, properties, actor_id, actor_name, "
    "actor_ip, occurred_at, {payload} AS payload, payload_digest, hash, redacted"
)
_PAYLOAD_BYTES = {"sqlite": "CAST(payload AS BLOB)", "postgresql": "convert_to(payload, 'UTF8')"}

EventRow = namedtuple(  # type: ignore[misc]  # the fields are the columns of the SQL
    "EventRow", [c.split(" AS ")[-1].strip() for c in _EVENT_COLUMNS.split(",")]
)
"""A row of `events_sql` by name, for the failure path (the hot loop unpacks plain tuples)."""


def events_sql(dialect: str, where: str) -> TextClause:
    columns = _EVENT_COLUMNS.format(payload=_PAYLOAD_BYTES[dialect])
    return text(f"SELECT {columns} FROM events WHERE {where}")


class DriverQuery:
    """`conn.execute(clause, params).all()` as the driver's plain tuples
    (`storage.engine.driver_rows`), the clause compiled once: building a SQLAlchemy
    `Row` per event was a third of verify's time."""

    def __init__(self, conn: Connection, clause: TextClause) -> None:
        compiled = clause.compile(dialect=conn.dialect)
        self._sql = str(compiled)
        self._names = compiled.positiontup
        self._conn = conn

    def rows(self, params: Mapping[str, Any]) -> list[Any]:
        names = self._names
        args: Any = tuple(params[name] for name in names) if names is not None else dict(params)
        return driver_rows(self._conn, self._sql, args)


NODES_FROM = text(
    "SELECT idx, hash FROM merkle_nodes WHERE stream = :stream AND level = :level "
    "AND idx >= :idx ORDER BY idx LIMIT :limit"
)

Row = Any


@dataclass(frozen=True, slots=True)
class Finding:
    """The first problem in a stream: what kind, the first bad event (when known), and why."""

    kind: str
    reason: str
    seq: int | None = None
    event_id: str | None = None


def canonical_row(row: Row, stream: str, seq: int) -> bytes:
    """The canonical bytes of a stored event row, as number `seq` of `stream`."""
    return canonical_fields(
        event_id=row.id,
        stream=stream,
        seq=seq,
        entity=row.entity,
        entity_id=row.entity_id,
        event_type=row.event_type,
        action=row.action,
        properties=orjson.loads(row.properties),
        actor_id=row.actor_id,
        actor_name=row.actor_name,
        actor_ip=row.actor_ip,
        occurred_at=format_ms(int(row.occurred_at)),
        payload_digest=row.payload_digest,
    )


class StoredNodes:
    """The `merkle_nodes` rows of one stream, level by level in index order, a page at a time.

    `buffers[level]` holds the next rows of that level; the hot loop pops from
    it directly and calls `refill` when it runs dry.
    """

    def __init__(self, conn: Connection, stream: str, page: int, *, first_leaf: int = 0) -> None:
        """Nodes from those over leaf `first_leaf` (0-based) on, at every level."""
        self._conn = conn
        self._nodes_from = DriverQuery(conn, NODES_FROM)
        self._stream = stream
        self._page = page
        self.buffers: list[deque[tuple[int, bytes]]] = [deque() for _ in range(65)]
        self._next_index = [first_leaf >> level for level in range(65)]

    def refill(self, level: int) -> deque[tuple[int, bytes]]:
        rows = self._nodes_from.rows(
            {
                "stream": self._stream,
                "level": level,
                "idx": self._next_index[level],
                "limit": max(self._page >> level, 64),
            }
        )
        buffer = self.buffers[level]
        # The driver's (idx, hash) tuples as they come: a hash that is not bytes (NULL,
        # text written by a tamperer) can never equal a computed one, so it is reported.
        buffer.extend(rows)
        if buffer:
            self._next_index[level] = buffer[-1][0] + 1
        return buffer

    def beyond(self, size: int) -> tuple[int, int] | None:
        """A stored node that covers a leaf at or past `size`, if there is one."""
        top = self._conn.execute(
            text("SELECT MAX(level) FROM merkle_nodes WHERE stream = :stream"),
            {"stream": self._stream},
        ).scalar()
        for level in range(1, int(top or 0) + 1):
            last = self._conn.execute(
                text("SELECT MAX(idx) FROM merkle_nodes WHERE stream = :stream AND level = :level"),
                {"stream": self._stream, "level": level},
            ).scalar()
            if last is not None and (int(last) + 1) << level > size:
                return level, int(last)
        return None


def event_at(conn: Connection, stream: str, seq: int) -> Row | None:
    statement = events_sql(conn.dialect.name, "stream = :stream AND seq = :seq LIMIT 1")
    return conn.execute(statement, {"stream": stream, "seq": seq}).first()


def position_problem(row: Row, expected: int, head_seq: int | None) -> Finding:
    """A gap (removed), a repeated seq or one past the head (inserted)."""
    seq = row.seq
    if seq < expected:
        return Finding(INSERTED, f"a second event is stored as seq {seq}", seq, row.id)
    if head_seq is not None and seq > head_seq:
        return Finding(
            INSERTED,
            f"it is stored as seq {seq}, past the stream's head (seq {head_seq})",
            seq,
            row.id,
        )
    if seq > expected:
        missing = f"seq {expected}" if seq == expected + 1 else f"seqs {expected}-{seq - 1}"
        return Finding(
            REMOVED,
            f"{missing} missing: the next stored event is seq {seq} (id {row.id})",
            expected,
        )
    raise AssertionError("not a position problem")


def payload_problem(row: Row) -> Finding:
    if row.payload is None:
        reason = "its payload was erased but it is not marked redacted"
    else:
        reason = "its payload (before, after, metadata) does not match its payload digest"
    return Finding(ALTERED, reason, row.seq, row.id)


def mismatch_problem(conn: Connection, stream: str, row: Row, head_seq: int | None) -> Finding:
    """Why a stored hash does not fit its event: moved to another seq, or altered."""
    seq = row.seq
    highest = conn.execute(
        text("SELECT MAX(seq) FROM events WHERE stream = :stream"), {"stream": stream}
    ).scalar()
    recorded = recorded_seq(row, stream, max(int(highest or 0), head_seq or 0))
    if recorded is None:
        return Finding(
            ALTERED, "a field of the event was changed: its hash no longer fits it", seq, row.id
        )
    if recorded < seq:
        first = event_at(conn, stream, recorded)
        return Finding(
            INSERTED,
            f"event {row.id} was recorded as seq {recorded} but is stored as seq {seq}: "
            f"{seq - recorded} event(s) were inserted before it, from seq {recorded}",
            recorded,
            first.id if first is not None else None,
        )
    other = event_at(conn, stream, recorded)
    if other is not None and _fits(other, stream, seq):
        return Finding(
            REORDERED,
            f"events seq {seq} (id {row.id}) and seq {recorded} (id {other.id}) were swapped",
            seq,
            row.id,
        )
    return Finding(
        REMOVED,
        f"event {row.id} was recorded as seq {recorded} but is stored as seq {seq}: "
        f"{recorded - seq} event(s) before it were removed and the later ones renumbered",
        seq,
        row.id,
    )


def node_problem(
    conn: Connection, stream: str, level: int, index: int, stored: tuple[int, bytes] | None
) -> Finding:
    first, last = (index << level) + 1, (index + 1) << level
    what = "is missing" if stored is None or stored[0] != index else "does not match"
    event = event_at(conn, stream, first)
    return Finding(
        ALTERED,
        f"the stored Merkle node (level {level}, index {index}) over seqs {first}-{last} "
        f"{what} the events' hashes: an event in that range was rewritten along with its "
        "hash, or the node itself was altered",
        first,
        event.id if event is not None else None,
    )


def _fits(row: Row, stream: str, seq: int) -> bool:
    try:
        leaf = sha256(b"\x00" + canonical_row(row, stream, seq)).hexdigest()
    except (ValueError, TypeError, OverflowError):
        return False
    return bool(leaf == row.hash)


def recorded_seq(row: Row, stream: str, highest: int) -> int | None:
    """The seq, other than its stored one, at which `row`'s content has its stored hash.

    Only the digits of `seq` change between candidates, so each try hashes a
    few bytes on top of a shared prefix. Tries nearest seqs first, at most
    `MAX_SEQ_SEARCH` of them.
    """
    seq = int(row.seq)
    try:
        target = bytes.fromhex(row.hash)
        canonical = canonical_row(row, stream, seq)
    except (ValueError, TypeError, OverflowError):
        return None
    marker = b',"seq":%d,"stream":' % seq
    head, found, tail = canonical.partition(marker)
    if not found:
        return None
    prefix = sha256(b"\x00" + head + b',"seq":')
    suffix = b',"stream":' + tail
    for candidate in islice(_nearest_first(seq, max(highest, seq + 1)), MAX_SEQ_SEARCH):
        digest = prefix.copy()
        digest.update(b"%d" % candidate + suffix)
        if digest.digest() == target:
            return candidate
    return None


def _nearest_first(seq: int, highest: int) -> Iterable[int]:
    distance = 1
    while seq - distance >= 1 or seq + distance <= highest:
        if seq - distance >= 1:
            yield seq - distance
        if seq + distance <= highest:
            yield seq + distance
        distance += 1
