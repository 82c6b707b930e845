"""`run_daemon.py verify` at a size where process start-up does not dominate.

    python -m bench.verify_scale 1000000

Fills a SQLite store with N events through `AuditStore.append`, then times
`run_daemon.py verify` three times (wall clock, start-up included and measured
on its own) against reading every row and hashing it once with plain sqlite3.
Prints medians. The quick `make bench` verify figure uses 300,000 events, where
start-up (about 0.5 s) is a fifth of the time.
"""

from __future__ import annotations

import hashlib
import pathlib
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

from storage.events import Actor, EventType, NewEvent, utc_now
from storage.store import AppendRequest, AuditStore

ROOT = pathlib.Path(__file__).resolve().parent.parent


def main() -> None:
    d = pathlib.Path(tempfile.mkdtemp())
    url = f"sqlite:///{d}/audit.db"
    s = AuditStore.open(url)
    N = int(sys.argv[1])
    t = time.perf_counter()
    for _ in range(N // 2000):
        ev = [
            NewEvent(
                stream="billing",
                entity="customer",
                entity_id=str(i),
                event_type=EventType.UPDATE,
                actor=Actor(f"user{i % 1000}", "Name", "10.0.0.1"),
                occurred_at=utc_now(),
                properties=("name",),
                before={"id": i, "name": "a"},
                after={"id": i, "name": "b"},
            )
            for i in range(2000)
        ]
        s.append([AppendRequest(ev)])
    s.close()
    print("populated", N, "in", round(time.perf_counter() - t), "s", flush=True)
    (d / "config.yaml").write_text(f"store:\n  url: {url}\nintegrity:\n  key_file: {d}/key\n")

    def run_verify():
        t = time.perf_counter()
        r = subprocess.run(
            [
                sys.executable,
                str(ROOT / "run_daemon.py"),
                "--config",
                str(d / "config.yaml"),
                "verify",
            ],
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        return time.perf_counter() - t

    def start_only():
        t = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", "import run_daemon, storage.verify, storage.verify_cli"],
            check=True,
            cwd=ROOT,
        )
        return time.perf_counter() - t

    def ceiling():
        c = sqlite3.connect(d / "audit.db")
        t = time.perf_counter()
        for row in c.execute("SELECT * FROM events ORDER BY seq"):
            hashlib.sha256(repr(row).encode()).digest()
        c.close()
        return time.perf_counter() - t

    v, st, ce = [], [], []
    for _ in range(3):
        v.append(run_verify())
        st.append(start_only())
        ce.append(ceiling())
    mv, ms, mc = statistics.median(v), statistics.median(st), statistics.median(ce)
    print(
        f"verify wall {mv:.2f} s -> {N / mv:,.0f} events/s with start-up;"
        f" start-up {ms:.2f} s; without it {N / (mv - ms):,.0f} events/s;"
        f" ceiling (read + one SHA-256 a row) {N / mc:,.0f} rows/s"
    )


if __name__ == "__main__":
    main()
