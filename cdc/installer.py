"""Install, check and remove Auditor's capture triggers in a billing database.

The installer reads each table's schema (`PRAGMA table_xinfo`, `index_list`,
`index_xinfo`), asks `cdc.triggers` for the SQL and runs it in ONE short
`BEGIN IMMEDIATE` transaction under a busy timeout, so the billing service
never sees half an installation and waits at most for one short write. It
never changes the billing database's journal mode or any other setting.

Installing is idempotent: tables whose triggers already match the current
schema and options are left alone, so a second run writes nothing (and does
not bump `PRAGMA schema_version`). A table whose schema or options changed
gets a new layout and regenerated triggers; triggers of tables no longer
configured are dropped. `uninstall` drops every `_auditor_` object and leaves
`sqlite_master` as it was before the first install.
"""

from __future__ import annotations

import enum
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from cdc.triggers import (
    CHANGE_TIME,
    LAYOUT_TABLE,
    PREFIX,
    SHADOW_TABLE,
    CaptureError,
    TableOptions,
    TableShape,
    UniqueKey,
    drop_support_tables_sql,
    drop_triggers_sql,
    layout_columns_json,
    quote_identifier,
    stored_triggers_sql,
    support_tables_sql,
    trigger_names,
    triggers_sql,
)

DEFAULT_BUSY_TIMEOUT_MS = 5000
_STRICT_NON_BLOB_TYPES = frozenset({"INT", "INTEGER", "REAL", "TEXT"})


class InstallState(enum.Enum):
    ABSENT = "absent"
    """No Auditor trigger on the table (or no such table)."""
    CURRENT = "current"
    """Every trigger exists and matches the table's current schema and options."""
    STALE = "stale"
    """Some triggers exist but are missing or differ: regenerate them."""


def connect(
    database: str | Path, *, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS
) -> sqlite3.Connection:
    """An autocommit connection to an existing billing database (never creates one)."""
    uri = Path(database).resolve().as_uri() + "?mode=rw"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    return conn


@contextmanager
def write_transaction(
    conn: sqlite3.Connection, *, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS
) -> Iterator[None]:
    """`BEGIN IMMEDIATE` … `COMMIT`, rolled back on error, under at least the busy timeout."""
    if conn.in_transaction:
        raise CaptureError("Auditor's writes need a connection outside any transaction")
    current = conn.execute("PRAGMA busy_timeout").fetchone()[0]
    if current < busy_timeout_ms:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def read_shape(conn: sqlite3.Connection, table: str) -> TableShape:
    """The schema facts the triggers need, read from the live database."""
    listed = conn.execute(
        "SELECT type, wr, strict FROM pragma_table_list WHERE schema = 'main' AND name = ?",
        (table,),
    ).fetchone()
    if listed is None or listed[0] != "table":
        raise CaptureError(f"table {table!r} does not exist in the billing database")
    _, without_rowid, strict = listed
    info = conn.execute(
        "SELECT name, type, pk, hidden FROM pragma_table_xinfo(?) ORDER BY cid", (table,)
    ).fetchall()
    columns = tuple(name for name, _, _, hidden in info if hidden != 1)
    primary_key = tuple(name for name, _, pk, _ in sorted(info, key=lambda r: r[2]) if pk > 0)
    rowid_alias = None
    if not without_rowid and len(primary_key) == 1:
        declared = next(decl for name, decl, _, _ in info if name == primary_key[0])
        if declared.upper() == "INTEGER":
            rowid_alias = primary_key[0]
    blob_free = {rowid_alias} if rowid_alias else set()
    if strict:
        # Generated columns are left out: not every SQLite version checks their type.
        blob_free |= {
            n
            for n, decl, _, hidden in info
            if decl.upper() in _STRICT_NON_BLOB_TYPES and not hidden
        }
    lowered = {c.lower() for c in columns}
    rowid_name = next((n for n in ("rowid", "_rowid_", "oid") if n not in lowered), None)
    if rowid_name is None and not without_rowid:
        raise CaptureError(f"table {table!r}: columns rowid, _rowid_ and oid hide the rowid")
    return TableShape(
        name=table,
        columns=columns,
        primary_key=primary_key,
        unique_keys=_unique_keys(conn, table),
        without_rowid=bool(without_rowid),
        rowid_alias=rowid_alias,
        blob_free=frozenset(blob_free),
        rowid_name=rowid_name or "rowid",
        generated=frozenset(n for n, _, _, hidden in info if hidden in (2, 3)),
    )


def _unique_keys(conn: sqlite3.Connection, table: str) -> tuple[UniqueKey, ...]:
    keys = []
    for _, index, unique, _, partial in conn.execute(
        'SELECT seq, name, "unique", origin, partial FROM pragma_index_list(?)', (table,)
    ).fetchall():
        if not unique or partial:
            # A partial index conflicts only where its WHERE holds: the pre-image
            # probe cannot tell, so such rows are left to the DELETE trigger
            # (recursive_triggers=ON) or to reconciliation.
            continue
        parts = conn.execute(
            "SELECT cid, name, coll FROM pragma_index_xinfo(?) WHERE key = 1 ORDER BY seqno",
            (index,),
        ).fetchall()
        if any(cid < 0 for cid, _, _ in parts):
            continue
        keys.append(UniqueKey(tuple(p[1] for p in parts), tuple(p[2] for p in parts)))
    return tuple(keys)


def install(
    conn: sqlite3.Connection,
    tables: Iterable[TableOptions],
    *,
    next_seq: int | None = None,
) -> list[str]:
    """Make the installed triggers match `tables`, in one transaction.

    Returns the tables whose triggers were (re)created. `next_seq` makes a fresh
    (or emptied) shadow table continue numbering from there, for a poller whose
    position came from an earlier installation.
    """
    with write_transaction(conn):
        return install_in_transaction(conn, tables, next_seq=next_seq)


def install_in_transaction(
    conn: sqlite3.Connection,
    tables: Iterable[TableOptions],
    *,
    next_seq: int | None = None,
) -> list[str]:
    """`install` inside the caller's open write transaction (`BEGIN IMMEDIATE`), e.g. one
    that also migrates the billing schema, so that no change can slip in between."""
    if not conn.in_transaction:
        raise CaptureError("install_in_transaction needs an open write transaction")
    wanted = list(tables)
    changed = []
    if not _support_tables_exist(conn):
        for sql in support_tables_sql():
            conn.execute(sql)
    names = {t.table for t in wanted}
    for trigger, table in _auditor_triggers(conn):
        if table not in names:
            conn.execute(f"DROP TRIGGER IF EXISTS {quote_identifier(trigger)}")
    for options in wanted:
        shape = read_shape(conn, options.table)
        layout_id = _layout_id(conn, shape, create=True)
        assert layout_id is not None
        if _state(conn, shape, options, layout_id) is InstallState.CURRENT:
            continue
        for sql in drop_triggers_sql(shape.name):
            conn.execute(sql)
        for sql in triggers_sql(shape, options, layout_id):
            conn.execute(sql)
        changed.append(shape.name)
    if next_seq is not None:
        _seed_sequence(conn, next_seq)
    return changed


def uninstall(conn: sqlite3.Connection) -> None:
    """Drop every trigger and table Auditor added; the billing data is not touched."""
    with write_transaction(conn):
        for trigger, _ in _auditor_triggers(conn):
            conn.execute(f"DROP TRIGGER IF EXISTS {quote_identifier(trigger)}")
        for sql in drop_support_tables_sql():
            conn.execute(sql)


def remove_table(conn: sqlite3.Connection, table: str) -> None:
    """Stop capturing one table (its shadow rows stay for the poller)."""
    with write_transaction(conn):
        for sql in drop_triggers_sql(table):
            conn.execute(sql)


def installed_state(conn: sqlite3.Connection, options: TableOptions) -> InstallState:
    """Whether `options.table`'s triggers exist and match its current schema and options."""
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (options.table,)
    ).fetchone()
    present = {n for n, t in _auditor_triggers(conn) if t == options.table}
    if not exists or not present:
        return InstallState.ABSENT
    if not _support_tables_exist(conn):
        return InstallState.STALE
    shape = read_shape(conn, options.table)
    layout_id = _layout_id(conn, shape, create=False)
    if layout_id is None:
        return InstallState.STALE
    try:
        return _state(conn, shape, options, layout_id)
    except CaptureError:
        return InstallState.STALE


def is_installed(conn: sqlite3.Connection, options: TableOptions) -> bool:
    return installed_state(conn, options) is InstallState.CURRENT


def schema_version(conn: sqlite3.Connection) -> int:
    """Changes whenever any schema in the billing database changes (migrations included)."""
    return int(conn.execute("PRAGMA schema_version").fetchone()[0])


def _state(
    conn: sqlite3.Connection, shape: TableShape, options: TableOptions, layout_id: int
) -> InstallState:
    expected = stored_triggers_sql(shape, options, layout_id)
    found = {
        sql
        for (sql,) in conn.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ? "
            "AND substr(name, 1, length(?)) = ?",
            (shape.name, PREFIX, PREFIX),
        )
    }
    if found == set(expected):
        return InstallState.CURRENT
    return InstallState.STALE if found else InstallState.ABSENT


def _auditor_triggers(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    return conn.execute(
        "SELECT name, tbl_name FROM sqlite_master WHERE type = 'trigger' "
        "AND substr(name, 1, length(?)) = ?",
        (PREFIX, PREFIX),
    ).fetchall()


def _support_tables_exist(conn: sqlite3.Connection) -> bool:
    found = conn.execute(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN (?, ?, ?)",
        (SHADOW_TABLE, "_auditor_context", LAYOUT_TABLE),
    ).fetchone()[0]
    return bool(found == 3)


def _layout_id(conn: sqlite3.Connection, shape: TableShape, *, create: bool) -> int | None:
    columns = layout_columns_json(shape)
    table = quote_identifier(LAYOUT_TABLE)
    row = conn.execute(
        f'SELECT "id" FROM {table} WHERE "tbl" = ? AND "columns" = ?', (shape.name, columns)
    ).fetchone()
    if row is None and create:
        cursor = conn.execute(
            f'INSERT INTO {table} ("tbl", "columns") VALUES (?, ?)', (shape.name, columns)
        )
        return cursor.lastrowid
    return None if row is None else int(row[0])


def _seed_sequence(conn: sqlite3.Connection, next_seq: int) -> None:
    table = quote_identifier(SHADOW_TABLE)
    top = conn.execute(f'SELECT max("seq") FROM {table}').fetchone()[0] or 0
    if top < next_seq - 1:
        # A marker row ("S") that the translator skips: SQLite numbers the next
        # change max(seq)+1, and pruning always keeps the newest row.
        conn.execute(
            f'INSERT INTO {table} ("seq", "tbl", "op", "changed_at") '
            f"VALUES (?, '', 'S', {CHANGE_TIME})",
            (next_seq - 1,),
        )


__all__ = [
    "CaptureError",
    "InstallState",
    "connect",
    "install",
    "install_in_transaction",
    "installed_state",
    "is_installed",
    "read_shape",
    "remove_table",
    "schema_version",
    "trigger_names",
    "uninstall",
    "write_transaction",
]
