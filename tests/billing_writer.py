"""A stand-in for the billing service: writes a billing database from its own process.

Run as ``python -m tests.billing_writer DATABASE`` from the repository root. It
uses plain `sqlite3` the way a service would (Python's default transaction
handling) and `cdc.context` to name the actor of changes to a table without an
actor column. The expected events are described in `tests/test_cdc_triggers.py`.
"""

from __future__ import annotations

import sqlite3
import sys

from cdc.context import acting_as

CUSTOMERS = 20


def main(database: str) -> None:
    conn = sqlite3.connect(database, timeout=5.0)
    for n in range(1, CUSTOMERS + 1):
        with conn:
            conn.execute(
                "INSERT INTO customers (id, name, email, status, card_number) "
                "VALUES (?, ?, ?, 'active', ?)",
                (n, f"customer {n}", f"c{n}@example.com", f"4111-0000-0000-{n:04d}"),
            )
    with conn:
        conn.execute("UPDATE customers SET status = 'deactivated' WHERE id = 3")
        conn.execute("UPDATE customers SET updated_at = 'later' WHERE id = 4")
    with conn, acting_as(conn, "073", name="SUBIN JEONG", ip="125.22.33.22"):
        conn.execute("INSERT INTO plans (id, name, price) VALUES (1, 'basic', 10)")
        conn.execute("UPDATE plans SET price = 12 WHERE id = 1")
    with conn:
        conn.execute("INSERT INTO plans (id, name, price) VALUES (2, 'pro', 30)")
    with conn:
        conn.execute(
            "INSERT OR REPLACE INTO customers (id, name, email, status, card_number) "
            "VALUES (5, 'customer five', 'c5@example.com', 'active', '4111-0000-0000-0005')"
        )
        conn.execute("DELETE FROM customers WHERE id = 6")
    conn.close()
    print("done")


if __name__ == "__main__":
    main(sys.argv[1])
