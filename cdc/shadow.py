"""Read and prune the shadow table `_auditor_changes` in the billing database.

Sequence invariant. `seq` is an INTEGER PRIMARY KEY without AUTOINCREMENT
(cheaper for the billing service's writes); SQLite numbers a new row
max(seq)+1, so a seq could only be reused if the newest rows were deleted.
`prune` therefore never deletes the row with the highest seq, even when it has
been stored: it stays behind as the high-water mark and is deleted by a later
`prune` once a newer row exists. It needs no mark because readers go by the
poller's position (`read_batch(after_seq=…)`), never by what is left in the
table. The invariant holds as long as only `prune` deletes shadow rows; a
shadow table that is dropped and recreated starts again at 1 unless
`cdc.installer.install(next_seq=…)` seeds it.

Statement groups. The rows of one SQL statement are contiguous and share
`changed_at` (SQLite evaluates 'now' once per statement step). A REPLACE
writes pre-image rows (`P`, `R`) before the row that resolves them (`I`/`U`);
`read_batch` never ends a batch between the two, so `cdc.translate` can treat
each batch on its own.

Every read is one short read transaction; every delete is a short write
transaction under a busy timeout, so the billing service waits at most for one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection
from typing import NamedTuple

import orjson

from cdc.installer import DEFAULT_BUSY_TIMEOUT_MS, write_transaction
from cdc.triggers import LAYOUT_TABLE, SHADOW_TABLE, quote_identifier

PRUNE_CHUNK = 5000
_TAIL_CHUNK = 256
_SHADOW = quote_identifier(SHADOW_TABLE)
_CHANGED_AT_ISO = (
    # Triggers write Unix milliseconds (`cdc.triggers.CHANGE_TIME`), kept as digits by
    # the column's TEXT affinity; rows written before that hold ISO 8601 text.
    """CASE WHEN "changed_at" GLOB '[0-9]*' AND "changed_at" NOT GLOB '*[^0-9]*' """
    """THEN strftime('%Y-%m-%dT%H:%M:%fZ', "changed_at" / 1000.0, 'unixepoch') """
    'ELSE "changed_at" END'
)
_SELECT = (
    'SELECT "seq", "tbl", "op", "pk", "old", "new", "layout", '
    + ", ".join(
        # A BLOB in an actor column keeps its type despite the TEXT affinity.
        f"CASE WHEN typeof({c}) = 'blob' THEN hex({c}) ELSE {c} END"
        for c in ('"actor_id"', '"actor_name"', '"actor_ip"')
    )
    + f', "changed_at" FROM {_SHADOW} WHERE "seq" > ? ORDER BY "seq" LIMIT ?'
)


class ShadowRow(NamedTuple):
    """One row of the shadow table; images are raw JSON text, parsed by the translator.

    Immutable and typed like a frozen dataclass, but built six times faster
    (0.3 µs against 1.9 µs here), which matters at 100,000 rows a second.
    """

    seq: int
    table: str
    op: str
    """I insert, U update, D delete, S seq seed; P and R pre-image of a row that an
    INSERT or UPDATE (OR REPLACE) may delete."""
    pk: str | None
    old: str | None
    new: str | None
    layout_id: int | None
    columns: tuple[str, ...] | None
    """Column names of the images, or None when the layout is missing or unreadable."""
    actor_id: str | None
    actor_name: str | None
    actor_ip: str | None
    changed_at: str
    """The statement's time as stored: Unix milliseconds in digits, or ISO 8601 text in
    rows that earlier triggers wrote. The rows of one statement have the same text;
    `cdc.translate` reads both forms."""


def read_batch(conn: sqlite3.Connection, after_seq: int, limit: int) -> list[ShadowRow]:
    """Up to about `limit` rows after `after_seq`, in order, in one read transaction.

    A batch may run a little past `limit` so that it never splits a REPLACE
    from its pre-image rows.
    """
    conn.execute("BEGIN")
    try:
        layouts = _layouts(conn)
        rows = _fetch(conn, layouts, after_seq, limit)
        while rows and _statement_unfinished(rows):
            more = _fetch(conn, layouts, rows[-1].seq, _TAIL_CHUNK)
            if not more:
                break
            rows.extend(more)
    finally:
        conn.execute("COMMIT")
    return rows


def backlog(conn: sqlite3.Connection, after_seq: int) -> int:
    """How many shadow rows lie after the position `after_seq`."""
    return int(
        conn.execute(f'SELECT count(*) FROM {_SHADOW} WHERE "seq" > ?', (after_seq,)).fetchone()[0]
    )


def oldest_change_after(conn: sqlite3.Connection, after_seq: int) -> str | None:
    """The change time (ISO 8601) of the first shadow row after `after_seq`, if any."""
    row = conn.execute(
        f'SELECT {_CHANGED_AT_ISO} FROM {_SHADOW} WHERE "seq" > ? ORDER BY "seq" LIMIT 1',
        (after_seq,),
    ).fetchone()
    return str(row[0]) if row and row[0] is not None else None


def head_seq(conn: sqlite3.Connection) -> int:
    """The highest seq in the shadow table (0 when empty)."""
    return int(conn.execute(f'SELECT coalesce(max("seq"), 0) FROM {_SHADOW}').fetchone()[0])


def prune(
    conn: sqlite3.Connection,
    up_to_seq: int,
    *,
    keep: Collection[int] = (),
    chunk: int = PRUNE_CHUNK,
    busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
) -> int:
    """Delete stored rows (seq <= `up_to_seq`) except the newest row and `keep`.

    `keep` lists rows to leave in place, e.g. ones that could not be translated.
    Each chunk of at most `chunk` seqs is its own short write transaction.
    Returns how many rows were deleted.
    """
    kept = orjson.dumps(sorted(keep)).decode()
    deleted = 0
    start: int | None = None
    while True:
        with write_transaction(conn, busy_timeout_ms=busy_timeout_ms):
            low, top = conn.execute(
                f'SELECT min("seq"), (SELECT max("seq") FROM {_SHADOW}) FROM {_SHADOW} '
                'WHERE "seq" >= ?',
                (start if start is not None else -(2**63),),
            ).fetchone()
            if low is None:
                return deleted
            end = min(up_to_seq, top - 1, low + chunk - 1)
            if end < low:
                return deleted
            cursor = conn.execute(
                f'DELETE FROM {_SHADOW} WHERE "seq" >= ? AND "seq" <= ? '
                'AND "seq" NOT IN (SELECT value FROM json_each(?))',
                (low, end, kept),
            )
            deleted += cursor.rowcount
            start = end + 1


def _layouts(conn: sqlite3.Connection) -> dict[int, tuple[str, ...] | None]:
    layouts: dict[int, tuple[str, ...] | None] = {}
    for layout_id, text in conn.execute(
        f'SELECT "id", "columns" FROM {quote_identifier(LAYOUT_TABLE)}'
    ):
        try:
            names = orjson.loads(text)
        except orjson.JSONDecodeError:
            names = None
        valid = isinstance(names, list) and all(isinstance(n, str) for n in names)
        layouts[layout_id] = tuple(names) if valid else None
    return layouts


def _fetch(
    conn: sqlite3.Connection,
    layouts: dict[int, tuple[str, ...] | None],
    after_seq: int,
    limit: int,
) -> list[ShadowRow]:
    # Every text column but the actor's is written by Auditor's triggers as TEXT or NULL.
    return [
        ShadowRow(seq, table, op, pk, old, new, layout, layouts.get(layout), *rest)
        for seq, table, op, pk, old, new, layout, *rest in conn.execute(_SELECT, (after_seq, limit))
    ]


def _statement_unfinished(rows: list[ShadowRow]) -> bool:
    """Whether the last statement in `rows` may still have rows that resolve a pre-image.

    Per table, from the end back over the rows of the last change time: a `P` or `R`
    row before any `I`/`U` means a REPLACE is still waiting for its row (with
    `recursive_triggers=ON` its `D` rows come in between). A run of `D` rows
    with no `P` before it is a plain multi-row DELETE and is complete: treating
    it as unfinished made a 100,000-row DELETE one batch (and its memory).
    """
    tail_time = rows[-1].changed_at
    resolved: set[str] = set()
    for row in reversed(rows):
        if row.changed_at != tail_time:
            break
        if row.table in resolved or row.op == "D":
            continue
        if row.op == "P" or row.op == "R":
            return True
        resolved.add(row.table)
    return False
