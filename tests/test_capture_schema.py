"""The billing service migrates captured tables while Auditor captures them: it notices
(`PRAGMA schema_version`), regenerates its triggers, and reconciles what it could
not capture in between."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

from cdc import installer
from config import TableConfig, load_config
from demo.simulator import create_schema
from storage.store import AuditStore
from tests.capture_support import (
    capturing,
    events,
    run_sql,
    table_state,
    trail_state,
    wait_for,
    write_config,
)
from tests.daemon import running_daemon
from tests.test_capture_live import DEMO_TABLES, simulate

RECONCILED = {"reconciled": True}
CUSTOMERS = TableConfig.model_validate(DEMO_TABLES[0])


def triggers_current(database: Path) -> bool:
    conn = installer.connect(database)
    try:
        return installer.is_installed(conn, CUSTOMERS)
    finally:
        conn.close()


def agrees(store: AuditStore, database: Path, defaults: dict[str, Any] | None = None) -> bool:
    """The trail's state of every customer is the row; a column the trail has not seen
    yet (added by the migration) must hold its default."""
    defaults = defaults or {}
    trail = trail_state(store, "customer")
    table = table_state(database, "customers", mask=["card_number"])
    if set(trail) != set(table):
        return False
    for key, row in table.items():
        for column, value in row.items():
            if column == "updated_at":
                continue
            known = trail[key].get(column, defaults.get(column, object()))
            if known != value:
                return False
    return True


async def test_add_column_is_captured_and_the_window_before_it_reconciled(
    tmp_path: Path,
) -> None:
    database = tmp_path / "billing.db"
    create_schema(database)
    simulate(database, 80)
    async with capturing(write_config(tmp_path, DEMO_TABLES, snapshot=True)) as (_, store):
        await wait_for(lambda: agrees(store, database), "the snapshot")
        # Changes made before Auditor notices (here: in the migration's transaction): one
        # to the new column alone, invisible to the old triggers, and one to an old column.
        run_sql(
            database,
            "BEGIN;"
            "ALTER TABLE customers ADD COLUMN fax TEXT;"
            "ALTER TABLE customers ADD COLUMN plan TEXT NOT NULL DEFAULT 'free';"
            "UPDATE customers SET fax = '+1 555' WHERE id = 1;"
            "UPDATE customers SET name = 'Renamed' WHERE id = 2;"
            "COMMIT;",
        )
        defaults = {"fax": None, "plan": "free"}
        await wait_for(lambda: agrees(store, database, defaults), "reconciliation")
        await wait_for(lambda: triggers_current(database), "regenerated triggers")
        reconciled = [e for e in events(store) if e.metadata == RECONCILED]
        # Rows holding the new columns' defaults are no difference: only the fax.
        assert [(e.entity_id, e.properties) for e in reconciled] == [("1", ("fax",))]
        renamed = events(store, entity_id="2", action="customer.updated")
        assert renamed[-1].metadata == {} and renamed[-1].properties == ("name",)

        run_sql(database, "UPDATE customers SET fax = '+1 777', plan = 'pro' WHERE id = 3;")
        await wait_for(lambda: agrees(store, database, defaults), "capture")
        after = events(store, entity_id="3", action="customer.updated")[-1]
        assert after.metadata == {} and after.properties == ("fax", "plan")
        assert after.after is not None and after.after["plan"] == "pro"


async def test_rename_column_keeps_capturing_under_the_new_name(tmp_path: Path) -> None:
    database = tmp_path / "billing.db"
    create_schema(database)
    simulate(database, 40)
    async with capturing(write_config(tmp_path, DEMO_TABLES, snapshot=True)) as (_, store):
        await wait_for(lambda: agrees(store, database), "the snapshot")
        # SQLite rewrites our triggers on RENAME COLUMN, so a change made before Auditor
        # regenerates them is still captured, under the old name.
        run_sql(
            database,
            "BEGIN;"
            "ALTER TABLE customers RENAME COLUMN identity TO login;"
            "UPDATE customers SET login = 'one@example.com' WHERE id = 1;"
            "COMMIT;",
        )
        await wait_for(lambda: triggers_current(database), "regenerated triggers")
        run_sql(database, "UPDATE customers SET login = 'two@example.com' WHERE id = 2;")
        await wait_for(lambda: len(events(store, entity_id="2", entity="customer")) > 1, "capture")
        first = events(store, entity_id="1", entity="customer")[-1]
        assert first.properties == ("identity",) and first.after is not None
        assert first.after["identity"] == "one@example.com"
        second = events(store, entity_id="2", entity="customer")[-1]
        assert second.properties == ("login",) and second.after is not None
        assert second.after["login"] == "two@example.com" and "identity" not in second.after
        await asyncio.sleep(0.5)
        # A rename is no change of the rows: reconciliation records nothing.
        assert not [e for e in events(store) if e.metadata == RECONCILED]


REBUILD = """
BEGIN;
CREATE TABLE customers_new (
    id INTEGER PRIMARY KEY,
    identity TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'deactivated')),
    card_number TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    plan TEXT NOT NULL DEFAULT 'free'
);
INSERT INTO customers_new (id, identity, name, status, card_number, created_at, updated_at)
    SELECT id, identity, name, status, card_number, created_at, updated_at FROM customers;
DROP TABLE customers;
ALTER TABLE customers_new RENAME TO customers;
-- Changes before Auditor notices (deterministically: before the migration commits).
UPDATE customers SET name = 'After Rebuild' WHERE id = 1;
UPDATE customers SET plan = 'pro' WHERE id = 2;
DELETE FROM customers WHERE id = 3;
INSERT INTO customers (identity, name, card_number, created_at, updated_at, plan)
    VALUES ('new@example.com', 'New After Rebuild', '4000', 'now', 'now', 'team');
COMMIT;
"""


def test_a_rebuilt_table_is_reconciled_and_captured_again(tmp_path: Path) -> None:
    """The 12-step rebuild drops our triggers with the old table; the daemon notices,
    reinstalls them and reconciles the changes made in between."""
    database = tmp_path / "billing.db"
    create_schema(database)
    simulate(database, 80)
    config = write_config(tmp_path, DEMO_TABLES, snapshot=True)
    port = load_config(config).server.port
    store = AuditStore.open(f"sqlite:///{tmp_path / 'audit.db'}")
    defaults = {"plan": "free"}
    try:
        with running_daemon(config, port):
            _wait(lambda: agrees(store, database), "the snapshot")
            run_sql(database, REBUILD)
            _wait(lambda: agrees(store, database, defaults), "reconciliation")
            _wait(lambda: triggers_current(database), "reinstalled triggers")
            reconciled = {
                (e.entity_id, e.event_type.value): e
                for e in events(store)
                if e.metadata == RECONCILED
            }
            new_id = str(max(int(k) for k in table_state(database, "customers")))
            assert set(reconciled) == {
                ("1", "UPDATE"),
                ("2", "UPDATE"),
                ("3", "DELETE"),
                (new_id, "CREATE"),
            }
            assert reconciled["1", "UPDATE"].properties == ("name",)
            assert reconciled["2", "UPDATE"].properties == ("plan",)
            created = reconciled[new_id, "CREATE"].after
            assert created is not None and created["plan"] == "team"
            assert created["card_number"] == "***"

            run_sql(database, "UPDATE customers SET plan = 'team', name = 'Later' WHERE id = 4;")
            _wait(lambda: agrees(store, database, defaults), "capture after the rebuild")
            later = events(store, entity_id="4", entity="customer")[-1]
            assert later.metadata == {} and later.properties == ("name", "plan")
        log = (tmp_path / "daemon.log").read_text()
        assert "Traceback" not in log, log
    finally:
        store.close()


def _wait(predicate: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_column_defaults_are_read_from_the_schema(tmp_path: Path) -> None:
    from cdc.scan import TableReader, image_of

    database = tmp_path / "billing.db"
    conn = sqlite3.connect(database)
    conn.execute(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT DEFAULT 'x', b INTEGER DEFAULT -2, "
        "c BLOB DEFAULT x'0a', d REAL, e TEXT DEFAULT CURRENT_DATE)"
    )
    conn.close()
    options = TableConfig(table="t")
    auditor = installer.connect(database)
    installer.install(auditor, [options])
    reader = TableReader(auditor, options)
    text = reader.defaults()
    assert text is not None
    image = image_of(text, options, reader.shape, "billing")
    assert image is not None
    assert {k: image[k] for k in "abcd"} == {"a": "x", "b": -2, "c": {"$blob": "0A"}, "d": None}
    assert isinstance(image["e"], str) and len(image["e"]) == 10
    auditor.close()
