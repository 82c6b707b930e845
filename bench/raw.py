"""The raw ceiling: plain sqlite3 / psycopg doing only the storage writes.

The same tables and indexes as Auditor's store (created by `AuditStore.open`,
so by Auditor's own migrations), the same durability (SQLite WAL with
synchronous=FULL), the same transaction sizes, and for the capture drain the
same index keys (entity, entity id, event type, actor, read from the shadow
rows); but no translation, no canonical encoding, no hashing, no Merkle tree
and no SQLAlchemy: rows built from pre-made strings and handed to `executemany`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

import uuid_utils

from storage.engine import WAL_CHECKPOINT_PAGES, WAL_SIZE_LIMIT
from storage.store import EVENT_COLUMNS, AuditStore

_FAKE_HASH = "0" * 64
_PROPERTY_NAMES = [f"column_{k}" for k in range(200)]


def create_store(url: str) -> None:
    AuditStore.open(url).close()


Key = tuple[str, str | None, str, str]
"""(entity, entity_id, event_type, actor_id) of one event."""


def event_rows(first_pk: int, first_seq: int, payloads: Sequence[str], actor: str = "7",
               stream: str = "billing", keys: Sequence[Key] | None = None
               ) -> list[tuple[Any, ...]]:
    """Event rows in EVENT_COLUMNS order. Without `keys`: one entity, sequential entity
    ids and one actor, so every index insert is an append (the most favourable case);
    with `keys`: the index keys of the real events (a capture drain passes them)."""
    if keys is None:
        keys = [("charge", str(first_seq + i), "CREATE", actor) for i in range(len(payloads))]
    return [
        (first_pk + i, str(uuid_utils.uuid7()), stream, first_seq + i, entity, entity_id,
         event_type, f"{entity}.changed", '["amount_cents"]', actor_id, None, None,
         1_796_000_000_000, 1_796_000_000_000, payload, _FAKE_HASH, _FAKE_HASH, False)
        for i, (payload, (entity, entity_id, event_type, actor_id)) in enumerate(
            zip(payloads, keys, strict=True))
    ]


_EVENT_TYPES = {"I": "CREATE", "U": "UPDATE", "D": "DELETE"}
_READ_SHADOW = (
    'SELECT "seq", "old", "new", "op", "tbl", "pk", "actor_id" FROM "_auditor_changes"'
    ' WHERE "seq" > ? ORDER BY "seq" LIMIT ?'
)


def read_shadow(conn: sqlite3.Connection, position: int, batch: int) -> list[tuple[Any, ...]]:
    """Up to `batch` shadow rows after `position`, in one read transaction."""
    conn.execute("BEGIN")
    try:
        return conn.execute(_READ_SHADOW, (position, batch)).fetchall()
    finally:
        conn.execute("COMMIT")


def store_shadow(writer: RawSqlite | RawPg, rows: Sequence[tuple[Any, ...]]) -> None:
    """Write the rows a capture of `rows` stores, with their position."""
    writer.write(
        [f'{{"before":{o or "null"},"after":{n or "null"},"metadata":{{}}}}'
         for _, o, n, *_ in rows],
        rows[-1][0],
        # As many property rows as Auditor stores: every column of an inserted or
        # deleted charge (7), the one changed column of the backlog's updates.
        [1 if op == "U" else 7 for _, _, _, op, *_ in rows],
        # The index keys of the real events (entity, its id, type, actor), read as
        # the triggers wrote them: the same index work as Auditor's, no parsing.
        [(table, key, _EVENT_TYPES.get(op, op), str(actor) if actor is not None
          else "system") for _, _, _, op, table, key, actor in rows],
    )


def prune_shadow(conn: sqlite3.Connection, low: int, high: int) -> None:
    """Delete shadow rows with low < seq <= high, in transactions of 5,000 seqs."""
    while low < high:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute('DELETE FROM "_auditor_changes" WHERE "seq" > ? AND "seq" <= ?',
                     (low, min(high, low + 5000)))
        conn.execute("COMMIT")
        low += 5000


class RawSqlite:
    def __init__(self, path: str) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = FULL")
        # The store's own checkpoint settings: the same storage work as Auditor's.
        self.conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_PAGES}")
        self.conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
        self.mark = "?"
        self.pk = int(self.conn.execute("SELECT coalesce(max(pk), 0) FROM events").fetchone()[0])
        self.seq = 0

    def write(self, payloads: Sequence[str], position: int | None = None,
              properties: Sequence[int] | None = None, keys: Sequence[Key] | None = None
              ) -> None:
        rows = event_rows(self.pk + 1, self.seq + 1, payloads, keys=keys)
        self.conn.execute("BEGIN IMMEDIATE")
        _write(self.conn.cursor(), self.mark, rows, position, self.seq + len(rows), properties)
        self.conn.execute("COMMIT")
        self.pk += len(rows)
        self.seq += len(rows)

    def close(self) -> None:
        self.conn.close()


class RawPg:
    def __init__(self, url: str) -> None:
        import psycopg

        self.conn = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"))
        self.mark = "%s"
        self.pk = int(self.conn.execute("SELECT coalesce(max(pk), 0) FROM events").fetchone()[0])
        self.conn.commit()
        self.seq = 0

    def write(self, payloads: Sequence[str], position: int | None = None,
              properties: Sequence[int] | None = None, keys: Sequence[Key] | None = None
              ) -> None:
        rows = event_rows(self.pk + 1, self.seq + 1, payloads, keys=keys)
        with self.conn.cursor() as cur:
            _write(cur, self.mark, rows, position, self.seq + len(rows), properties)
        self.conn.commit()
        self.pk += len(rows)
        self.seq += len(rows)

    def close(self) -> None:
        self.conn.close()


def _write(cur: Any, mark: str, rows: list[tuple[Any, ...]], position: int | None,
           head: int, properties: Sequence[int] | None) -> None:
    """`properties[i]` property rows for event i (as many as Auditor writes: one per
    changed column), one each by default."""
    columns = ", ".join(EVENT_COLUMNS)
    marks = ", ".join(mark for _ in EVENT_COLUMNS)
    counts = properties if properties is not None else [1] * len(rows)
    property_rows = [(_PROPERTY_NAMES[k], row[0]) for row, n in zip(rows, counts, strict=True)
                     for k in range(n)]
    if mark == "%s":
        # PostgreSQL: COPY, the fastest way psycopg has to load rows.
        with cur.copy(f"COPY events ({columns}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        with cur.copy("COPY event_properties (name, event_pk) FROM STDIN") as copy:
            for prop in property_rows:
                copy.write_row(prop)
    else:
        cur.executemany(f"INSERT INTO events ({columns}) VALUES ({marks})", rows)
        cur.executemany(
            f"INSERT INTO event_properties (name, event_pk) VALUES ({mark}, {mark})",
            property_rows)
    cur.execute(
        "INSERT INTO streams (name, head_seq, head_hash, updated_at) "
        f"VALUES ('billing', {mark}, {mark}, 0) ON CONFLICT (name) DO UPDATE SET "
        "head_seq = excluded.head_seq, head_hash = excluded.head_hash",
        (head, _FAKE_HASH),
    )
    if position is not None:
        cur.execute(
            "INSERT INTO capture_positions (source, position, updated_at) "
            f"VALUES ('billing', {mark}, 0) ON CONFLICT (source) DO UPDATE SET "
            "position = excluded.position",
            (position,),
        )
