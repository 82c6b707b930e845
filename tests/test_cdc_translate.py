"""Translation of shadow rows into audit events."""

from __future__ import annotations

import sqlite3
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cdc import installer, shadow
from cdc.shadow import ShadowRow
from cdc.translate import event_id, translate
from config import ActionRule, TableConfig
from storage.events import SYSTEM_ACTOR, EventType

COLUMNS = ("id", "name", "status", "card")
ACCOUNTS = TableConfig(
    table="accounts",
    entity="account",
    ignore=("status",),
    mask=("card",),
    actions=(
        ActionRule(action="account.closed", when={"status": "closed", "id": "1"}),
        ActionRule(action="account.renamed", when={"name": "new"}),
    ),
)
TABLES = {"accounts": ACCOUNTS}
T0 = "2026-11-28T12:00:00.123Z"


def row(
    seq: int,
    op: str,
    pk: str = "[1]",
    old: str | None = None,
    new: str | None = None,
    *,
    at: str = T0,
    table: str = "accounts",
    columns: tuple[str, ...] | None = COLUMNS,
    actor: str | None = None,
) -> ShadowRow:
    return ShadowRow(
        seq=seq,
        table=table,
        op=op,
        pk=pk,
        old=old,
        new=new,
        layout_id=1,
        columns=columns,
        actor_id=actor,
        actor_name=None,
        actor_ip=None,
        changed_at=at,
    )


def test_rows_become_events_with_deterministic_ids() -> None:
    rows = [
        row(1, "I", new='[1,"a","open","***"]', actor="u1"),
        row(2, "U", old='[1,"a","open","***"]', new='[1,"b","open","***"]'),
        row(3, "D", old='[1,"b","open","***"]'),
    ]
    events, failures = translate(rows, TABLES, "billing")
    assert failures == []
    assert [e.event_type for e in events] == [EventType.CREATE, EventType.UPDATE, EventType.DELETE]
    assert events[0].actor.id == "u1" and events[1].actor is SYSTEM_ACTOR
    assert events[0].occurred_at == datetime(2026, 11, 28, 12, 0, 0, 123000, tzinfo=UTC)
    assert events[0].properties == COLUMNS and events[1].properties == ("name",)

    again, _ = translate(rows, TABLES, "billing")
    assert [e.id for e in again] == [e.id for e in events]
    other, _ = translate(rows, TABLES, "other")
    assert not {e.id for e in other} & {e.id for e in events}
    parsed = uuid.UUID(events[0].id)
    assert parsed.version == 7
    assert parsed.int >> 80 == 1_795_867_200_123  # the change time in milliseconds
    assert events[0].id == event_id("billing", 1, events[0].occurred_at)
    assert sorted(e.id for e in events) == [e.id for e in events]


def test_ignored_only_changes_are_no_event_and_masked_changes_are() -> None:
    rows = [
        row(1, "U", old='[1,"a","open","***"]', new='[1,"a","closed","***"]'),
        row(2, "U", old='[1,"a","open","***"]', new='[1,"a","open","***changed"]'),
    ]
    events, failures = translate(rows, TABLES, "billing")
    assert failures == []
    (event,) = events
    assert event.properties == ("card",)
    assert event.before == event.after == {"id": 1, "name": "a", "status": "open", "card": "***"}


def test_configured_mask_applies_even_to_values_written_in_clear() -> None:
    events, _ = translate([row(1, "I", new='[1,"a",null,"4111"]')], TABLES, "billing")
    assert events[0].after is not None and events[0].after["card"] == "***"


def test_first_action_whose_condition_starts_to_hold() -> None:
    rows = [
        row(1, "U", old='[1,"a","open","***"]', new='[1,"new","closed","***"]'),
        row(2, "U", old='[1,"new","closed","***"]', new='[1,"x","closed","***"]'),
        row(3, "U", old='[2,"a","open","***"]', new='[2,"new","closed","***"]', pk="[2]"),
    ]
    events, _ = translate(rows, TABLES, "billing")
    # "1" in the config matches the INTEGER 1; an action that already held is no action
    assert [e.action for e in events] == ["account.closed", "account.updated", "account.renamed"]


def test_untranslatable_rows_are_reported_and_the_rest_translated() -> None:
    good = '[1,"a","open","***"]'
    rows = [
        row(1, "I", new=good, table="nope"),
        row(2, "I", new='[1,"a",'),
        row(3, "I", new=good, columns=None),
        row(4, "I", new='[1,"a"]'),
        row(5, "X", new=good),
        row(6, "I", new=good, at="yesterday"),
        row(7, "I", new=good, pk="[7]"),
    ]
    events, failures = translate(rows, TABLES, "billing")
    assert [e.entity_id for e in events] == ["7"]
    reasons = {r.seq: reason for r, reason in failures}
    assert sorted(reasons) == [1, 2, 3, 4, 5, 6]
    assert "not configured" in reasons[1]
    assert "not valid JSON" in reasons[2]
    assert "layout" in reasons[3]
    assert "2 values" in reasons[4]
    assert "operation" in reasons[5]
    assert "time" in reasons[6]


def test_infinite_reals_written_by_sqlite_are_read() -> None:
    events, failures = translate([row(1, "I", new='[1,"Inf",-Inf,Inf]')], TABLES, "billing")
    assert failures == []
    assert events[0].after is not None
    assert events[0].after["name"] == "Inf" and events[0].after["status"] == float("-inf")


def test_pre_image_of_another_statement_is_never_taken_for_a_replace() -> None:
    # An ignored insert (pre-image of row 1, incoming row 2) and, in the same
    # millisecond, an unrelated insert of row 3: no DELETE of row 1.
    rows = [
        row(1, "P", old='[1,"a",null,"***"]', new='[2,"a",null,"***"]'),
        row(2, "I", pk="[3]", new='[3,"c",null,"***"]'),
    ]
    events, _ = translate(rows, TABLES, "billing")
    assert [(e.event_type, e.entity_id) for e in events] == [(EventType.CREATE, "3")]


def test_a_delete_absorbed_into_a_group_that_is_no_replace_is_still_emitted() -> None:
    rows = [
        row(1, "P", old='[1,"a",null,"***"]', new='[1,"b",null,"***"]'),
        row(2, "D", old='[1,"a",null,"***"]'),
        row(3, "I", pk="[4]", new='[4,"z",null,"***"]', at="2026-11-28T12:00:00.124Z"),
    ]
    events, _ = translate(rows, TABLES, "billing")
    assert [(e.event_type, e.entity_id) for e in events] == [
        (EventType.DELETE, "1"),
        (EventType.CREATE, "4"),
    ]


def test_automatic_key_pairs_a_pre_image_with_its_insert() -> None:
    rows = [
        row(1, "P", pk="[5]", old='[5,"a",null,"***"]', new='[null,"a",null,"***"]'),
        row(2, "I", pk="[6]", new='[6,"a",null,"***"]'),
    ]
    events, _ = translate(rows, TABLES, "billing")
    assert [(e.event_type, e.entity_id) for e in events] == [
        (EventType.DELETE, "5"),
        (EventType.CREATE, "6"),
    ]


def captured_accounts(tmp_path: Path) -> tuple[sqlite3.Connection, sqlite3.Connection]:
    """A billing file with `accounts` captured: Auditor's connection and the host's."""
    db = tmp_path / "billing.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, name, status, card)")
    auditor = installer.connect(db)
    installer.install(auditor, [ACCOUNTS])
    return auditor, sqlite3.connect(db, isolation_level=None)


def test_failures_on_a_real_database_do_not_stop_later_rows(tmp_path: Path) -> None:
    auditor, host = captured_accounts(tmp_path)
    host.execute("INSERT INTO accounts VALUES (1, 'a', 'open', '4111')")
    host.execute("INSERT INTO accounts VALUES (2, 'b', 'open', '4222')")
    host.execute("UPDATE _auditor_changes SET new = '[1, broken' WHERE seq = 1")
    host.execute("INSERT INTO accounts VALUES (3, 'c', 'open', '4333')")

    rows = shadow.read_batch(auditor, 0, 100)
    events, failures = translate(rows, TABLES, "billing")
    assert [e.entity_id for e in events] == ["2", "3"]
    assert [(r.seq, "JSON" in reason) for r, reason in failures] == [(1, True)]
    # the poller keeps the failed row while pruning what it stored
    shadow.prune(auditor, rows[-1].seq, keep=[r.seq for r, _ in failures])
    assert [r.seq for r in shadow.read_batch(auditor, 0, 100)] == [1, 3]


def test_change_times_in_milliseconds_and_in_iso_text_are_both_read(tmp_path: Path) -> None:
    """Triggers write the statement's time as Unix milliseconds; shadow rows left by
    earlier triggers hold ISO 8601 text. Both become the event's time and id."""
    auditor, host = captured_accounts(tmp_path)
    before = datetime.now(UTC)
    host.execute("INSERT INTO accounts VALUES (1, 'a', 'open', '4111')")
    after = datetime.now(UTC)
    host.execute(  # the same change as an earlier version's trigger wrote it
        "INSERT INTO _auditor_changes (tbl, op, pk, layout, new, changed_at) "
        "SELECT tbl, op, '[2]', layout, new, '2026-01-02T03:04:05.678Z' FROM _auditor_changes"
    )
    stored = host.execute("SELECT changed_at FROM _auditor_changes ORDER BY seq").fetchall()
    assert stored[0][0].isdigit()

    rows = shadow.read_batch(auditor, 0, 100)
    events, failures = translate(rows, TABLES, "billing")
    assert failures == []
    fresh, legacy = (e.occurred_at for e in events)
    assert fresh == datetime.fromtimestamp(int(stored[0][0]) / 1000, UTC)
    assert before - timedelta(milliseconds=1) < fresh <= after
    assert legacy == datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    assert [uuid.UUID(e.id).int >> 80 for e in events] == [
        int(stored[0][0]), int(legacy.timestamp() * 1000)
    ]
    # what /v1/streams shows as the oldest waiting change is ISO text either way
    assert shadow.oldest_change_after(auditor, 0) == fresh.isoformat(
        timespec="milliseconds").replace("+00:00", "Z")
    assert shadow.oldest_change_after(auditor, 1) == "2026-01-02T03:04:05.678Z"


def test_composite_and_text_keys_become_entity_ids() -> None:
    rows = [
        row(1, "I", pk='["k1"]', new='[1,"a",null,"***"]'),
        row(2, "I", pk='[1,"x"]', new='[1,"a",null,"***"]'),
        row(3, "I", pk="[2.5]", new='[1,"a",null,"***"]'),
    ]
    events, _ = translate(rows, TABLES, "billing")
    assert [e.entity_id for e in events] == ["k1", '[1,"x"]', "2.5"]
