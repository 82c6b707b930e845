"""The audit store's contract, run against SQLite and PostgreSQL alike."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, text
from sqlalchemy import event as sa_event

from storage import merkle
from storage.engine import WAL_CHECKPOINT_PAGES, WAL_SIZE_LIMIT
from storage.events import Actor, AuditEvent, EventType, NewEvent, new_event_id, to_ms, utc_now
from storage.migrate import upgrade
from storage.query import EventQuery, Order
from storage.schema import events, metadata
from storage.store import (
    EVENT_COLUMNS,
    Appended,
    AppendRequest,
    AuditStore,
    CapturePosition,
    Created,
    StorageError,
    _query_sql,
)
from tests.daemon import ROOT

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def make_event(n: int = 0, stream: str = "api", **overrides: object) -> NewEvent:
    fields: dict[str, object] = {
        "stream": stream,
        "entity": "customer",
        "entity_id": str(n),
        "event_type": EventType.UPDATE,
        "actor": Actor(f"user{n % 3}", "Name", "10.0.0.1"),
        "occurred_at": T0 + timedelta(seconds=n),
        "action": "customer.updated",
        "properties": ("name",),
        "before": {"id": n, "name": "A"},
        "after": {"id": n, "name": "B"},
        "metadata": {"n": n},
    }
    fields.update(overrides)
    return NewEvent(**fields)  # type: ignore[arg-type]


def test_append_numbers_each_stream_from_one_without_gaps(store: AuditStore) -> None:
    results = store.append(
        [
            AppendRequest([make_event(1), make_event(2, stream="billing")]),
            AppendRequest([make_event(3), make_event(4, stream="billing"), make_event(5)]),
        ]
    )
    seqs = [(a.event.stream, a.event.seq) for r in results for a in r]
    assert seqs == [("api", 1), ("billing", 1), ("api", 2), ("billing", 2), ("api", 3)]
    heads = {h.name: h.head_seq for h in store.streams()}
    assert heads == {"api": 3, "billing": 2}


def test_stored_event_reads_back_exactly(store: AuditStore) -> None:
    new = make_event(7, occurred_at=T0 + timedelta(microseconds=123_456))
    stored = store.append([AppendRequest([new])])[0][0].event
    fetched = store.get(new.id)
    assert fetched == stored
    assert fetched.occurred_at == T0 + timedelta(milliseconds=123)
    assert fetched.before == {"id": 7, "name": "A"} and fetched.metadata == {"n": 7}
    assert fetched.actor == Actor("user1", "Name", "10.0.0.1")
    assert store.get(new_event_id()) is None


def test_same_client_id_twice_is_stored_once(store: AuditStore) -> None:
    first = make_event(1, client_id=True)
    assert store.append([AppendRequest([first])])[0][0].created
    again = store.append([AppendRequest([first, first])])[0]
    assert [a.created for a in again] == [False, False]
    assert again[0].event.seq == 1
    assert store.streams()[0].head_seq == 1


def test_an_id_made_by_auditor_stored_twice_is_an_error_not_a_silent_merge(
    store: AuditStore,
) -> None:
    """Only client ids are looked up; any other repeat is a bug, and must be loud."""
    event = make_event(1)
    store.append([AppendRequest([event])])
    with pytest.raises(StorageError):
        store.append([AppendRequest([event])])
    assert store.streams()[0].head_seq == 1


def test_duplicate_id_within_one_transaction_is_stored_once(store: AuditStore) -> None:
    event = make_event(1)
    results = store.append([AppendRequest([event]), AppendRequest([event])])
    assert [r[0].created for r in results] == [True, False]
    assert results[1][0].event.seq == 1


def stored_event(store: AuditStore, event_id: str) -> AuditEvent:
    found = store.get(event_id)
    assert found is not None
    return found


def test_append_created_answers_what_the_store_added_and_whole_events_for_repeats(
    store: AuditStore,
) -> None:
    before = make_event(0, client_id=True)
    store.append([AppendRequest([before])])
    fresh, repeated = make_event(1), make_event(2, client_id=True)
    results = store.append_created(
        [AppendRequest([fresh, before, repeated]), AppendRequest([repeated])]
    )
    created, again, first = results[0]
    for new, answer in ((fresh, created), (repeated, first)):
        assert isinstance(answer, Created)
        assert stored_event(store, new.id) == AuditStore.created_event(
            new, answer.seq, answer.recorded_at, answer.hash
        )
    assert isinstance(created, Created) and isinstance(first, Created)
    assert (created.seq, first.seq) == (2, 3)
    # Stored before, or earlier in the same commit: the stored event, whole.
    assert again == Appended(stored_event(store, before.id), created=False)
    assert results[1] == [Appended(stored_event(store, repeated.id), created=False)]
    assert store.streams()[0].head_seq == 3


def test_append_created_gives_commit_listeners_whole_events(store: AuditStore) -> None:
    heard: list[Appended] = []
    store.add_commit_listener(heard.extend)
    event = make_event(1)
    results = store.append_created([AppendRequest([event])])
    assert len(heard) == 1
    assert results == [[Appended(stored_event(store, event.id), True, heard[0].position)]]
    assert heard == results[0]


def test_concurrent_appends_keep_seq_gapless(store: AuditStore, store_url: str) -> None:
    """Two store instances (as two daemons would be) appending at once."""
    other = AuditStore.open(store_url)
    errors: list[BaseException] = []

    def worker(target: AuditStore, offset: int) -> None:
        try:
            for i in range(40):
                target.append([AppendRequest([make_event(offset + i), make_event(offset + i)])])
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=worker, args=(store, 0)),
        threading.Thread(target=worker, args=(other, 1000)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    other.close()
    assert errors == []
    seqs = sorted(e.seq for e in store.iter_events(EventQuery(order="asc")))
    assert seqs == list(range(1, 161))


_APPEND_PROCESS = """
import sys
from datetime import UTC, datetime
from storage.events import Actor, EventType, NewEvent
from storage.store import AppendRequest, AuditStore
store = AuditStore.open(sys.argv[1])
store.append([AppendRequest([NewEvent(stream="api", entity="customer",
    event_type=EventType.CREATE, actor=Actor("other-process"),
    occurred_at=datetime(2026, 11, 28, tzinfo=UTC))])])
store.close()
"""


def test_page_reads_see_every_commit_on_every_thread(store: AuditStore, store_url: str) -> None:
    """Pages are read on connections kept per thread (SQLite): none may keep a snapshot
    that hides what was committed since, here or by another process."""
    query = EventQuery(actor="other-process")

    def count_on_a_thread() -> int:
        counts: list[int] = []
        thread = threading.Thread(target=lambda: counts.append(len(store.query_rows(query)[0])))
        thread.start()
        thread.join()
        return counts[0]

    worker = ThreadPoolExecutor(max_workers=1)
    try:
        assert len(store.query_rows(query)[0]) == 0
        assert worker.submit(lambda: len(store.query_rows(query)[0])).result() == 0
        subprocess.run(
            [sys.executable, "-c", _APPEND_PROCESS, store_url], check=True, timeout=60, cwd=ROOT
        )
        assert len(store.query_rows(query)[0]) == 1
        assert worker.submit(lambda: len(store.query_rows(query)[0])).result() == 1
        assert count_on_a_thread() == 1
    finally:
        worker.shutdown()


_HOLD_WRITE_LOCK = """
import pathlib, sys, time
from storage.engine import create_engines
engines = create_engines(sys.argv[1], shared=True)
with engines.exclusive():
    print("held", flush=True)
    time.sleep(0.5)
    pathlib.Path(sys.argv[2]).touch()
engines.dispose()
"""


def test_a_sqlite_append_waits_for_the_write_lock_another_process_holds(tmp_path: Path) -> None:
    """Writers queue on the store file's lock (handed over at release) instead of
    finding SQLite busy and sleeping; a process that holds it keeps every append out."""
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    released = tmp_path / "released"
    store = AuditStore.open(url, shared=True)
    with subprocess.Popen(
        [sys.executable, "-c", _HOLD_WRITE_LOCK, url, str(released)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    ) as holder:
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline() == "held\n"
            store.append([AppendRequest([make_event(1)])])
            # The holder marks the release just before it lets go.
            assert released.exists()
            assert holder.wait(timeout=30) == 0
            assert [e.seq for e in store.iter_events(EventQuery(order="asc"))] == [1]
        finally:
            holder.kill()
            store.close()


def test_query_filters(store: AuditStore) -> None:
    store.append(
        [
            AppendRequest(
                [
                    make_event(1),
                    make_event(2, event_type=EventType.CREATE, action="customer.created"),
                    make_event(3, entity="charge", properties=("amount",), stream="billing"),
                    make_event(4, event_type=EventType.DELETE),
                ]
            )
        ]
    )

    def ids(**filters: object) -> list[str | None]:
        page = store.query(EventQuery(order="asc", **filters))  # type: ignore[arg-type]
        return [e.entity_id for e in page.events]

    assert ids() == ["1", "2", "3", "4"]
    assert ids(actor="user1") == ["1", "4"]
    assert ids(entity="charge") == ["3"]
    assert ids(entity="customer", entity_id="2") == ["2"]
    assert ids(event_types=("CREATE", "DELETE")) == ["2", "4"]
    assert ids(action="customer.created") == ["2"]
    assert ids(stream="billing") == ["3"]
    assert ids(property="amount") == ["3"]
    assert ids(property="name") == ["1", "2", "4"]
    assert ids(since_ms=to_ms(T0 + timedelta(seconds=2))) == ["2", "3", "4"]
    assert ids(until_ms=to_ms(T0 + timedelta(seconds=2))) == ["1"]
    assert ids(actor="nobody") == []


def test_pages_are_stable_while_new_events_arrive(store: AuditStore) -> None:
    store.append([AppendRequest([make_event(i) for i in range(10)])])
    seen: list[str | None] = []
    query = EventQuery(order="desc", limit=3)
    page = store.query(query)
    while True:
        seen.extend(e.entity_id for e in page.events)
        store.append([AppendRequest([make_event(100 + len(seen))])])
        if page.last_pk is None:
            break
        page = store.query(EventQuery(order="desc", limit=3, after_pk=page.last_pk))
    assert seen == [str(i) for i in reversed(range(10))]


def test_capture_position_is_saved_with_the_events(store: AuditStore) -> None:
    assert store.capture_position("billing") == 0
    store.append([AppendRequest([make_event(1, stream="billing")], CapturePosition("billing", 17))])
    store.append([AppendRequest([], CapturePosition("billing", 42))])
    assert store.capture_position("billing") == 42


def test_redaction_erases_payload_and_records_itself(store: AuditStore) -> None:
    original = store.append([AppendRequest([make_event(1)])])[0][0].event
    note = make_event(2, entity="audit_event", metadata={"redacts": original.id})
    result = store.redact(original.id, note)
    assert result is not None
    redacted, recorded = result
    assert redacted.redacted and redacted.before is None and redacted.after is None
    assert redacted.metadata == {}
    assert redacted.hash == original.hash
    assert recorded.seq == 2 and recorded.metadata == {"redacts": original.id}
    assert store.redact(new_event_id(), note) is None


def test_head_hash_is_the_merkle_root_of_the_leaves(store: AuditStore) -> None:
    leaves: list[bytes] = []
    for size in (1, 2, 5, 1, 9):
        results = store.append([AppendRequest([make_event(i) for i in range(size)])])
        leaves.extend(bytes.fromhex(a.event.hash) for a in results[0])
        assert store.streams()[0].head_hash == merkle.root_from_leaf_hashes(leaves).hex()


def test_migrations_create_exactly_the_schema(store_url: str) -> None:
    engine = create_engine(store_url)
    upgrade(engine)
    upgrade(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
        version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    engine.dispose()
    assert diff == []
    assert version == "0001"


def test_utc_now_is_aware() -> None:
    assert utc_now().tzinfo is not None


@pytest.mark.parametrize("count", [1, 3])
def test_iter_events_reads_everything_in_chunks(store: AuditStore, count: int) -> None:
    store.append([AppendRequest([make_event(i) for i in range(25 * count)])])
    seen = [e.seq for e in store.iter_events(EventQuery(order="asc"), chunk=7)]
    assert seen == list(range(1, 25 * count + 1))


def test_event_columns_are_the_tables_column_order() -> None:
    """`row_to_event` unpacks rows by position."""
    assert tuple(column.name for column in events.c) == EVENT_COLUMNS


QUICK_SHAPES = {
    # filters → the index whose range is the page (None: the table itself, in pk order)
    (): None,
    (("actor", "user1"),): "ix_events_actor",
    (("entity", "customer"),): "ix_events_entity_only",
    (("entity", "customer"), ("entity_id", "3")): "ix_events_entity",
    (("event_types", ("UPDATE",)),): "ix_events_event_type",
    (("action", "customer.updated"),): "ix_events_action",
    (("stream", "api"),): "ix_events_stream",
}
SLOW_SHAPES: list[dict[str, Any]] = [
    {"entity_id": "3"},
    {"actor": "user1", "entity": "customer"},
    {"property": "name"},
    {"since_ms": 0},
    {"until_ms": 2**40},
    {"event_types": ("CREATE", "UPDATE")},
    {"actor": "user1", "limit": 101},
]


def test_quick_queries_are_one_index_range_read_in_order(store: AuditStore) -> None:
    """What `query_is_quick` lets the API run on its event loop reads one range of one
    index in `pk` order: SQLite's own plan shows the index and no sort. Anything
    else, and every PostgreSQL query, goes to the reader thread."""
    store.append([AppendRequest([make_event(n) for n in range(30)])])
    pages: list[tuple[Order, int | None]] = [("desc", None), ("asc", None), ("desc", 9), ("asc", 5)]
    for shape, index in QUICK_SHAPES.items():
        for order, after_pk in pages:
            filters: dict[str, Any] = dict(shape)
            query = EventQuery(order=order, after_pk=after_pk, limit=100, **filters)
            assert query.one_index_range(), shape
            assert store.query_is_quick(query) is (store.dialect == "sqlite")
            if store.dialect != "sqlite":
                continue
            sql, params = _query_sql(query, "?")
            with store.engines.read.connect() as conn:
                rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, tuple(params))
                plan = " | ".join(str(row[3]) for row in rows)
            assert "TEMP B-TREE" not in plan, (shape, plan)
            if index is None:
                assert "USING INDEX" not in plan and "USING COVERING INDEX" not in plan, plan
            else:
                assert f"USING INDEX {index} " in plan, (shape, plan)
    for slow in SLOW_SHAPES:
        assert not store.query_is_quick(EventQuery(**slow)), slow


def test_sqlite_appends_keep_to_the_librarys_parameter_limit(tmp_path: Path) -> None:
    """Rows go in by multi-row INSERTs; SQLite before 3.32 allowed 999 parameters."""
    store = AuditStore.open(f"sqlite:///{tmp_path / 'audit.db'}")
    try:

        @sa_event.listens_for(store.engines.write, "connect")
        def _low_limit(dbapi_connection: sqlite3.Connection, _record: object) -> None:
            dbapi_connection.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)

        store.engines.write.dispose()
        store.append([AppendRequest([make_event(i) for i in range(300)])])
        assert [int(e.entity_id or 0) for e in store.iter_events(EventQuery(order="asc"))] == list(
            range(300)
        )
    finally:
        store.close()


def test_a_sqlite_store_folds_its_wal_back_at_its_own_size_not_sqlites_default(
    tmp_path: Path,
) -> None:
    """Checkpoints every WAL_CHECKPOINT_PAGES pages, so that a page changed by many
    commits is written back once: with SQLite's default (1,000 pages) the WAL would
    start over, and stop growing, after about 1,000 pages. Its connections also set
    `journal_size_limit` (what the WAL is cut back to when it starts over; checked by
    hand: held past 130 MiB by a reader, it was 96 MiB after the next append)."""
    path = tmp_path / "audit.db"
    wal = Path(f"{path}-wal")
    frame = 4096 + 24  # a page and its frame header
    store = AuditStore.open(f"sqlite:///{path}")
    try:
        for n in range(0, 40_000, 500):
            store.append([AppendRequest([make_event(n + i) for i in range(500)])])
            if wal.stat().st_size > 3_000 * frame:
                break
        wal_frames = wal.stat().st_size // frame
        with store.engines.write.connect() as conn:
            limit = conn.exec_driver_sql("PRAGMA journal_size_limit").scalar()
    finally:
        store.close()
    assert 3_000 < wal_frames < WAL_CHECKPOINT_PAGES
    assert limit == WAL_SIZE_LIMIT
