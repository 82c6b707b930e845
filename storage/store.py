"""The audit store: append events (numbered, hashed, exactly once) and query them.

This is synchronous SQLAlchemy Core code, the same for SQLite and PostgreSQL.
The web layer never calls `append` on its event loop: `storage.writer`
runs it in one dedicated thread with group commit (see there for why), and
`storage.writer_process` in a process of its own for the API of a daemon on a
SQLite store.

Appending is one transaction per call, however many requests it carries:
- client-given ids make a request idempotent (an id already stored returns the
  stored event, `created=False`);
- each stream's head row is advanced with one `UPDATE … RETURNING`, which is
  also the lock that keeps `seq` gapless when several processes append;
- the Merkle tree grows by the perfect nodes each append completes
  (`storage.merkle`), and the stream's head hash is its new root;
- a capture source's position is written in the same transaction as the events
  it produced: that is what makes capture exactly-once.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import lru_cache
from itertools import chain
from typing import Any, cast

import orjson
from sqlalchemy import Connection, String, any_, bindparam, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import SQLAlchemyError

from storage import merkle
from storage.canonical import canonical_event, payload_digest, payload_document
from storage.engine import (
    Engines,
    create_engines,
    driver_cursor,
    driver_rows,
    param_mark,
)
from storage.events import (
    Actor,
    AuditEvent,
    EventType,
    NewEvent,
    by_position,
    format_ms,
    from_ms,
    to_ms,
    truncate_to_millis,
    utc_now,
)
from storage.query import EventQuery
from storage.schema import capture_positions, events, merkle_nodes, streams

log = logging.getLogger(__name__)

QUICK_LIMIT = 100
"""The largest page `AuditStore.query_is_quick` allows (a 50-event page, query and
JSON, took about 0.35 ms here in session 4; 100 events stay under a millisecond)."""

_ID_CHUNK = 500
_ROWS_PER_INSERT = 128
"""SQLite: rows an INSERT statement writes at most (chunks of 128, 64, … 1, so each
table has at most 8 statement texts for sqlite3's statement cache), fewer when the
library allows fewer parameters a statement."""


class StorageError(Exception):
    """The store could not do what was asked (the database failed or refused)."""


@by_position
@dataclass(frozen=True, slots=True)
class CapturePosition:
    """How far a capture source has been stored: the last shadow-table seq."""

    source: str
    position: int


@by_position
@dataclass(frozen=True, slots=True)
class AppendRequest:
    events: Sequence[NewEvent]
    position: CapturePosition | None = None


@by_position
@dataclass(frozen=True, slots=True)
class Appended:
    event: AuditEvent
    created: bool
    position: int | None = None
    """The event's place in the store's global insertion order (its pk), when `created`."""


@by_position
@dataclass(frozen=True, slots=True)
class Created:
    """A created event as `append_created` answers it: only what the store added to
    the `NewEvent` the caller already has (`AuditStore.created_event` makes the rest)."""

    position: int
    seq: int
    recorded_at: datetime
    hash: str


CommitListener = Callable[[list[Appended]], None]
"""Told of the events each transaction created, right after it commits, in commit order.
It runs on the committing thread with the append lock held: it must be quick and never block."""


@dataclass(frozen=True, slots=True)
class StreamHead:
    name: str
    head_seq: int
    head_hash: str | None
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Page:
    events: list[AuditEvent]
    last_pk: int | None
    """The pk of the page's last event when there may be more, else None."""


class AuditStore:
    """Append and read audit events. Thread-safe: appends are serialised by a lock."""

    def __init__(self, engines: Engines) -> None:
        self._engines = engines
        self._append_lock = threading.Lock()
        # Perfect Merkle nodes never change once created, so any cached node is
        # valid forever; only nodes from committed transactions are cached.
        self._frontiers: dict[str, dict[tuple[int, int], bytes]] = {}
        self._commit_listeners: list[CommitListener] = []

    @classmethod
    def open(cls, url: str, *, shared: bool = False) -> AuditStore:
        """Connect and bring the schema up to date (Alembic `upgrade head`). `shared`:
        other processes append to this store too (`storage.engine.WriteLock`)."""
        # Imported here: Alembic is 13 MB of the store writer process's memory
        # (storage.writer_process), which never migrates.
        from storage.migrate import upgrade

        try:
            engines = create_engines(url, shared=shared)
            upgrade(engines.write)
        except SQLAlchemyError as exc:
            raise StorageError(f"cannot open the audit store: {exc.__class__.__name__}") from exc
        except OSError as exc:  # the SQLite file's folder cannot be made
            reason = exc.strerror or exc.__class__.__name__
            raise StorageError(f"cannot open the audit store: {reason}") from exc
        return cls(engines)

    @property
    def dialect(self) -> str:
        return self._engines.dialect

    @property
    def engines(self) -> Engines:
        """For storage modules that run their own SQL (checkpoints, proofs, verify)."""
        return self._engines

    def close(self) -> None:
        self._engines.dispose()

    def add_commit_listener(self, listener: CommitListener) -> None:
        self._commit_listeners.append(listener)

    def remove_commit_listener(self, listener: CommitListener) -> None:
        self._commit_listeners.remove(listener)

    def _notify(self, results: Sequence[Sequence[Appended]]) -> None:
        if self._commit_listeners:
            self.notify_listeners([a for request in results for a in request if a.created])

    def notify_listeners(self, created: list[Appended]) -> None:
        """Tell the commit listeners of `created`, committed by this store or, for a
        writer in another process (`storage.writer_process`), on its behalf."""
        for listener in list(self._commit_listeners):
            try:
                listener(created)
            except Exception:
                # The events are committed whatever a listener does.
                log.exception("commit listener %r failed", listener)

    def ping(self) -> None:
        with self._read() as conn:
            conn.exec_driver_sql("SELECT 1")

    # -- writing -------------------------------------------------------------

    @staticmethod
    def created_event(new: NewEvent, seq: int, recorded_at: datetime, leaf_hex: str) -> AuditEvent:
        """The event `append` stored for `new` as number `seq` at `recorded_at`, with
        leaf hash `leaf_hex`: for a writer that learns only those from another process."""
        return _new_to_stored(new, seq, _stored_time(new.occurred_at), recorded_at, leaf_hex)

    def append(self, requests: Sequence[AppendRequest]) -> list[list[Appended]]:
        """Store every request's events in one transaction; results in request order."""
        return cast(list[list[Appended]], self._append(requests, events=True))

    def append_created(self, requests: Sequence[AppendRequest]) -> list[list[Appended | Created]]:
        """`append`, for a caller that has the events it appends (the store writer
        process): each event created comes back as `Created`, without building the
        stored event (9 % of that process's time under 1,000-event posts); one
        stored before, under its client id, as `Appended`. With commit listeners,
        which hear of whole events, as `append`."""
        return self._append(requests, events=bool(self._commit_listeners))

    def _append(
        self, requests: Sequence[AppendRequest], *, events: bool
    ) -> list[list[Appended | Created]]:
        with self._append_lock, self._engines.exclusive():
            try:
                with self._engines.write.begin() as conn:
                    results, touched = self._append_in(conn, requests, events=events)
            except SQLAlchemyError as exc:
                raise StorageError(f"append failed: {exc.__class__.__name__}") from exc
            self._frontiers.update(touched)
            if events:
                self._notify(cast(list[list[Appended]], results))
        return results

    def _append_in(
        self, conn: Connection, requests: Sequence[AppendRequest], *, events: bool = True
    ) -> tuple[list[list[Appended | Created]], dict[str, dict[tuple[int, int], bytes]]]:
        """The append's statements; created events as `Appended` when `events`, else
        as `Created`."""
        now = truncate_to_millis(utc_now())
        now_ms = to_ms(now)
        # Only a client can send an id again; ids made here or by capture are new.
        client_ids = [e.id for request in requests for e in request.events if e.client_id]
        stored = self._events_by_id(conn, client_ids) if client_ids else {}
        results: list[list[Appended | Created | None]] = [[None] * len(r.events) for r in requests]
        fresh: list[tuple[int, int, NewEvent]] = []
        claimed: dict[str, int] = {}  # id -> its place in `fresh`
        duplicates: list[tuple[int, int, int]] = []
        for ri, request in enumerate(requests):
            for ei, new in enumerate(request.events):
                if new.id in stored:
                    results[ri][ei] = Appended(stored[new.id], created=False)
                elif new.id in claimed:
                    duplicates.append((ri, ei, claimed[new.id]))
                else:
                    claimed[new.id] = len(fresh)
                    fresh.append((ri, ei, new))

        counts: dict[str, int] = {}
        for _, _, new in fresh:
            counts[new.stream] = counts.get(new.stream, 0) + 1
        next_seq = {
            stream: self._advance_head(conn, stream, count, now_ms) - count + 1
            # A fixed lock order: two appenders never wait on each other's streams.
            for stream, count in sorted(counts.items())
        }
        first_seq = dict(next_seq)
        leaves: dict[str, list[bytes]] = {stream: [] for stream in counts}
        prepared: list[tuple[int, datetime, str]] = []  # each fresh event's seq, time, hash
        built: list[AuditEvent] = []  # and its stored event, when `events`

        def event_rows(pks: list[int]) -> Iterator[list[Any]]:
            # A generator, so that on PostgreSQL the rows already sent are indexed by
            # the server (its own process) while the next ones are prepared here.
            for pk, (_, _, new) in zip(pks, fresh, strict=True):
                seq = next_seq[new.stream]
                next_seq[new.stream] = seq + 1
                row, occurred_at, leaf = _prepare(new, seq, now_ms)
                row[0] = pk
                prepared.append((seq, occurred_at, leaf))
                if events:
                    built.append(_new_to_stored(new, seq, occurred_at, now, leaf))
                leaves[new.stream].append(bytes.fromhex(leaf))
                yield row

        def stored_event(k: int) -> AuditEvent:
            if events:
                return built[k]
            seq, occurred_at, leaf = prepared[k]
            return _new_to_stored(fresh[k][2], seq, occurred_at, now, leaf)

        if fresh:
            pks = self._reserve_pks(conn, len(fresh))
            _insert_many(conn, "events", EVENT_COLUMNS, event_rows(pks))
            for k, (pk, (ri, ei, _)) in enumerate(zip(pks, fresh, strict=True)):
                results[ri][ei] = (
                    Appended(built[k], created=True, position=pk)
                    if events
                    else Created(pk, prepared[k][0], now, prepared[k][2])
                )
            property_rows = [
                (name, pk)
                for pk, (_, _, new) in zip(pks, fresh, strict=True)
                for name in dict.fromkeys(new.properties)
            ]
            if property_rows:
                _insert_many(conn, "event_properties", ("name", "event_pk"), property_rows)
        touched = {
            stream: self._grow_tree(conn, stream, first_seq[stream] - 1, stream_leaves)
            for stream, stream_leaves in leaves.items()
        }
        for ri, ei, k in duplicates:  # an id twice in one commit: the second is the first
            results[ri][ei] = Appended(stored_event(k), created=False)

        for request in requests:
            if request.position is not None:
                self._save_position(conn, request.position, now)
        return [[a for a in row if a is not None] for row in results], touched

    def _grow_tree(
        self, conn: Connection, stream: str, size: int, leaves: list[bytes]
    ) -> dict[tuple[int, int], bytes]:
        """Store the perfect nodes the new leaves complete and the stream's new root;
        return the new right edge (frontier) to cache once committed."""
        known = dict(self._frontiers.get(stream, {}))
        new_nodes: dict[tuple[int, int], bytes] = {}

        def get_node(level: int, index: int) -> bytes:
            key = (level, index)
            found = new_nodes.get(key) or known.get(key)
            if found is None:
                found = self._read_node(conn, stream, level, index)
                known[key] = found
            return found

        for node in merkle.nodes_for_append(size, leaves, get_node):
            new_nodes[(node.level, node.index)] = node.hash
        node_rows = [
            (stream, level, index, value)
            for (level, index), value in new_nodes.items()
            if level > 0
        ]
        if node_rows:
            _insert_many(conn, "merkle_nodes", ("stream", "level", "idx", "hash"), node_rows)
        head = size + len(leaves)
        root = merkle.root(head, get_node)
        mark = param_mark(conn)
        driver_rows(
            conn, f"UPDATE streams SET head_hash = {mark} WHERE name = {mark}", (root.hex(), stream)
        )
        return {key: get_node(*key) for key in merkle.root_nodes(head)}

    def _reserve_pks(self, conn: Connection, count: int) -> list[int]:
        """Global positions for `count` new events, ascending.

        Assigned here rather than returned by the INSERT: SQLAlchemy can only
        return generated keys in order from SQLite one row per statement, which
        made batch appends many times slower. SQLite holds the write lock for the
        whole transaction (BEGIN IMMEDIATE), so max(pk) is safe; PostgreSQL
        draws them from the column's own sequence (not necessarily contiguous
        when other daemons append at the same time).
        """
        if conn.dialect.name == "postgresql":
            # One row holding an array: reserving 1,000 pks took 6.5 ms as 1,000 rows
            # through SQLAlchemy's result, 3.3 ms this way (30 appends to PostgreSQL).
            [(drawn,)] = driver_rows(
                conn,
                "SELECT array_agg(nextval(pg_get_serial_sequence('events', 'pk'))) "
                "FROM generate_series(1, %s)",
                (count,),
            )
            return sorted(drawn)
        [(top,)] = driver_rows(conn, "SELECT coalesce(max(pk), 0) FROM events", ())
        return list(range(top + 1, top + 1 + count))

    def _advance_head(self, conn: Connection, stream: str, count: int, now_ms: int) -> int:
        """Reserve `count` seqs of `stream`; the row lock keeps concurrent appenders in line.

        This and the other small statements of every append (its pks, its root) run
        on the driver: through SQLAlchemy they cost 150-260 µs each, a third of the
        work of a 16-event group commit."""
        mark = param_mark(conn)
        advance = (
            f"UPDATE streams SET head_seq = head_seq + {mark}, updated_at = {mark} "
            f"WHERE name = {mark} RETURNING head_seq"
        )
        head = driver_rows(conn, advance, (count, now_ms, stream))
        if not head:
            # A new stream (rare): create its row, racing other appenders safely.
            insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
            conn.execute(
                insert(streams)
                .values(name=stream, head_seq=0, head_hash=None, updated_at=now_ms)
                .on_conflict_do_nothing(index_elements=["name"])
            )
            head = driver_rows(conn, advance, (count, now_ms, stream))
        return int(head[0][0])

    def _read_node(self, conn: Connection, stream: str, level: int, index: int) -> bytes:
        if level == 0:
            value = conn.execute(
                select(events.c.hash).where(events.c.stream == stream, events.c.seq == index + 1)
            ).scalar_one()
            return bytes.fromhex(value)
        found: bytes = conn.execute(
            select(merkle_nodes.c.hash).where(
                merkle_nodes.c.stream == stream,
                merkle_nodes.c.level == level,
                merkle_nodes.c.idx == index,
            )
        ).scalar_one()
        return bytes(found)

    def _save_position(self, conn: Connection, position: CapturePosition, now: datetime) -> None:
        """Every capture append's last statement, on the driver like `_advance_head`:
        built through SQLAlchemy (an upsert with `excluded`) it took 1.2 ms of the
        append's 5.8 ms of statements under the capture-latency benchmark's load
        (`bench/analysis.md`, session 13)."""
        mark = param_mark(conn)
        driver_rows(
            conn,
            "INSERT INTO capture_positions (source, position, updated_at) "
            f"VALUES ({mark}, {mark}, {mark}) ON CONFLICT (source) DO UPDATE "
            "SET position = excluded.position, updated_at = excluded.updated_at",
            (position.source, position.position, to_ms(now)),
        )

    def redact(self, event_id: str, redaction: NewEvent) -> tuple[AuditEvent, AuditEvent] | None:
        """Erase an event's payload (its digest stays, so it still verifies) and
        record `redaction` in the same transaction. None when the id is unknown."""
        with self._append_lock, self._engines.exclusive():
            try:
                with self._engines.write.begin() as conn:
                    target = conn.execute(
                        select(events.c.pk).where(events.c.id == event_id)
                    ).scalar_one_or_none()
                    if target is None:
                        return None
                    conn.execute(
                        update(events)
                        .where(events.c.pk == target)
                        .values(payload=None, redacted=True)
                    )
                    appended, touched = self._append_in(conn, [AppendRequest([redaction])])
                    redacted = self._events_by_id(conn, [event_id])[event_id]
            except SQLAlchemyError as exc:
                raise StorageError(f"redaction failed: {exc.__class__.__name__}") from exc
            self._frontiers.update(touched)
            results = cast(list[list[Appended]], appended)
            self._notify(results)
        return redacted, results[0][0].event

    # -- reading -------------------------------------------------------------

    def _read(self) -> Any:
        return self._engines.read.begin()

    def get(self, event_id: str) -> AuditEvent | None:
        with self._read() as conn:
            return self._events_by_id(conn, [event_id]).get(event_id)

    def position_of(self, event_id: str) -> int | None:
        """The event's place in the global insertion order (`EventQuery.after_pk` pages
        from it), or None when the id is unknown."""
        with self._read() as conn:
            pk = conn.execute(
                select(events.c.pk).where(events.c.id == event_id)
            ).scalar_one_or_none()
        return int(pk) if pk is not None else None

    def last_position(self) -> int:
        """The position of the newest stored event (0 when there is none)."""
        with self._read() as conn:
            pk = conn.execute(select(func.max(events.c.pk))).scalar_one_or_none()
        return int(pk) if pk is not None else 0

    def query(self, q: EventQuery) -> Page:
        rows, last_pk = self.query_rows(q)
        return Page([row_to_event(row) for row in rows], last_pk)

    def query_rows(self, q: EventQuery) -> tuple[list[tuple[Any, ...]], int | None]:
        """`query` as stored rows (`EVENT_COLUMNS` order, see `row_to_event`) and the
        pk of the page's last event when there may be more.

        For callers that only serialise the page: building events first was half the
        time of a 50-event `GET /v1/events`. The statement runs on a driver
        connection: SQLAlchemy's statement building and execution took 170 of the
        280 µs a 50-event page query cost; on SQLite it is a plain per-thread
        connection (`StatementReader`), which saves the pool checkout and the
        transaction around the one SELECT too.
        """
        rows: list[tuple[Any, ...]]
        statements = self._engines.statements
        if statements is not None:
            sql, params = _query_sql(q, "?")
            rows = statements.rows(sql, params)
        else:
            with self._read() as conn:
                sql, params = _query_sql(q, param_mark(conn))
                rows = driver_rows(conn, sql, params)
        more = len(rows) > q.limit
        rows = rows[: q.limit]
        return rows, (int(rows[-1][0]) if more and rows else None)

    def query_is_quick(self, q: EventQuery) -> bool:
        """Whether `query_rows(q)` is bounded and short enough to run on an event loop:
        an in-process store (SQLite, no network wait), one index range
        (`EventQuery.one_index_range`) and at most `QUICK_LIMIT` events."""
        return self.dialect == "sqlite" and q.limit <= QUICK_LIMIT and q.one_index_range()

    def iter_events(self, q: EventQuery, chunk: int = 1000) -> Iterator[AuditEvent]:
        """Every event matching `q` in its order, read page by page (memory stays flat)."""
        position = q.after_pk
        while True:
            page = self.query(replace(q, limit=chunk, after_pk=position))
            yield from page.events
            if page.last_pk is None:
                return
            position = page.last_pk

    def streams(self) -> list[StreamHead]:
        with self._read() as conn:
            rows = conn.execute(select(streams).order_by(streams.c.name)).all()
        return [
            StreamHead(r.name, int(r.head_seq), r.head_hash, from_ms(r.updated_at)) for r in rows
        ]

    def capture_position(self, source: str) -> int:
        value = self.stored_capture_position(source)
        return value if value is not None else 0

    def stored_capture_position(self, source: str) -> int | None:
        """The stored position of `source`, or None when none was ever stored."""
        with self._read() as conn:
            value = conn.execute(
                select(capture_positions.c.position).where(capture_positions.c.source == source)
            ).scalar_one_or_none()
        return int(value) if value is not None else None

    def _events_by_id(self, conn: Connection, ids: Iterable[str]) -> dict[str, AuditEvent]:
        unique = list(dict.fromkeys(ids))
        found: dict[str, AuditEvent] = {}
        for start in range(0, len(unique), _ID_CHUNK):
            chunk = unique[start : start + _ID_CHUNK]
            if conn.dialect.name == "postgresql":
                # One array parameter, not 500: PostgreSQL hashes a constant array (and
                # costs the index right), where `IN ($1 … $500)` compared every row with
                # each id in turn: 145 ms a lookup at 30,000 events before the first ANALYZE.
                match = events.c.id == any_(bindparam("ids", chunk, type_=ARRAY(String)))
            else:
                match = events.c.id.in_(chunk)
            for row in conn.execute(select(events).where(match)):
                event = row_to_event(row)
                found[event.id] = event
        return found


def _insert_many(
    conn: Connection, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> None:
    """The hot path of every append, on the driver: SQLAlchemy's per-row parameter
    processing cost more than the inserts themselves.

    SQLite: multi-row `INSERT … VALUES (…), (…)`, not executemany. sqlite3 lets go
    of the GIL around every statement step, once a row in an executemany, and in
    the daemon the committing thread then waits for the event loop to hand the GIL
    back, every row. POST one event per request, 64 connections, old and new
    daemons alternating, three rounds: 3,214 / 3,278 / 3,267 -> 3,462 / 3,838 /
    3,823 req/s. PostgreSQL: COPY (`_copy_many`)."""
    if conn.dialect.name == "postgresql":
        _copy_many(conn, table, columns, rows)
        return
    pending = list(rows)
    driver = conn.connection.driver_connection
    assert isinstance(driver, sqlite3.Connection)
    # SQLite before 3.32 allowed 999 parameters a statement, later ones 32,766.
    most = driver.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // len(columns)
    start, size = 0, min(_ROWS_PER_INSERT, most)
    while start < len(pending):
        while size > len(pending) - start:
            size //= 2
        params = list(chain.from_iterable(pending[start : start + size]))
        driver_rows(conn, _multi_row_insert(table, tuple(columns), size), params)
        start += size


@lru_cache(maxsize=64)
def _multi_row_insert(table: str, columns: tuple[str, ...], rows: int) -> str:
    values = f"({', '.join('?' for _ in columns)})"
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES " + ", ".join([values] * rows)


def _copy_many(
    conn: Connection, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> None:
    """PostgreSQL: `COPY … FROM STDIN` in the connection's open transaction.

    psycopg's executemany sends one pipelined INSERT per row with Python work for
    each (about 28 µs a row here: three quarters of a capture batch's time, which
    writes some 9 rows an event: the event, its properties, Merkle nodes); COPY
    streams the rows through psycopg's C encoder as one statement.
    """
    sql = f"COPY {table} ({', '.join(columns)}) FROM STDIN"
    with driver_cursor(conn, sql) as cursor, cursor.copy(sql) as copy:
        for row in rows:
            copy.write_row(row)


EVENT_COLUMNS = (
    "pk", "id", "stream", "seq", "entity", "entity_id", "event_type", "action", "properties",
    "actor_id", "actor_name", "actor_ip", "occurred_at", "recorded_at", "payload",
    "payload_digest", "hash", "redacted",
)

_SELECT_EVENTS = "SELECT " + ", ".join(f"events.{c}" for c in EVENT_COLUMNS) + " FROM events"


def _query_sql(q: EventQuery, mark: str) -> tuple[str, list[Any]]:
    """The SQL of `AuditStore.query_rows` for `q`, and its parameters. Every value is a
    parameter; the identifiers are this module's own."""
    sql = _SELECT_EVENTS
    params: list[Any] = []
    if q.property is not None:
        sql += (
            " JOIN event_properties ON event_properties.event_pk = events.pk"
            f" AND event_properties.name = {mark}"
        )
        params.append(q.property)
    conditions: list[str] = []

    def equal(column: str, value: object) -> None:
        if value is not None:
            conditions.append(f"events.{column} = {mark}")
            params.append(value)

    equal("actor_id", q.actor)
    equal("entity", q.entity)
    equal("entity_id", q.entity_id)
    if q.event_types:
        conditions.append(f"events.event_type IN ({', '.join(mark for _ in q.event_types)})")
        params.extend(q.event_types)
    equal("action", q.action)
    equal("stream", q.stream)
    if q.since_ms is not None:
        conditions.append(f"events.occurred_at >= {mark}")
        params.append(q.since_ms)
    if q.until_ms is not None:
        conditions.append(f"events.occurred_at < {mark}")
        params.append(q.until_ms)
    if q.after_pk is not None:
        conditions.append(f"events.pk {'<' if q.order == 'desc' else '>'} {mark}")
        params.append(q.after_pk)
    if conditions:
        sql += " WHERE " + " AND ".join(conditions)
    sql += f" ORDER BY events.pk {'DESC' if q.order == 'desc' else 'ASC'} LIMIT {mark}"
    params.append(q.limit + 1)
    return sql, params


def _prepare(new: NewEvent, seq: int, now_ms: int) -> tuple[list[Any], datetime, str]:
    """The row to insert for `new` as number `seq` (in `EVENT_COLUMNS` order, pk still
    to fill in), the time it stores as the event's, and the event's hash."""
    occurred_at = _stored_time(new.occurred_at)
    occurred_ms = to_ms(occurred_at)
    document = payload_document(new.before, new.after, new.metadata)
    digest = payload_digest(document)
    canonical = canonical_event(new, seq, digest, format_ms(occurred_ms))
    leaf = merkle.leaf_hash(canonical).hex()
    row = [
        None,
        new.id,
        new.stream,
        seq,
        new.entity,
        new.entity_id,
        new.event_type.value,
        new.action,
        orjson.dumps(new.properties).decode(),
        new.actor.id,
        new.actor.name,
        new.actor.ip,
        occurred_ms,
        now_ms,
        document.decode(),
        digest,
        leaf,
        False,
    ]
    return row, occurred_at, leaf


def _stored_time(value: datetime) -> datetime:
    """`value` as the store keeps it: UTC, to the millisecond."""
    if value.microsecond % 1000 or value.tzinfo is not UTC:
        return truncate_to_millis(value)
    return value


def _new_to_stored(
    new: NewEvent, seq: int, occurred_at: datetime, recorded_at: datetime, leaf_hex: str
) -> AuditEvent:
    return AuditEvent(
        id=new.id,
        stream=new.stream,
        seq=seq,
        entity=new.entity,
        entity_id=new.entity_id,
        event_type=new.event_type,
        action=new.action,
        properties=new.properties,
        before=new.before,
        after=new.after,
        actor=new.actor,
        occurred_at=occurred_at,
        recorded_at=recorded_at,
        metadata=new.metadata,
        hash=leaf_hex,
    )


def row_to_event(row: Sequence[Any]) -> AuditEvent:
    """The event of a full `events` row. Unpacked by position (`select(events)` gives the
    table's column order, which is EVENT_COLUMNS; a test holds them together): a Row's
    attribute access costs about 1.3 µs a name in SQLAlchemy 2.1, most of a 50-event query."""
    (
        _pk, event_id, stream, seq, entity, entity_id, event_type, action, properties,
        actor_id, actor_name, actor_ip, occurred_at, recorded_at, document, _digest, leaf,
        redacted,
    ) = row
    payload = orjson.loads(document) if document is not None else None
    return AuditEvent(
        id=event_id,
        stream=stream,
        seq=int(seq),
        entity=entity,
        entity_id=entity_id,
        event_type=EventType(event_type),
        action=action,
        properties=tuple(orjson.loads(properties)),
        before=payload["before"] if payload else None,
        after=payload["after"] if payload else None,
        actor=Actor(actor_id, actor_name, actor_ip),
        occurred_at=from_ms(occurred_at),
        recorded_at=from_ms(recorded_at),
        metadata=payload["metadata"] if payload else {},
        hash=leaf,
        redacted=bool(redacted),
    )
