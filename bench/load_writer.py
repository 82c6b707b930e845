"""A billing-service stand-in for the benchmarks, run as its own process:

    python -m bench.load_writer DB --seconds S [--rate R] [--tx K] [--log FILE]

Inserts charges, K rows per transaction, at R rows/s (0: as fast as it can),
for at most S seconds. With --log, writes "charge_id commit_time" lines
(time.time() right after COMMIT returns). Prints "rows seconds" at the end.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("database")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--tx", type=int, default=1)
    parser.add_argument("--log")
    args = parser.parse_args(argv)
    conn = sqlite3.connect(args.database, timeout=30, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    log = open(args.log, "w") if args.log else None  # noqa: SIM115
    rows = 0
    started = time.monotonic()
    deadline = started + args.seconds
    next_id = int(conn.execute("SELECT coalesce(max(id), 0) FROM charges").fetchone()[0]) + 1
    sql = ("INSERT INTO charges (id, customer_id, amount_cents, currency, description, created_at)"
           " VALUES (?, ?, ?, 'EUR', 'Team plan', '2026-11-28T12:00:00.000Z')")
    while time.monotonic() < deadline:
        if args.rate:
            due = started + rows / args.rate
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        batch = [(next_id + i, (next_id + i) % 1000 + 1, 100 + i) for i in range(args.tx)]
        conn.execute("BEGIN")
        if args.tx == 1:
            conn.execute(sql, batch[0])
        else:
            conn.executemany(sql, batch)
        conn.execute("COMMIT")
        if log is not None:
            committed = time.time()
            for row in batch:
                log.write(f"{row[0]} {committed:.6f}\n")
        next_id += args.tx
        rows += args.tx
    elapsed = time.monotonic() - started
    if log is not None:
        log.close()
    print(rows, f"{elapsed:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
