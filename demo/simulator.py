"""The demo billing service: a small, realistic billing schema and a process that
keeps changing it, as a real billing service would.

It produces the four kinds of change Auditor exists for: customer accounts
created for an identity, actions of customers on resources, charges billed,
and accounts deactivated (plus the updates around them: charges paid, names
changed). Run it as its own process:

    python -m demo.simulator data/billing.db [--rate 5] [--count N] [--seed S]
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sqlite3
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS customers (
    id INTEGER PRIMARY KEY,
    identity TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'deactivated')),
    card_number TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS resource_actions (
    id INTEGER PRIMARY KEY,
    customer_id INTEGER NOT NULL REFERENCES customers(id),
    resource TEXT NOT NULL,
    action TEXT NOT NULL,
    performed_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS charges (
    id INTEGER PRIMARY KEY,
    customer_id INTEGER NOT NULL REFERENCES customers(id),
    amount_cents INTEGER NOT NULL,
    currency TEXT NOT NULL,
    description TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'paid', 'refunded')),
    created_at TEXT NOT NULL
);
"""

FIRST = ["Subin", "Ana", "Kofi", "Mei", "Lars", "Priya", "Omar", "Zoe", "Ivan", "Lucia"]
LAST = ["Jeong", "Silva", "Mensah", "Chen", "Berg", "Patel", "Haddad", "Martin", "Petrov", "Rossi"]
RESOURCES = ["invoice", "report", "subscription", "payment_method", "api_key"]
VERBS = ["viewed", "downloaded", "exported", "updated", "shared"]
PLANS = [("Starter plan", 900), ("Team plan", 4900), ("Usage overage", 1234), ("Add-on seat", 700)]


def connect(database: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(database, timeout=10, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def create_schema(database: Path) -> None:
    database.parent.mkdir(parents=True, exist_ok=True)
    conn = connect(database)
    conn.executescript(SCHEMA)
    conn.close()


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class BillingService:
    """Each method is one business operation, in one transaction."""

    def __init__(self, conn: sqlite3.Connection, rng: random.Random) -> None:
        self.conn = conn
        self.rng = rng

    def _active_customer(self) -> int | None:
        row = self.conn.execute(
            "SELECT id FROM customers WHERE status = 'active' ORDER BY random() LIMIT 1"
        ).fetchone()
        return int(row[0]) if row else None

    def create_customer(self) -> None:
        name = f"{self.rng.choice(FIRST)} {self.rng.choice(LAST)}"
        identity = f"{name.lower().replace(' ', '.')}.{self.rng.randrange(10**6)}@example.com"
        card = "".join(self.rng.choice("0123456789") for _ in range(16))
        stamp = now()
        self.conn.execute(
            "INSERT INTO customers (identity, name, card_number, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (identity, name, card, stamp, stamp),
        )

    def act_on_resource(self) -> None:
        customer = self._active_customer()
        if customer is None:
            return self.create_customer()
        resource = f"{self.rng.choice(RESOURCES)}/{self.rng.randrange(1, 500)}"
        self.conn.execute(
            "INSERT INTO resource_actions (customer_id, resource, action, performed_at)"
            " VALUES (?, ?, ?, ?)",
            (customer, resource, self.rng.choice(VERBS), now()),
        )

    def bill(self) -> None:
        customer = self._active_customer()
        if customer is None:
            return self.create_customer()
        description, amount = self.rng.choice(PLANS)
        self.conn.execute(
            "INSERT INTO charges (customer_id, amount_cents, currency, description, created_at)"
            " VALUES (?, ?, 'EUR', ?, ?)",
            (customer, amount, description, now()),
        )

    def settle_charge(self) -> None:
        self.conn.execute(
            "UPDATE charges SET status = 'paid'"
            " WHERE id = (SELECT id FROM charges WHERE status = 'pending' ORDER BY id LIMIT 1)"
        )

    def rename_customer(self) -> None:
        customer = self._active_customer()
        if customer is not None:
            name = f"{self.rng.choice(FIRST)} {self.rng.choice(LAST)}"
            self.conn.execute(
                "UPDATE customers SET name = ?, updated_at = ? WHERE id = ?",
                (name, now(), customer),
            )

    def deactivate_customer(self) -> None:
        customer = self._active_customer()
        if customer is not None:
            self.conn.execute(
                "UPDATE customers SET status = 'deactivated', updated_at = ? WHERE id = ?",
                (now(), customer),
            )

    def step(self) -> None:
        operation = self.rng.choices(
            [
                self.create_customer,
                self.act_on_resource,
                self.bill,
                self.settle_charge,
                self.rename_customer,
                self.deactivate_customer,
            ],
            weights=[25, 35, 25, 8, 4, 3],
        )[0]
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            operation()
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")


def run(database: Path, rate: float, count: int | None, seed: int | None) -> int:
    create_schema(database)
    service = BillingService(connect(database), random.Random(seed))
    done = 0
    interval = 1.0 / rate if rate > 0 else 0.0
    while count is None or done < count:
        service.step()
        done += 1
        if interval:
            time.sleep(interval)
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("database", type=Path)
    parser.add_argument(
        "--rate", type=float, default=5.0, help="operations per second (0: flat out)"
    )
    parser.add_argument("--count", type=int, default=None, help="stop after this many operations")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        run(args.database, args.rate, args.count, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
