"""Read a captured table's rows as its triggers would record them, a chunk at a time.

Reconciliation and snapshots must see each row exactly as a captured change
would show it (masked columns as "***", BLOBs as `{"$blob": hex}`, wide tables,
the `entity_id` made from the primary key), so they read the table with the
triggers' own expressions (`cdc.triggers.row_image_sql`, `row_key_sql`) and
turn the result into events with `cdc.translate` itself (`as_events`).

Every read is one short read transaction, so a big table never holds back the
WAL checkpoint (or, in rollback-journal mode, the billing service's writers)
for long. A chunk also reads the shadow table's head seq in the same
transaction: the chunk's rows are the table as of exactly that change.

Chunks follow the rowid, or the primary key of a WITHOUT ROWID table, so a
chunk never repeats or skips a row that stays put; look-ups go by the primary
key (rowid where there is none).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from cdc import shadow
from cdc.installer import read_shape
from cdc.shadow import ShadowRow
from cdc.translate import CapturedTable, Failure, translate
from cdc.triggers import TableShape, quote_identifier, row_image_sql, row_key_sql
from storage.events import NewEvent, format_time

Key = tuple[Any, ...]
"""SQL parameter values that name a row: its rowid, or its primary key values."""

_REF = '"_auditor_row"'


@dataclass(frozen=True, slots=True)
class Chunk:
    """Rows of one read transaction and the shadow head seq of the same moment."""

    rows: list[tuple[str | None, str]]
    """(pk, image) as JSON text, exactly as the triggers would write them."""
    last_key: Key | None
    """Where the next chunk starts (None when there were no rows)."""
    head_seq: int
    read_at: datetime


class TableReader:
    """Chunked, keyed reads of one captured table (`conn`: an Auditor connection)."""

    def __init__(self, conn: sqlite3.Connection, options: CapturedTable) -> None:
        self.conn = conn
        self.options = options
        self.shape = read_shape(conn, options.table)
        shape = self.shape
        table = quote_identifier(shape.name)
        if shape.without_rowid:
            self.order = tuple(f"{_REF}.{quote_identifier(c)}" for c in shape.primary_key)
        else:
            self.order = (f"{_REF}.{shape.rowid_name}",)
        lookup_columns = shape.primary_key or (shape.rowid_name,)
        self.lookup_refs = tuple(
            f"{_REF}.{c if c == shape.rowid_name else quote_identifier(c)}" for c in lookup_columns
        )
        columns = ", ".join(
            (*self.order, row_key_sql(shape, _REF), row_image_sql(shape, options.mask, _REF))
        )
        order = ", ".join(self.order)
        base = f"SELECT {columns} FROM {table} AS {_REF}"
        self._first_sql = f"{base} ORDER BY {order} LIMIT ?"
        after = ", ".join("?" for _ in self.order)
        self._next_sql = f"{base} WHERE ({order}) > ({after}) ORDER BY {order} LIMIT ?"
        self._lookup_sql = f"{base} WHERE " + " AND ".join(f"{r} = ?" for r in self.lookup_refs)
        self._lookup_by_pk_sql = f"{base} WHERE {row_key_sql(shape, _REF)} = ?"
        self._count_sql = f"SELECT count(*) FROM {table}"
        self._count_after_sql = (
            f"SELECT count(*) FROM {table} AS {_REF} WHERE ({order}) > ({after})"
        )

    def chunk(self, after: Key | None, limit: int) -> Chunk:
        """Up to `limit` rows after the key `after` (from the start when None)."""
        with _read_transaction(self.conn):
            if after is None:
                fetched = self.conn.execute(self._first_sql, (limit,)).fetchall()
            else:
                fetched = self.conn.execute(self._next_sql, (*after, limit)).fetchall()
            head = shadow.head_seq(self.conn)
            read_at = datetime.now(UTC)
        width = len(self.order)
        rows = [(r[width], r[width + 1]) for r in fetched]
        last = tuple(fetched[-1][:width]) if fetched else None
        return Chunk(rows, last, head, read_at)

    def lookup(self, keys: Sequence[Key | str]) -> Chunk:
        """The rows with these keys (key values, or a `pk` text to match as the triggers
        write it), and the shadow head seq, in one read transaction."""
        rows: list[tuple[str | None, str]] = []
        width = len(self.order)
        with _read_transaction(self.conn):
            for key in keys:
                if isinstance(key, str):
                    found = self.conn.execute(self._lookup_by_pk_sql, (key,)).fetchall()
                else:
                    found = self.conn.execute(self._lookup_sql, key).fetchall()
                rows += [(r[width], r[width + 1]) for r in found]
            head = shadow.head_seq(self.conn)
            read_at = datetime.now(UTC)
        return Chunk(rows, None, head, read_at)

    def count(self, after: Key | None = None) -> int:
        """How many rows there are (after the key `after`)."""
        with _read_transaction(self.conn):
            if after is None:
                return int(self.conn.execute(self._count_sql).fetchone()[0])
            return int(self.conn.execute(self._count_after_sql, after).fetchone()[0])

    def keyset_of(self, image: dict[str, Any]) -> Key | None:
        """The chunk key of a WITHOUT ROWID table's row from its image (None if absent)."""
        columns = self.shape.primary_key
        if not all(c in image for c in columns):
            return None
        return tuple(_sql_value(image[c]) for c in columns)

    def defaults(self) -> str | None:
        """The image of a row holding every column's declared default (NULL where there is
        none): what SQLite shows in existing rows for a column added by ALTER TABLE.
        None when a default cannot be evaluated on its own."""
        declared = dict(
            self.conn.execute(
                "SELECT name, dflt_value FROM pragma_table_xinfo(?)", (self.shape.name,)
            ).fetchall()
        )
        values = ", ".join(
            f"{declared.get(c) or 'NULL'} AS {quote_identifier(c)}" for c in self.shape.columns
        )
        image = row_image_sql(self.shape, self.options.mask, _REF)
        try:
            with _read_transaction(self.conn):
                row = self.conn.execute(f"SELECT {image} FROM (SELECT {values}) AS {_REF}")
                return str(row.fetchone()[0])
        except sqlite3.Error:
            return None

    def key_of(self, entity_id: str, after: dict[str, Any] | None) -> Key | str:
        """How to look up the row of `entity_id`: its key values, taken from the trail's
        image of the row where it has them, else from the entity id itself.

        A REAL key does not survive the JSON round trip exactly, so such rows are
        matched by their `pk` text instead (a scan, but only for those rows)."""
        shape = self.shape
        if not shape.primary_key:
            return (int(entity_id),)
        if after is not None and all(c in after for c in shape.primary_key):
            values = [after[c] for c in shape.primary_key]
        elif len(shape.primary_key) == 1:
            return (entity_id,)
        else:
            parsed = orjson.loads(entity_id)
            values = parsed if isinstance(parsed, list) else [parsed]
        if any(isinstance(v, float) for v in values):
            if len(values) == 1:
                return orjson.dumps(values).decode()
            return entity_id
        return tuple(_sql_value(v) for v in values)


def as_events(
    rows: Sequence[tuple[str | None, str]],
    options: CapturedTable,
    shape: TableShape,
    stream: str,
    at: datetime,
) -> tuple[list[NewEvent], list[Failure]]:
    """The CREATE events `cdc.translate` makes of these rows as if just inserted (actor
    `system`, time `at`); callers turn them into READs or reconciliation events."""
    changed_at = format_time(at)
    shadow_rows = [
        ShadowRow(
            seq, options.table, "I", pk, None, image, 0, shape.columns, None, None, None, changed_at
        )
        for seq, (pk, image) in enumerate(rows, start=1)
    ]
    return translate(shadow_rows, {options.table: options}, stream)


def as_update(
    old: str, new: str, options: CapturedTable, shape: TableShape, stream: str, at: datetime
) -> NewEvent | None:
    """The UPDATE `cdc.translate` makes of a change from image `old` to image `new` (no
    entity id, actor `system`), or None when no compared column changed."""
    row = ShadowRow(
        1, options.table, "U", None, old, new, 0, shape.columns, None, None, None, format_time(at)
    )
    events, _ = translate([row], {options.table: options}, stream)
    return events[0] if events else None


def image_of(
    image: str, options: CapturedTable, shape: TableShape, stream: str
) -> dict[str, Any] | None:
    """One image text as `after` would show it (None if it cannot be translated)."""
    events, _ = as_events([("[null]", image)], options, shape, stream, datetime.now(UTC))
    return events[0].after if events else None


def _sql_value(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"$blob"} and isinstance(value["$blob"], str):
        return bytes.fromhex(value["$blob"])
    return value


@contextmanager
def _read_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """One read transaction (`BEGIN` … `COMMIT`) on an autocommit connection."""
    conn.execute("BEGIN")
    try:
        yield
    finally:
        conn.execute("COMMIT")
