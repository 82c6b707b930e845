"""`run_daemon.py migrate`: run a schema migration on the billing database, losing no change.

SQLite refuses `ALTER TABLE … DROP COLUMN` while a trigger names the column,
and Auditor's triggers name every column. Dropping the triggers, migrating and
reinstalling as three steps would leave moments in which the billing service's
changes are not captured. `migrate` does all of it in ONE `BEGIN IMMEDIATE`
transaction on the billing database:

1. before each schema statement (`ALTER`, `CREATE`, `DROP`), the source's
   triggers are dropped;
2. the statement runs;
3. before each other statement (an `UPDATE` backfill, say) and at the end, the
   triggers are regenerated for the new shape (`installer.install_in_transaction`),
   so data changes in the migration itself are captured too.

No other writer can commit in between, so no change can slip through; if any
statement fails, or the new shape cannot be captured as configured (a dropped
column still named under `mask`, `ignore` or `actor`), everything is rolled
back and the billing database is as it was. `PRAGMA foreign_keys` cannot change
inside a transaction: a rebuild that needs it off must run otherwise (and is
then followed by reconciliation).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Sequence

from cdc import installer
from cdc.triggers import TableOptions, drop_triggers_sql

_SCHEMA_KEYWORDS = frozenset({"ALTER", "CREATE", "DROP"})
_TRANSACTION_KEYWORDS = frozenset({"BEGIN", "COMMIT", "END", "ROLLBACK"})
_LEADING = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?(?:\*/|$))*", re.DOTALL)
_WORD = re.compile(r"[A-Za-z]+")


class MigrationError(Exception):
    """The migration cannot run as given (nothing was changed)."""


def split_statements(sql: str) -> list[str]:
    """The complete SQL statements in `sql`, in order (comments kept with them)."""
    statements: list[str] = []
    pending = ""
    for piece in sql.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if first_keyword(pending):
                statements.append(pending.strip())
            pending = ""
    if pending.strip(" \t\r\n;") and first_keyword(pending):
        raise MigrationError(f"incomplete SQL statement: {pending.strip()[:80]!r}")
    return statements


def first_keyword(statement: str) -> str:
    """The statement's first word in upper case ('' for only comments and blanks)."""
    leading = _LEADING.match(statement)
    word = _WORD.match(statement, leading.end() if leading else 0)
    return word.group(0).upper() if word else ""


def migrate(
    conn: sqlite3.Connection,
    tables: Sequence[TableOptions],
    sql: str,
    *,
    next_seq: int | None = None,
) -> list[str]:
    """Run `sql` on the billing database with capture kept exact (see the module
    docstring). Returns the captured tables whose triggers were regenerated."""
    statements = split_statements(sql)
    if not statements:
        raise MigrationError("no SQL statement given")
    for statement in statements:
        if first_keyword(statement) in _TRANSACTION_KEYWORDS:
            raise MigrationError(
                f"{first_keyword(statement)}: the migration already runs in one transaction"
            )
    regenerated: set[str] = set()
    with installer.write_transaction(conn):
        installed = True
        for statement in statements:
            if first_keyword(statement) in _SCHEMA_KEYWORDS:
                if installed:
                    for options in tables:
                        for drop in drop_triggers_sql(options.table):
                            conn.execute(drop)
                    installed = False
            elif not installed:
                regenerated.update(
                    installer.install_in_transaction(conn, tables, next_seq=next_seq)
                )
                installed = True
            conn.execute(statement)
        regenerated.update(installer.install_in_transaction(conn, tables, next_seq=next_seq))
    return [t.table for t in tables if t.table in regenerated]
