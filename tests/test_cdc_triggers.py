"""Capture triggers: their SQL text, and their effect on a real billing SQLite file."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from cdc import installer, shadow, triggers
from cdc.context import acting_as, clear_actor, set_actor
from cdc.installer import InstallState
from cdc.translate import translate
from config import ActionRule, TableConfig
from storage.events import EventType, NewEvent

REPO = Path(__file__).resolve().parent.parent
CARD = "4111-5555-6666-7777"

SCHEMA = """
CREATE TABLE customers (
    id INTEGER PRIMARY KEY, name TEXT, email TEXT UNIQUE, status TEXT,
    card_number TEXT, updated_at TEXT);
CREATE TABLE plans (id INTEGER PRIMARY KEY, name TEXT, price INTEGER);
CREATE TABLE "order items" (
    "order" INTEGER, "select" TEXT, "we""ird" TEXT, qty INTEGER,
    PRIMARY KEY ("order", "select"));
CREATE TABLE rates (currency TEXT, day TEXT, rate REAL, PRIMARY KEY (day, currency))
    WITHOUT ROWID;
CREATE TABLE notes (body TEXT, author TEXT);
CREATE TABLE untouched (x);
INSERT INTO untouched VALUES (1), ('two');
"""

CUSTOMERS = TableConfig(
    table="customers",
    entity="customer",
    actor="id",
    ignore=("updated_at",),
    mask=("card_number",),
    actions=(ActionRule(action="customer.deactivated", when={"status": "deactivated"}),),
)
TABLES = (
    CUSTOMERS,
    TableConfig(table="plans", entity="plan"),
    TableConfig(table="order items", entity="order_item"),
    TableConfig(table="rates", entity="rate"),
    TableConfig(table="notes", entity="note", actor="author"),
)
BY_NAME = {t.table: t for t in TABLES}


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "billing.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.executescript(SCHEMA)
    conn.close()
    return path


@pytest.fixture
def auditor(db: Path) -> sqlite3.Connection:
    conn = installer.connect(db)
    installer.install(conn, TABLES)
    return conn


def billing_conn(db: Path, *, recursive: bool = False) -> sqlite3.Connection:
    """The billing service's own connection: autocommit, as many services use."""
    conn = sqlite3.connect(db, isolation_level=None)
    if recursive:
        conn.execute("PRAGMA recursive_triggers = ON")
    return conn


def events_of(auditor: sqlite3.Connection, after: int = 0) -> list[NewEvent]:
    rows = shadow.read_batch(auditor, after, 10_000)
    events, failures = translate(rows, BY_NAME, "billing")
    assert failures == []
    return events


def master(path: Path) -> list[tuple[str, str, str, str | None]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"
        ).fetchall()


def shadow_count(auditor: sqlite3.Connection) -> int:
    return int(auditor.execute("SELECT count(*) FROM _auditor_changes").fetchone()[0])


# --- SQL text -------------------------------------------------------------------------


def weird_shape() -> triggers.TableShape:
    return triggers.TableShape(
        name="order items",
        columns=("order", "select", 'we"ird', "qty"),
        primary_key=("order", "select"),
        unique_keys=(triggers.UniqueKey(("order", "select"), ("BINARY", "BINARY")),),
    )


def test_sql_quotes_every_identifier() -> None:
    options = TableConfig(table="order items", mask=('we"ird',))
    sql = "\n".join(triggers.triggers_sql(weird_shape(), options, 7))
    assert 'ON "order items"' in sql
    assert 'new."select"' in sql and 'old."select"' in sql
    assert 'new."we""ird"' in sql
    assert "'order items'" in sql
    assert " order items" not in sql.replace('"order items"', "").replace("'order items'", "")
    assert "!=" not in sql and "<>" not in sql.split("BEFORE UPDATE")[0]
    assert 'old."qty" IS NOT new."qty"' in sql
    assert sql.count("CREATE TRIGGER IF NOT EXISTS") == 5
    assert ", 7, " in sql  # the layout id is a constant in every trigger


def test_masked_column_is_compared_but_never_copied() -> None:
    options = TableConfig(table="order items", mask=('we"ird',))
    sql = "\n".join(triggers.triggers_sql(weird_shape(), options, 1))
    ref = r'(?:"_auditor_row"|new|old)\."we""ird"'
    comparisons = re.findall(f"{ref} IS (?:NOT )?{ref}", sql)
    assert comparisons  # in the UPDATE condition and the "***changed" marker
    assert '"we""ird"' not in re.sub(f"{ref} IS (?:NOT )?{ref}", "", sql)
    assert "'***'" in sql


def test_ignored_columns_are_left_out_of_the_update_condition() -> None:
    shape = triggers.TableShape(name="t", columns=("id", "a", "b"), primary_key=("id",))
    options = TableConfig(table="t", ignore=("b",))
    after_update = next(s for s in triggers.triggers_sql(shape, options, 1) if "AFTER UPDATE" in s)
    condition = after_update.split(" BEGIN ")[0]
    assert 'old."a" IS NOT new."a"' in condition
    assert '"b"' not in condition


def test_trigger_names_are_deterministic_and_safe() -> None:
    plain = triggers.trigger_names("customers")
    assert plain.after_insert == "_auditor_customers_ai"
    assert plain == triggers.trigger_names("customers")
    odd = triggers.trigger_names('order "items"')
    assert odd == triggers.trigger_names('order "items"')
    assert all(n.startswith("_auditor_order_items_") for n in odd.all())
    assert all(n.replace("_", "").isalnum() for n in odd.all())
    assert triggers.trigger_names("order items") != triggers.trigger_names("order_items")
    assert len(set(odd.all())) == 5


def test_options_naming_unknown_columns_are_refused(db: Path) -> None:
    conn = installer.connect(db)
    before = master(db)
    with pytest.raises(triggers.CaptureError, match="mask column 'cc'"):
        installer.install(conn, [TableConfig(table="customers", mask=("cc",))])
    with pytest.raises(triggers.CaptureError, match="'nope' does not exist"):
        installer.install(conn, [TableConfig(table="plans"), TableConfig(table="nope")])
    assert master(db) == before  # one transaction: nothing half-installed


# --- effect on a real database ----------------------------------------------------------


def test_insert_update_delete_are_captured_with_their_images(db: Path, auditor) -> None:
    host = billing_conn(db)
    host.execute(
        "INSERT INTO customers (id, name, email, status) VALUES (73, 'SUBIN', 's@x', 'new')"
    )
    host.execute("UPDATE customers SET name = 'SUBIN JEONG' WHERE id = 73")
    host.execute("DELETE FROM customers WHERE id = 73")
    created, updated, deleted = events_of(auditor)

    assert created.event_type is EventType.CREATE and created.action == "customer.created"
    assert created.entity == "customer" and created.entity_id == "73"
    assert created.before is None
    assert created.after == {
        "id": 73,
        "name": "SUBIN",
        "email": "s@x",
        "status": "new",
        "card_number": "***",
        "updated_at": None,
    }
    assert updated.event_type is EventType.UPDATE and updated.action == "customer.updated"
    assert updated.properties == ("name",)
    assert updated.before is not None and updated.after is not None
    assert (updated.before["name"], updated.after["name"]) == ("SUBIN", "SUBIN JEONG")
    assert deleted.event_type is EventType.DELETE and deleted.action == "customer.deleted"
    assert deleted.before == updated.after and deleted.after is None
    assert created.occurred_at.tzinfo is not None
    assert created.occurred_at <= updated.occurred_at <= deleted.occurred_at


def test_changes_to_and_from_null_are_events(db: Path, auditor) -> None:
    host = billing_conn(db)
    host.execute("INSERT INTO plans (id, name, price) VALUES (1, 'basic', NULL)")
    host.execute("UPDATE plans SET price = 10 WHERE id = 1")
    host.execute("UPDATE plans SET name = NULL WHERE id = 1")
    _, to_value, to_null = events_of(auditor)
    assert to_value.properties == ("price",)
    assert to_value.before is not None and to_value.before["price"] is None
    assert to_null.properties == ("name",)
    assert to_null.after is not None and to_null.after["name"] is None


def test_no_op_and_ignored_only_updates_record_nothing(db: Path, auditor) -> None:
    host = billing_conn(db)
    host.execute("INSERT INTO customers (id, name, status) VALUES (1, 'a', NULL)")
    before = shadow_count(auditor)
    host.execute("UPDATE customers SET name = 'a', status = NULL WHERE id = 1")
    host.execute("UPDATE customers SET updated_at = '2026-01-01' WHERE id = 1")
    assert shadow_count(auditor) == before


def test_masked_value_never_reaches_the_shadow_table(db: Path, auditor) -> None:
    host = billing_conn(db)
    host.execute("PRAGMA secure_delete = ON")  # so deleted billing rows leave no copy
    host.execute("INSERT INTO customers (id, name, card_number) VALUES (1, 'a', ?)", (CARD,))
    host.execute("UPDATE customers SET card_number = ? WHERE id = 1", (CARD[::-1],))
    host.execute(
        "INSERT OR REPLACE INTO customers (id, name, card_number) VALUES (1, 'a', ?)", (CARD,)
    )
    changed = events_of(auditor)
    host.execute("DELETE FROM customers")
    host.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    raw = b"".join(p.read_bytes() for p in db.parent.iterdir() if p.name.startswith(db.name))
    assert CARD.encode() not in raw and CARD[::-1].encode() not in raw
    stored = " ".join(str(r) for r in auditor.execute("SELECT * FROM _auditor_changes"))
    assert "4111" not in stored and "***" in stored
    # a change of the masked column alone is still an event, and names the column
    update, replace = changed[1:]
    assert update.properties == ("card_number",)
    assert update.before == update.after
    assert replace.properties == ("card_number",)
    assert update.after is not None and update.after["card_number"] == "***"


def test_insert_or_replace_over_a_row_is_one_update_with_the_true_before_image(
    db: Path, auditor
) -> None:
    host = billing_conn(db)
    host.execute("INSERT INTO customers (id, name, email, status) VALUES (1, 'old', 'a@x', 'x')")
    start = shadow.head_seq(auditor)
    host.execute("INSERT OR REPLACE INTO customers (id, name, email) VALUES (1, 'new', 'a@x')")
    (event,) = events_of(auditor, start)
    assert event.event_type is EventType.UPDATE and event.entity_id == "1"
    assert event.before is not None and event.after is not None
    assert (event.before["name"], event.before["status"]) == ("old", "x")
    assert (event.after["name"], event.after["status"]) == ("new", None)
    assert event.properties == ("name", "status")


@pytest.mark.parametrize("recursive", [False, True])
def test_replace_yields_the_same_events_with_recursive_triggers_on_or_off(
    db: Path, auditor, recursive: bool
) -> None:
    host = billing_conn(db, recursive=recursive)
    host.execute("INSERT INTO customers (id, name, email) VALUES (1, 'one', 'a@x')")
    host.execute("INSERT INTO customers (id, name, email) VALUES (2, 'two', 'b@x')")
    start = shadow.head_seq(auditor)
    # collides with row 1 on the key and with row 2 on the UNIQUE email
    host.execute("REPLACE INTO customers (id, name, email) VALUES (1, 'uno', 'b@x')")
    # collides with nothing on the key, with row 1 on the email
    host.execute("REPLACE INTO customers (name, email) VALUES ('three', 'b@x')")
    events = events_of(auditor, start)
    assert [(e.event_type, e.entity_id) for e in events] == [
        (EventType.DELETE, "2"),
        (EventType.UPDATE, "1"),
        (EventType.DELETE, "1"),
        (EventType.CREATE, "2"),  # max(rowid) + 1
    ]
    assert events[0].before is not None and events[0].before["name"] == "two"
    assert events[1].before is not None and events[1].before["name"] == "one"
    assert events[1].after is not None and events[1].after["email"] == "b@x"
    assert events[3].after is not None and events[3].after["name"] == "three"


def test_upsert_is_one_update_with_the_true_before_image(db: Path, auditor) -> None:
    host = billing_conn(db)
    host.execute("INSERT INTO customers (id, name, email, status) VALUES (1, 'old', 'a@x', 's')")
    start = shadow.head_seq(auditor)
    host.execute(
        "INSERT INTO customers (id, name, email) VALUES (1, 'new', 'a@x') "
        "ON CONFLICT (id) DO UPDATE SET name = excluded.name"
    )
    (event,) = events_of(auditor, start)
    assert event.event_type is EventType.UPDATE and event.properties == ("name",)
    assert event.before is not None and event.after is not None
    assert (event.before["name"], event.after["name"]) == ("old", "new")
    assert event.after["status"] == "s"


def test_statements_that_replace_nothing_leave_no_event(db: Path, auditor) -> None:
    host = billing_conn(db)
    host.execute("INSERT INTO customers (id, name, email) VALUES (1, 'a', 'a@x')")
    start = shadow.head_seq(auditor)
    host.execute("INSERT OR IGNORE INTO customers (id, name) VALUES (1, 'b')")
    host.execute("INSERT INTO customers (id, name) VALUES (1, 'b') ON CONFLICT DO NOTHING")
    host.execute(
        "INSERT INTO customers (id, name) VALUES (1, 'a') "
        "ON CONFLICT (id) DO UPDATE SET name = excluded.name"
    )
    host.execute("INSERT OR IGNORE INTO customers (id, name, email) VALUES (2, 'c', 'a@x')")
    host.execute("INSERT INTO customers (id, name, email) VALUES (3, 'c', 'c@x')")
    events = events_of(auditor, start)
    assert [(e.event_type, e.entity_id) for e in events] == [(EventType.CREATE, "3")]
    assert auditor.execute("SELECT name FROM customers WHERE id = 1").fetchone() == ("a",)


@pytest.mark.parametrize("recursive", [False, True])
def test_update_or_replace_records_the_row_it_deletes(db: Path, auditor, recursive: bool) -> None:
    host = billing_conn(db, recursive=recursive)
    host.execute("INSERT INTO customers (id, name, email) VALUES (1, 'a', 'a@x'), (2, 'b', 'b@x')")
    start = shadow.head_seq(auditor)
    host.execute("UPDATE OR REPLACE customers SET email = 'b@x' WHERE id = 1")
    events = events_of(auditor, start)
    assert [(e.event_type, e.entity_id, e.properties[:1]) for e in events] == [
        (EventType.DELETE, "2", ("id",)),
        (EventType.UPDATE, "1", ("email",)),
    ]



@pytest.mark.parametrize("recursive", [False, True])
@pytest.mark.parametrize("key", ["id", "rowid", "_ROWID_", "oid"])
def test_update_or_replace_of_the_key_by_any_of_its_names_records_the_row_it_deletes(
    db: Path, auditor, key: str, recursive: bool
) -> None:
    """The `_bu` trigger runs only for UPDATEs that SET a key column (`UPDATE OF`): each
    name of the rowid counts as one. Moving a row onto another's key deletes that one."""
    host = billing_conn(db, recursive=recursive)
    host.execute("INSERT INTO plans (id, name) VALUES (1, 'a'), (2, 'b')")
    start = shadow.head_seq(auditor)
    host.execute("UPDATE plans SET name = 'c' WHERE id = 1")
    host.execute(f"UPDATE OR REPLACE plans SET {key} = 2 WHERE id = 1")
    events = events_of(auditor, start)
    assert [(e.event_type, e.entity_id) for e in events] == [
        (EventType.UPDATE, "1"),
        (EventType.DELETE, "2"),
        (EventType.UPDATE, "2"),
    ]
    assert events[1].before == {"id": 2, "name": "b", "price": None}


def test_a_unique_generated_column_keeps_the_pre_image_on_every_update(tmp_path: Path) -> None:
    """A generated key column changes with columns no key names: UPDATE OF cannot
    list what changes it, so the `_bu` trigger runs on every UPDATE of such a table."""
    path = tmp_path / "billing.db"
    host = sqlite3.connect(path, isolation_level=None)
    host.execute(
        "CREATE TABLE tags (id INTEGER PRIMARY KEY, name TEXT, "
        "slug TEXT GENERATED ALWAYS AS (lower(name)) VIRTUAL UNIQUE)"
    )
    tags = TableConfig(table="tags", entity="tag")
    installer.install(installer.connect(path), [tags])
    host.execute("INSERT INTO tags (id, name) VALUES (1, 'a'), (2, 'b')")
    auditor = installer.connect(path)
    start = shadow.head_seq(auditor)
    host.execute("UPDATE OR REPLACE tags SET name = 'B' WHERE id = 1")
    events, failures = translate(shadow.read_batch(auditor, start, 100), {"tags": tags}, "b")
    assert failures == []
    assert [(e.event_type, e.entity_id) for e in events] == [
        (EventType.DELETE, "2"),
        (EventType.UPDATE, "1"),
    ]

def test_multi_row_replace_keeps_every_step(db: Path, auditor) -> None:
    host = billing_conn(db)
    host.execute("REPLACE INTO plans (id, name) VALUES (1, 'a'), (1, 'b'), (2, 'c')")
    events = events_of(auditor)
    assert [(e.event_type, e.entity_id) for e in events] == [
        (EventType.CREATE, "1"),
        (EventType.UPDATE, "1"),
        (EventType.CREATE, "2"),
    ]


def test_composite_without_rowid_and_rowid_tables(db: Path, auditor) -> None:
    host = billing_conn(db)
    host.execute("""INSERT INTO "order items" VALUES (7, 'sku "1"', 'x', 2)""")
    host.execute("""UPDATE "order items" SET qty = 3, "we""ird" = NULL""")
    host.execute("INSERT INTO rates VALUES ('EUR', '2026-11-28', 1.08)")
    host.execute("INSERT OR REPLACE INTO rates VALUES ('EUR', '2026-11-28', 1.09)")
    host.execute("INSERT INTO notes (rowid, body, author) VALUES (41, 'hello', 'ann')")
    host.execute("UPDATE notes SET body = 'bye'")
    item, item_update, rate, rate_update, note, note_update = events_of(auditor)
    assert item.entity_id == '[7,"sku \\"1\\""]'
    assert item.after == {"order": 7, "select": 'sku "1"', 'we"ird': "x", "qty": 2}
    assert item_update.properties == ('we"ird', "qty")
    assert rate.entity_id == '["2026-11-28","EUR"]'
    assert rate_update.event_type is EventType.UPDATE
    assert rate_update.before is not None and rate_update.before["rate"] == 1.08
    assert (note.entity_id, note_update.entity_id) == ("41", "41")


def test_actor_from_column_from_context_or_system(db: Path, auditor) -> None:
    host = sqlite3.connect(db)  # Python's default transaction handling
    with host:
        host.execute("INSERT INTO customers (id, name) VALUES (73, 'a')")
        host.execute("INSERT INTO notes (body, author) VALUES ('n', 'ann')")
    with host, acting_as(host, "073", name="SUBIN JEONG", ip="125.22.33.22"):
        host.execute("INSERT INTO plans (id, name) VALUES (1, 'basic')")
        host.execute("UPDATE plans SET name = 'pro'")
    with host:
        host.execute("DELETE FROM plans")
        host.execute("DELETE FROM customers")
    events = events_of(auditor)
    actors = [(e.action, e.actor.id, e.actor.name, e.actor.ip) for e in events]
    assert actors == [
        ("customer.created", "73", None, None),
        ("note.created", "ann", None, None),
        ("plan.created", "073", "SUBIN JEONG", "125.22.33.22"),
        ("plan.updated", "073", "SUBIN JEONG", "125.22.33.22"),
        ("plan.deleted", "system", None, None),
        ("customer.deleted", "73", None, None),  # DELETE: the old row's actor column
    ]
    assert auditor.execute("SELECT count(*) FROM _auditor_context").fetchone() == (0,)


def test_set_actor_refuses_to_run_outside_a_transaction(db: Path, auditor) -> None:
    host = billing_conn(db)
    with pytest.raises(RuntimeError, match="transaction"):
        set_actor(host, "073")
    host.execute("BEGIN")
    set_actor(host, "073")
    host.execute("INSERT INTO plans (id, name) VALUES (1, 'a')")
    clear_actor(host)
    host.execute("COMMIT")
    (event,) = events_of(auditor)
    assert event.actor.id == "073"


def test_named_action_when_the_new_row_starts_matching(db: Path, auditor) -> None:
    host = billing_conn(db)
    host.execute("INSERT INTO customers (id, status) VALUES (1, 'active')")
    host.execute("UPDATE customers SET status = 'deactivated' WHERE id = 1")
    host.execute("UPDATE customers SET name = 'x' WHERE id = 1")
    actions = [e.action for e in events_of(auditor)]
    assert actions == ["customer.created", "customer.deactivated", "customer.updated"]


def test_blob_values_do_not_break_the_host_write(db: Path, auditor) -> None:
    host = billing_conn(db)
    host.execute("INSERT INTO plans (id, name) VALUES (1, ?)", (b"\x00\xff",))
    (event,) = events_of(auditor)
    assert event.after == {"id": 1, "name": {"$blob": "00FF"}, "price": None}


def test_a_rolled_back_host_transaction_leaves_nothing(db: Path, auditor) -> None:
    host = billing_conn(db)
    host.execute("BEGIN")
    host.execute("INSERT INTO plans (id, name) VALUES (1, 'a')")
    host.execute("ROLLBACK")
    assert shadow_count(auditor) == 0


# --- installer ----------------------------------------------------------------------------


def test_install_twice_is_a_no_op(db: Path, auditor) -> None:
    before = master(db)
    version = installer.schema_version(auditor)
    assert installer.install(auditor, TABLES) == []
    assert master(db) == before
    assert installer.schema_version(auditor) == version
    assert all(installer.is_installed(auditor, t) for t in TABLES)


def test_uninstall_restores_sqlite_master_and_keeps_the_data(db: Path) -> None:
    before = master(db)
    conn = installer.connect(db)
    installer.install(conn, TABLES)
    host = billing_conn(db)
    host.execute("INSERT INTO customers (id, name) VALUES (1, 'a')")
    assert master(db) != before
    installer.uninstall(conn)
    assert master(db) == before
    assert conn.execute("SELECT id, name FROM customers").fetchall() == [(1, "a")]
    assert conn.execute("SELECT * FROM untouched").fetchall() == [(1,), ("two",)]
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert installer.installed_state(conn, CUSTOMERS) is InstallState.ABSENT


def test_schema_or_option_changes_make_the_triggers_stale(db: Path, auditor) -> None:
    host = billing_conn(db)
    assert installer.installed_state(auditor, CUSTOMERS) is InstallState.CURRENT
    version = installer.schema_version(auditor)
    host.execute("ALTER TABLE customers ADD COLUMN plan_id INTEGER")
    assert installer.schema_version(auditor) != version
    assert installer.installed_state(auditor, CUSTOMERS) is InstallState.STALE

    assert installer.install(auditor, TABLES) == ["customers"]
    host.execute("INSERT INTO customers (id, plan_id) VALUES (1, 9)")
    (event,) = events_of(auditor)
    assert event.after is not None and event.after["plan_id"] == 9

    unmasked = CUSTOMERS.model_copy(update={"mask": ()})
    assert installer.installed_state(auditor, unmasked) is InstallState.STALE


def test_install_drops_triggers_of_tables_no_longer_configured(db: Path, auditor) -> None:
    installer.install(auditor, [CUSTOMERS])
    names = [n for (n,) in auditor.execute("SELECT name FROM sqlite_master WHERE type='trigger'")]
    assert names and all(n.startswith("_auditor_customers_") for n in names)


def test_pruning_never_lets_a_seq_be_reused(db: Path, auditor) -> None:
    host = billing_conn(db)
    for n in range(5):
        host.execute("INSERT INTO plans (id, name) VALUES (?, 'p')", (n,))
    seqs = [r.seq for r in shadow.read_batch(auditor, 0, 100)]
    assert shadow.prune(auditor, seqs[-1], chunk=2) == 4
    assert shadow.backlog(auditor, 0) == 1  # the newest row stays as the high-water mark
    host.execute("INSERT INTO plans (id, name) VALUES (99, 'p')")
    (new,) = shadow.read_batch(auditor, seqs[-1], 100)
    assert new.seq > max(seqs)
    assert shadow.backlog(auditor, seqs[-1]) == 1
    assert shadow.prune(auditor, new.seq) == 1


def test_prune_leaves_rows_it_is_told_to_keep(db: Path, auditor) -> None:
    host = billing_conn(db)
    for n in range(4):
        host.execute("INSERT INTO plans (id, name) VALUES (?, 'p')", (n,))
    shadow.prune(auditor, 4, keep=[2])
    assert [r.seq for r in shadow.read_batch(auditor, 0, 10)] == [2, 4]


def test_a_recreated_shadow_table_continues_from_next_seq(db: Path, auditor) -> None:
    host = billing_conn(db)
    host.execute("INSERT INTO plans (id, name) VALUES (1, 'p')")
    installer.uninstall(auditor)
    installer.install(auditor, TABLES, next_seq=500)
    host.execute("INSERT INTO plans (id, name) VALUES (2, 'p')")
    rows = shadow.read_batch(auditor, 0, 10)
    assert [(r.seq, r.op) for r in rows] == [(499, "S"), (500, "I")]
    assert [e.entity_id for e in events_of(auditor)] == ["2"]


def test_a_batch_never_ends_between_a_pre_image_and_its_insert(db: Path, auditor) -> None:
    host = billing_conn(db)
    host.execute("INSERT INTO plans (id, name) VALUES (1, 'a')")
    host.execute("REPLACE INTO plans (id, name) VALUES (1, 'b')")
    first = shadow.read_batch(auditor, 0, 2)
    assert [r.op for r in first] == ["I", "P", "I"]


# --- a separate process writes -----------------------------------------------------------


def test_changes_written_by_another_process_are_captured(db: Path, auditor) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tests.billing_writer", str(db)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == "done"
    rows: list[shadow.ShadowRow] = []
    while batch := shadow.read_batch(auditor, rows[-1].seq if rows else 0, 7):
        rows += batch
    events, failures = translate(rows, BY_NAME, "billing")
    assert failures == []
    summary = [(e.action, e.entity_id, e.actor.id) for e in events]
    assert summary[:20] == [("customer.created", str(n), str(n)) for n in range(1, 21)]
    assert summary[20:] == [
        ("customer.deactivated", "3", "3"),
        ("plan.created", "1", "073"),
        ("plan.updated", "1", "073"),
        ("plan.created", "2", "system"),
        ("customer.updated", "5", "5"),
        ("customer.deleted", "6", "6"),
    ]
    replaced = events[-2]
    assert replaced.properties == ("name",)
    assert events[21].actor.name == "SUBIN JEONG" and events[21].actor.ip == "125.22.33.22"
    assert all("4111" not in str(e.before) + str(e.after) for e in events)


def test_strict_tables_and_generated_columns(tmp_path: Path) -> None:
    path = tmp_path / "strict.db"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE invoices (id INTEGER PRIMARY KEY, amount INTEGER, note ANY, "
            "label TEXT GENERATED ALWAYS AS ('#' || id) VIRTUAL) STRICT"
        )
    options = TableConfig(table="invoices", entity="invoice")
    conn = installer.connect(path)
    installer.install(conn, [options])
    shape = installer.read_shape(conn, "invoices")
    assert shape.blob_free == frozenset({"id", "amount"})  # ANY may hold a BLOB
    host = billing_conn(path)
    host.execute("INSERT INTO invoices (amount, note) VALUES (5, ?)", (b"\x01",))
    host.execute("UPDATE invoices SET amount = 6")
    rows = shadow.read_batch(conn, 0, 10)
    (created, updated), failures = translate(rows, {"invoices": options}, "billing")
    assert failures == []
    assert created.after == {"id": 1, "amount": 5, "note": {"$blob": "01"}, "label": "#1"}
    assert updated.properties == ("amount",)


def test_state_of_a_table_that_does_not_exist(db: Path, auditor) -> None:
    assert installer.installed_state(auditor, TableConfig(table="ghost")) is InstallState.ABSENT
    with pytest.raises(triggers.CaptureError, match="Auditor does not capture its own"):
        installer.install(auditor, [TableConfig(table="_auditor_changes")])


def test_tables_wider_than_a_sql_function_call(tmp_path: Path) -> None:
    path = tmp_path / "wide.db"
    columns = [f"c{n}" for n in range(150)]
    with sqlite3.connect(path) as conn:
        conn.execute(f"CREATE TABLE wide (id INTEGER PRIMARY KEY, {', '.join(columns)})")
    options = TableConfig(table="wide", mask=("c149",))
    conn = installer.connect(path)
    installer.install(conn, [options])
    host = billing_conn(path)
    host.execute("INSERT INTO wide (id, c0, c149) VALUES (1, 'a', 'secret')")
    host.execute("UPDATE wide SET c120 = 5")
    host.execute("REPLACE INTO wide (id, c0) VALUES (1, 'b')")
    rows = shadow.read_batch(conn, 0, 10)
    events, failures = translate(rows, {"wide": options}, "billing")
    assert failures == []
    assert [e.event_type for e in events] == [EventType.CREATE, EventType.UPDATE, EventType.UPDATE]
    assert events[0].after is not None and len(events[0].after) == 151
    assert events[0].after["c149"] == "***"
    assert events[1].properties == ("c120",)
    assert events[2].properties == ("c0", "c120", "c149")
