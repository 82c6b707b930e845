"""Tell Auditor who is making a change, from inside the billing service's transaction.

For a captured table without an `actor` column, Auditor's triggers read the
one-row table `_auditor_context(actor_id, actor_name, actor_ip)`. The billing
service writes that row in the same transaction as its change and deletes it
before committing: SQLite has one writer at a time, so the row is seen by
exactly that transaction's triggers and never by anyone else. Without it, the
change is attributed to `system`.

This module uses only the standard library and imports nothing from Auditor,
so the billing service can import it or copy the file::

    with conn:                                   # the service's own transaction
        with acting_as(conn, "073", name="SUBIN JEONG", ip="125.22.33.22"):
            conn.execute("UPDATE plans SET price = ? WHERE id = ?", (12, 7))

`set_actor` refuses to run outside a transaction: in autocommit mode the row
would be committed on its own and leak into other writers' changes. Forgetting
`clear_actor` before commit has the same effect, which is why `acting_as`
exists.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

CONTEXT_TABLE = "_auditor_context"


def set_actor(
    conn: sqlite3.Connection,
    actor_id: str,
    name: str | None = None,
    ip: str | None = None,
) -> None:
    """Record the actor of the changes that follow in the caller's open transaction."""
    if not conn.in_transaction and conn.isolation_level is None:
        raise RuntimeError("set_actor must run inside the caller's open transaction")
    conn.execute(
        f'INSERT OR REPLACE INTO "{CONTEXT_TABLE}" ("id", "actor_id", "actor_name", "actor_ip") '
        "VALUES (1, ?, ?, ?)",
        (str(actor_id), name, ip),
    )


def clear_actor(conn: sqlite3.Connection) -> None:
    """Forget the actor; call before the transaction commits."""
    conn.execute(f'DELETE FROM "{CONTEXT_TABLE}"')


@contextmanager
def acting_as(
    conn: sqlite3.Connection,
    actor_id: str,
    name: str | None = None,
    ip: str | None = None,
) -> Iterator[None]:
    """Set the actor for the block's changes and clear it before the caller commits."""
    set_actor(conn, actor_id, name, ip)
    try:
        yield
    finally:
        # After a failed statement the caller's transaction may be gone already;
        # clearing then would start a new one in Python's legacy transaction mode.
        if conn.in_transaction:
            clear_actor(conn)
