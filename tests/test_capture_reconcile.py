"""Reconciliation: after a gap in capture the trail is made to agree with the billing
tables, with `metadata.reconciled`; with no gap it finds nothing, even while a
separate process keeps writing."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from pathlib import Path
from typing import Any

from cdc.catchup import reconcile_sources
from cdc.reconcile import changed_columns
from cdc.triggers import trigger_names
from config import load_config
from demo.simulator import create_schema
from storage.events import Actor, EventType, NewEvent
from storage.store import AuditStore
from tests.capture_support import (
    capturing,
    events,
    run_sql,
    table_state,
    trail_state,
    wait_for,
    without,
    write_config,
)
from tests.daemon import ROOT, run_cli
from tests.test_capture_live import DEMO_TABLES, simulate

RECONCILED = {"reconciled": True}


def drop_triggers_sql(*tables: str) -> str:
    return "".join(
        f'DROP TRIGGER IF EXISTS "{name}";' for t in tables for name in trigger_names(t).all()
    )


def agrees(store: AuditStore, database: Path) -> bool:
    customers = table_state(database, "customers", mask=["card_number"])
    charges = table_state(database, "charges")
    return (
        without(trail_state(store, "customer"), "updated_at") == without(customers, "updated_at")
        and trail_state(store, "charge") == charges
    )


async def test_changes_made_while_triggers_were_missing_are_reconciled(tmp_path: Path) -> None:
    database = tmp_path / "billing.db"
    create_schema(database)
    config = write_config(tmp_path, DEMO_TABLES)
    async with capturing(config) as (_, store):
        simulate(database, 150)
        await wait_for(lambda: agrees(store, database), "capture to catch up")
        before = trail_state(store, "customer")
        conn = sqlite3.connect(database)
        active = str(
            conn.execute(
                "SELECT min(id) FROM customers WHERE status = 'active' AND id > 4"
            ).fetchone()[0]
        )
        charge = str(conn.execute("SELECT min(id) FROM charges").fetchone()[0])
        conn.close()
        # The billing service's migration tool drops our triggers and changes rows in the
        # same transaction: none of it reaches the shadow table.
        run_sql(
            database,
            "BEGIN;"
            + drop_triggers_sql("customers", "charges")
            + "UPDATE customers SET name = 'Gap Name', updated_at = 'x' WHERE id = 1;"
            + f"UPDATE customers SET status = 'deactivated' WHERE id = {active};"
            + "UPDATE customers SET card_number = '0000' WHERE id = 3;"
            + "UPDATE customers SET updated_at = 'only this' WHERE id = 4;"
            + f"DELETE FROM charges WHERE id = {charge};"
            + "INSERT INTO charges (customer_id, amount_cents, currency, description, created_at)"
            " VALUES (1, 4200, 'EUR', 'in the gap', 'now');"
            + "INSERT INTO customers (identity, name, card_number, created_at, updated_at)"
            " VALUES ('gap@example.com', 'Gap Person', '4111111111111111', 'now', 'now');"
            + "COMMIT;",
        )
        await wait_for(lambda: agrees(store, database), "reconciliation")
        reconciled = [e for e in events(store) if e.metadata.get("reconciled")]
        assert all(e.metadata == RECONCILED and e.actor == Actor("system") for e in reconciled)
        found = {(e.entity, e.entity_id, e.action): e for e in reconciled}
        assert len(found) == len(reconciled) == 5, sorted(found)

        renamed = found["customer", "1", "customer.updated"]
        assert renamed.event_type is EventType.UPDATE and renamed.properties == ("name",)
        assert renamed.before == before["1"] and renamed.after is not None
        assert renamed.after["name"] == "Gap Name" and renamed.after["card_number"] == "***"
        deactivated = found["customer", active, "customer.deactivated"]
        assert deactivated.properties == ("status",)
        created = next(e for e in reconciled if e.action == "customer.created")
        assert created.event_type is EventType.CREATE and created.after is not None
        assert created.after["name"] == "Gap Person" and created.after["card_number"] == "***"
        deleted = found["charge", charge, "charge.deleted"]
        assert deleted.event_type is EventType.DELETE and deleted.after is None
        assert deleted.before is not None and deleted.properties[0] == "id"
        assert any(e.action == "charge.created" and e.entity == "charge" for e in reconciled)
    assert b"4111111111111111" not in (tmp_path / "audit.db").read_bytes()


async def test_no_difference_while_another_process_keeps_writing(tmp_path: Path) -> None:
    """Exactness: each chunk of the table and the shadow head are read in one transaction,
    and the trail is folded exactly up to that head, so concurrent changes never look
    like differences. The snapshot taken first runs under the same writes."""
    database = tmp_path / "billing.db"
    conn = sqlite3.connect(database)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER, note TEXT)")
    conn.executemany(
        "INSERT INTO accounts VALUES (?, ?, 'old')", [(i, i * 3) for i in range(1, 3001)]
    )
    conn.commit()
    conn.close()
    config = load_config(
        write_config(tmp_path, [{"table": "accounts"}], snapshot=True, batch_size=100)
    )
    writer = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "tests" / "kill_writer.py"),
        str(database),
        str(tmp_path / "journal.ndjson"),
        "--transactions",
        "1500",
        "--seed",
        "5",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    store = AuditStore.open(config.store.url)
    try:
        passes = 0
        while writer.returncode is None or passes < 2:
            reports = await reconcile_sources(config, store, list(config.sources))
            assert [r.differences for r in reports] == [0], reports
            passes += 1
        assert passes >= 3, "the writer finished before reconciliation could overlap it"
        output, _ = await asyncio.wait_for(writer.communicate(), 60)
        assert b"errors=0" in output, output
        reports = await reconcile_sources(config, store, list(config.sources))
        assert reports[0].differences == 0
        assert trail_state(store, "accounts") == table_state(database, "accounts")
        snapshot = [e.entity_id for e in events(store, action="accounts.snapshot")]
        assert len(snapshot) == len(set(snapshot)) > 2500
    finally:
        store.close()


def test_reconcile_command(tmp_path: Path) -> None:
    database = tmp_path / "billing.db"
    create_schema(database)
    simulate(database, 60)
    config = write_config(tmp_path, DEMO_TABLES)
    # Without a snapshot, rows the trail has never seen are differences: CREATEs.
    first = run_cli("reconcile", config=config)
    assert first.returncode == 0, first.stderr
    customers = len(table_state(database, "customers"))
    assert f"billing.customers: {customers} differences recorded ({customers} created" in (
        first.stdout
    )
    again = run_cli("reconcile", "--source", "billing", config=config)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == [
        "billing.customers: 0 differences recorded",
        "billing.resource_actions: 0 differences recorded",
        "billing.charges: 0 differences recorded",
    ]
    bad = run_cli("reconcile", "--source", "nope", config=config)
    assert bad.returncode == 2 and "nope" in bad.stderr and "billing" in bad.stderr


ODD_SCHEMA = """
CREATE TABLE codes (code TEXT PRIMARY KEY, label TEXT, weight REAL, raw BLOB);
CREATE TABLE lines ("order" INTEGER, "line no" INTEGER, qty INTEGER,
    PRIMARY KEY ("order", "line no")) WITHOUT ROWID;
CREATE TABLE notes (body TEXT, author TEXT);
INSERT INTO codes VALUES ('a', 'A', 1.5, x'00ff'), ('b', 'B', NULL, NULL), ('c', 'C', 2, 'x');
INSERT INTO lines VALUES (1, 1, 5), (1, 2, 6), (2, 1, 7);
INSERT INTO notes VALUES ('first', 'ann'), ('second', 'bob'), ('third', NULL);
"""
ODD_TABLES: list[dict[str, Any]] = [
    {"table": "codes", "entity": "code", "mask": ["raw"]},
    {"table": "lines", "entity": "line"},
    {"table": "notes", "entity": "note", "actor": "author"},
]


def odd_state(database: Path) -> dict[str, dict[str, Any]]:
    """The three tables as captured images, computed independently of cdc/."""
    conn = sqlite3.connect(database)
    codes = {
        code: {"code": code, "label": label, "weight": weight, "raw": "***"}
        for code, label, weight, _ in conn.execute("SELECT * FROM codes")
    }
    lines = {
        f"[{o},{n}]": {"order": o, "line no": n, "qty": q}
        for o, n, q in conn.execute("SELECT * FROM lines")
    }
    notes = {
        str(rowid): {"body": body, "author": author}
        for rowid, body, author in conn.execute("SELECT rowid, * FROM notes")
    }
    conn.close()
    return {"code": codes, "line": lines, "note": notes}


async def test_every_kind_of_key_is_reconciled(tmp_path: Path) -> None:
    database = tmp_path / "billing.db"
    conn = sqlite3.connect(database)
    conn.executescript(ODD_SCHEMA)
    conn.close()
    config = write_config(tmp_path, ODD_TABLES, snapshot=True, batch_size=2)
    async with capturing(config) as (_, store):

        def agree() -> bool:
            expected = odd_state(database)
            return all(trail_state(store, e) == expected[e] for e in expected)

        await wait_for(agree, "the snapshot")
        run_sql(
            database,
            "BEGIN;"
            + drop_triggers_sql("codes", "lines", "notes")
            + "UPDATE codes SET label = 'AA', raw = x'01' WHERE code = 'a';"
            + "UPDATE codes SET weight = 3.25 WHERE code = 'c';"
            + "DELETE FROM codes WHERE code = 'b';"
            + "INSERT INTO codes VALUES ('d', 'D', NULL, x'02');"
            + 'UPDATE lines SET qty = 50 WHERE "order" = 1 AND "line no" = 1;'
            + 'DELETE FROM lines WHERE "order" = 2;'
            + "INSERT INTO lines VALUES (3, 1, 9);"
            + "DELETE FROM notes WHERE body = 'second';"
            + "UPDATE notes SET author = 'cy' WHERE body = 'third';"
            + "INSERT INTO notes VALUES ('fourth', 'dan');"
            + "COMMIT;",
        )
        await wait_for(agree, "reconciliation")
        reconciled = [e for e in events(store) if e.metadata == RECONCILED]
        kinds = sorted((e.entity, e.entity_id, e.event_type.value) for e in reconciled)
        assert kinds == [
            ("code", "a", "UPDATE"),
            ("code", "b", "DELETE"),
            ("code", "c", "UPDATE"),
            ("code", "d", "CREATE"),
            ("line", "[1,1]", "UPDATE"),
            ("line", "[2,1]", "DELETE"),
            ("line", "[3,1]", "CREATE"),
            ("note", "2", "DELETE"),
            ("note", "3", "UPDATE"),
            ("note", "4", "CREATE"),
        ]
        # The masked BLOB changed too, but masked columns are compared only as "***".
        assert next(e for e in reconciled if e.entity_id == "a").properties == ("label",)


async def test_a_redacted_row_is_never_recorded_again(tmp_path: Path) -> None:
    database = tmp_path / "billing.db"
    create_schema(database)
    simulate(database, 40)
    config = write_config(tmp_path, DEMO_TABLES, snapshot=True)
    async with capturing(config) as (_, store):
        await wait_for(lambda: agrees(store, database), "the snapshot")
        for entity_id in ("1", "2"):
            read = events(store, entity="customer", entity_id=entity_id)[0]
            redaction = NewEvent(
                stream="api",
                entity="audit_event",
                event_type=EventType.UPDATE,
                actor=Actor("test"),
                occurred_at=read.occurred_at,
                entity_id=read.id,
                action="audit_event.redacted",
            )
            assert store.redact(read.id, redaction) is not None
        run_sql(
            database,
            "BEGIN;"
            + drop_triggers_sql("customers")
            + "UPDATE customers SET name = 'Changed' WHERE id = 1;"
            + "DELETE FROM resource_actions WHERE customer_id = 2;"
            + "DELETE FROM charges WHERE customer_id = 2;"
            + "DELETE FROM customers WHERE id = 2;"
            + "COMMIT;",
        )
        await wait_for(
            lambda: any(e.metadata == RECONCILED for e in events(store, entity="customer")),
            "reconciliation",
        )
        await asyncio.sleep(0.3)
        reconciled = [e for e in events(store, entity="customer") if e.metadata == RECONCILED]
        assert [(e.entity_id, e.event_type, e.before) for e in reconciled] == [
            ("2", EventType.DELETE, None)
        ]


def test_compared_columns() -> None:
    ignored = frozenset({"updated_at", "card"})
    known = {"id": 1, "name": "a", "card": "***", "updated_at": "t"}
    assert changed_columns(
        {"id": 1, "name": "b", "card": "***", "updated_at": "u"}, known, None, ignored
    ) == ["name"]
    # An added column is compared with its default; a renamed one is not compared.
    grown = {**known, "plan": "free", "fax": None}
    defaults = {"plan": "free", "fax": None, "id": None, "name": None}
    assert changed_columns(grown, known, defaults, ignored) == []
    assert changed_columns({**grown, "fax": "1"}, known, defaults, ignored) == ["fax"]
    renamed = {"id": 1, "full_name": "zzz", "card": "***", "updated_at": "t"}
    assert changed_columns(renamed, known, {"full_name": None}, ignored) == []


async def test_drain_up_to_a_head_never_stores_a_change_after_it(tmp_path: Path) -> None:
    """Reconciliation folds the trail as of exactly the head it read with the table."""
    database = tmp_path / "billing.db"
    create_schema(database)
    config = load_config(write_config(tmp_path, DEMO_TABLES, batch_size=1000))
    async with capturing(config.path) as (service, store):
        capture = service.sources[0]
        await capture.stop()  # no polling task: the test drives the poller itself
        simulate(database, 10)
        await capture.poller.drain(up_to=4)
        assert capture.poller.stats.position == 4 and len(events(store)) == 4
        await capture.poller.drain(up_to=4)
        assert capture.poller.stats.position == 4 and len(events(store)) == 4
        await capture.poller.drain(up_to=7)
        assert capture.poller.stats.position == 7 and len(events(store)) == 7


async def test_capture_comes_back_after_uninstall_and_reconciles_the_gap(tmp_path: Path) -> None:
    """uninstall-triggers while the daemon runs: there is no shadow table left to drain,
    so the daemon must reinstall first (it used to fail on the drain forever)."""
    database = tmp_path / "billing.db"
    create_schema(database)
    config = write_config(tmp_path, DEMO_TABLES)
    async with capturing(config) as (_, store):
        simulate(database, 60)
        await wait_for(lambda: agrees(store, database), "capture to catch up")
        run_sql(
            database,
            "BEGIN;"
            + drop_triggers_sql("customers", "resource_actions", "charges")
            + "DROP TABLE _auditor_changes; DROP TABLE _auditor_layouts;"
            + "DROP TABLE _auditor_context;"
            + "UPDATE customers SET name = 'While Uninstalled' WHERE id = 2;"
            + "DELETE FROM charges WHERE id = (SELECT max(id) FROM charges);"
            + "COMMIT;",
        )
        await wait_for(lambda: agrees(store, database), "reinstall and reconciliation")
        simulate(database, 20, seed=9)
        await wait_for(lambda: agrees(store, database), "capture after the reinstall")
        reconciled = [(e.entity, e.event_type) for e in events(store) if e.metadata == RECONCILED]
        assert sorted(reconciled) == [("charge", EventType.DELETE), ("customer", EventType.UPDATE)]
        seqs = [e.seq for e in events(store)]
        assert seqs == list(range(1, len(seqs) + 1))
