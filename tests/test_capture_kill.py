"""Exactly once under SIGKILL: a separate writer process changes the billing
database while the daemon is killed and restarted at random moments; in the
end every change is in the audit trail exactly once, in order, and the writer
never saw an error. `make soak` runs it bigger (AUDITOR_SOAK=1)."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from storage.query import EventQuery
from storage.store import AuditStore
from tests.daemon import ROOT, free_port, run_cli, running_daemon, set_port, start_daemon

SOAK = os.environ.get("AUDITOR_SOAK") == "1"
TRANSACTIONS = 6000 if SOAK else 900
KILLS = 60 if SOAK else 8


def billing_setup(tmp_path: Path) -> tuple[Path, Path]:
    database = tmp_path / "billing.db"
    conn = sqlite3.connect(database)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER, note TEXT)")
    conn.commit()
    conn.close()
    config = tmp_path / "config.yaml"
    document = {
        "store": {"url": "sqlite:///audit.db"},
        "server": {"host": "127.0.0.1", "port": free_port()},
        "capture": {"poll_interval": 0.2, "batch_size": 200, "snapshot": False},
        "sources": [
            {"name": "billing", "database": "billing.db", "tables": [{"table": "accounts"}]}
        ],
    }
    config.write_text(yaml.safe_dump(document))
    return database, config


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_nothing_and_duplicates_nothing(tmp_path: Path) -> None:
    database, config = billing_setup(tmp_path)
    assert run_cli("install-triggers", config=config).returncode == 0
    journal = tmp_path / "journal.ndjson"
    writer = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tests" / "kill_writer.py"),
            str(database),
            str(journal),
            "--transactions",
            str(TRANSACTIONS),
            "--seed",
            "7",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    rng = random.Random(11)
    kills = 0
    while kills < KILLS or writer.poll() is None:
        daemon = start_daemon(config)
        time.sleep(rng.uniform(0.3, 2.5))
        daemon.send_signal(signal.SIGKILL)
        daemon.wait()
        kills += 1
        if kills > KILLS * 10:
            break
    output, _ = writer.communicate(timeout=120)
    assert writer.returncode == 0, output.decode()
    assert b"errors=0" in output

    expected = [tuple(json.loads(line)) for line in journal.read_text().splitlines()]
    port = free_port()
    set_port(config, port)
    with running_daemon(config, port):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            store = AuditStore.open(f"sqlite:///{tmp_path / 'audit.db'}")
            heads = {h.name: h.head_seq for h in store.streams()}
            store.close()
            if heads.get("billing", 0) >= len(expected):
                break
            time.sleep(0.2)

    store = AuditStore.open(f"sqlite:///{tmp_path / 'audit.db'}")
    events = list(store.iter_events(EventQuery(stream="billing", order="asc")))
    store.close()
    got = [
        (e.event_type.value, int(e.entity_id or 0), (e.after or {}).get("balance")) for e in events
    ]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert len(got) == len(expected), f"{len(got)} events for {len(expected)} changes"
    assert got == [(kind, key, balance) for kind, key, balance in expected]
    assert kills >= KILLS
