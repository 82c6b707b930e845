"""A billing-service stand-in for the kill test: mixed transactions, a journal of commits.

    python tests/kill_writer.py DATABASE JOURNAL --transactions N --seed S

Every committed transaction is appended to JOURNAL (one JSON line per change,
written after COMMIT returns), so the journal is the exact order of changes.
The process exits 0 only if the database never returned an error.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("database")
    parser.add_argument("journal")
    parser.add_argument("--transactions", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--pause", type=float, default=0.004)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    conn = sqlite3.connect(args.database, timeout=30, isolation_level=None)
    live: dict[int, int] = dict(conn.execute("SELECT id, balance FROM accounts").fetchall())
    next_id = max(live, default=0) + 1
    errors = 0
    with open(args.journal, "a", encoding="utf-8") as journal:
        for _ in range(args.transactions):
            changes: list[tuple[str, int, int | None]] = []
            try:
                conn.execute("BEGIN IMMEDIATE")
                for _ in range(rng.choice([1, 1, 1, 2, 5, 20])):
                    roll = rng.random()
                    if roll < 0.45 or not live:
                        balance = rng.randrange(1, 10_000)
                        conn.execute(
                            "INSERT INTO accounts (id, balance, note) VALUES (?, ?, 'new')",
                            (next_id, balance),
                        )
                        changes.append(("CREATE", next_id, balance))
                        live[next_id] = balance
                        next_id += 1
                    elif roll < 0.85:
                        key = rng.choice(list(live))
                        balance = live[key] + rng.randrange(1, 100)
                        conn.execute("UPDATE accounts SET balance = ? WHERE id = ?", (balance, key))
                        changes.append(("UPDATE", key, balance))
                        live[key] = balance
                    else:
                        key = rng.choice(list(live))
                        conn.execute("DELETE FROM accounts WHERE id = ?", (key,))
                        changes.append(("DELETE", key, None))
                        del live[key]
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                errors += 1
                print(f"writer error: {exc}", file=sys.stderr)
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                live = dict(conn.execute("SELECT id, balance FROM accounts").fetchall())
                continue
            for change in changes:
                journal.write(json.dumps(change) + "\n")
            journal.flush()
            time.sleep(args.pause)
    print(f"errors={errors}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
