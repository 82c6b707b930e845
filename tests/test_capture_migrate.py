"""`run_daemon.py migrate`: a migration SQLite would refuse while our triggers name a
column (DROP COLUMN) runs in one transaction with the triggers dropped and
regenerated, and no change of the billing service is lost."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cdc import installer
from cdc.migration import MigrationError, split_statements
from config import load_config
from demo.simulator import create_schema
from storage.store import AuditStore
from tests.capture_support import events, write_config
from tests.daemon import ROOT, run_cli, running_daemon
from tests.test_capture_live import DEMO_TABLES, simulate


def columns(database: Path, table: str) -> list[str]:
    conn = sqlite3.connect(database)
    try:
        return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
    finally:
        conn.close()


def accounts_database(tmp_path: Path) -> Path:
    database = tmp_path / "billing.db"
    conn = sqlite3.connect(database)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(
        "CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER, note TEXT, fax TEXT)"
    )
    conn.commit()
    conn.close()
    return database


def test_drop_column_while_the_billing_service_writes_loses_no_change(tmp_path: Path) -> None:
    database = accounts_database(tmp_path)
    config = write_config(tmp_path, [{"table": "accounts"}])
    assert run_cli("install-triggers", config=config).returncode == 0
    journal = tmp_path / "journal.ndjson"
    port = load_config(config).server.port
    with running_daemon(config, port):
        writer = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "tests" / "kill_writer.py"),
                str(database),
                str(journal),
                "--transactions",
                "700",
                "--seed",
                "3",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        time.sleep(1.0)
        migrated = run_cli(
            "migrate", "--source", "billing", "ALTER TABLE accounts DROP COLUMN fax", config=config
        )
        assert writer.poll() is None, "the writer finished before the migration"
        assert migrated.returncode == 0, migrated.stderr
        assert "billing: migrated" in migrated.stdout
        output, _ = writer.communicate(timeout=120)
        assert writer.returncode == 0 and b"errors=0" in output, output
        expected = [tuple(json.loads(line)) for line in journal.read_text().splitlines()]
        store = AuditStore.open(f"sqlite:///{tmp_path / 'audit.db'}")
        try:
            deadline = time.monotonic() + 30
            while len(events(store)) < len(expected) and time.monotonic() < deadline:
                time.sleep(0.2)
            stored = events(store)
        finally:
            store.close()
    assert columns(database, "accounts") == ["id", "balance", "note"]
    got = [(e.event_type.value, int(e.entity_id), (e.after or {}).get("balance")) for e in stored]
    assert got == [(kind, key, balance) for kind, key, balance in expected]
    images = [e.after or e.before or {} for e in stored]
    assert "fax" in images[0] and "fax" not in images[-1]
    assert "Traceback" not in (tmp_path / "daemon.log").read_text()


def test_a_migration_that_capture_cannot_follow_is_rolled_back(tmp_path: Path) -> None:
    database = tmp_path / "billing.db"
    create_schema(database)
    simulate(database, 20)
    config = write_config(tmp_path, DEMO_TABLES)
    assert run_cli("install-triggers", config=config).returncode == 0
    before = columns(database, "customers")
    # card_number is masked in the config: capture could not go on as configured.
    masked = run_cli("migrate", "ALTER TABLE customers DROP COLUMN card_number", config=config)
    assert masked.returncode == 2
    assert "rolled back" in masked.stderr and "card_number" in masked.stderr
    bad = run_cli("migrate", "ALTER TABLE customers DROP COLUMN nope", config=config)
    assert bad.returncode == 2 and "nope" in bad.stderr
    own = run_cli("migrate", "BEGIN; ALTER TABLE customers DROP COLUMN name; COMMIT", config=config)
    assert own.returncode == 2 and "one transaction" in own.stderr
    assert columns(database, "customers") == before
    conn = installer.connect(database)
    try:
        assert all(installer.is_installed(conn, t) for t in load_config(config).sources[0].tables)
    finally:
        conn.close()
    assert run_cli("migrate", "--source", "x", "SELECT 1", config=config).returncode == 2


def test_data_changes_in_a_migration_are_captured_with_the_new_shape(tmp_path: Path) -> None:
    database = accounts_database(tmp_path)
    conn = sqlite3.connect(database)
    conn.executemany("INSERT INTO accounts VALUES (?, ?, 'x', NULL)", [(1, 10), (2, 9000)])
    conn.commit()
    conn.close()
    config = write_config(tmp_path, [{"table": "accounts"}], snapshot=True)
    assert run_cli("reconcile", config=config).returncode == 0  # snapshot: 2 READs
    migrated = run_cli(
        "migrate",
        "ALTER TABLE accounts ADD COLUMN tier TEXT; "
        "UPDATE accounts SET tier = 'gold' WHERE balance > 5000; "
        "ALTER TABLE accounts DROP COLUMN fax;",
        config=config,
    )
    assert migrated.returncode == 0, migrated.stderr
    reconciled = run_cli("reconcile", config=config)
    assert reconciled.stdout.strip() == "billing.accounts: 0 differences recorded"
    store = AuditStore.open(f"sqlite:///{tmp_path / 'audit.db'}")
    try:
        update = events(store, action="accounts.updated")
    finally:
        store.close()
    assert [(e.entity_id, e.properties) for e in update] == [("2", ("tier",))]
    assert update[0].after == {"id": 2, "balance": 9000, "note": "x", "fax": None, "tier": "gold"}


def test_statements_are_split_like_sqlite_reads_them() -> None:
    sql = (
        "-- why\nALTER TABLE a DROP COLUMN b; UPDATE a SET c = ';x'\n;"
        "/* c */ CREATE INDEX i ON a(c)"
    )
    assert split_statements(sql) == [
        "-- why\nALTER TABLE a DROP COLUMN b;",
        "UPDATE a SET c = ';x'\n;",
        "/* c */ CREATE INDEX i ON a(c);",
    ]
    assert split_statements(" ; -- nothing\n") == []
    with pytest.raises(MigrationError):
        split_statements("UPDATE a SET c = 'unterminated")
