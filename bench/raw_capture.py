"""The raw ceiling of end-to-end capture, run as its own process beside the writer:

    python -m bench.raw_capture BILLING_DB STORE_DB

Polls the shadow table with plain sqlite3 and writes the rows a capture stores
(`bench.raw.store_shadow`: real index keys, the position, no translation or
hashing) until SIGTERM, pruning when Auditor's poller would (once caught up).
Prints "ready" once it polls.
"""

from __future__ import annotations

import signal
import sqlite3
import sys
import time

from bench import raw


def main(argv: list[str] | None = None) -> int:
    billing, store = argv if argv is not None else sys.argv[1:]
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    conn = sqlite3.connect(billing, timeout=30, isolation_level=None)
    writer = raw.RawSqlite(store)
    position = pruned = 0
    print("ready", flush=True)
    pruned_at = time.monotonic()
    while not stop:
        rows = raw.read_shadow(conn, position, 1000)
        if rows:
            raw.store_shadow(writer, rows)
            position = rows[-1][0]
        if len(rows) < 1000:
            # Caught up: prune as Auditor's poller does at the end of a drain, once
            # 1,000 stored rows have gathered or a second has passed, never the newest
            # row (the shadow table's high-water mark, see cdc/shadow.py).
            due = position - 1 - pruned >= 1000 or time.monotonic() - pruned_at >= 1.0
            if due and position - 1 > pruned:
                raw.prune_shadow(conn, pruned, position - 1)
                pruned, pruned_at = position - 1, time.monotonic()
            if not rows:
                time.sleep(0.001)
    writer.close()
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
