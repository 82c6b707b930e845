"""The snapshot: on first attach every existing row becomes one READ event, exactly
once even when the daemon is killed half way through."""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path

import pytest

from cdc import installer
from cdc.snapshot import DONE, FINISHED, SourceSnapshot, marker_key, position_key, progress_key
from config import load_config
from demo.simulator import create_schema
from storage.events import Actor, EventType
from storage.store import Appended, AppendRequest, AuditStore
from storage.writer import GroupCommitWriter
from tests.capture_support import events, table_state, trail_state, write_config
from tests.daemon import free_port, running_daemon, set_port, start_daemon
from tests.test_capture_live import DEMO_TABLES, simulate


def wait(predicate: object, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def positions(audit: Path) -> dict[str, int]:
    if not audit.exists():
        return {}
    conn = sqlite3.connect(f"file:{audit}?mode=ro", uri=True, timeout=5)
    try:
        return dict(conn.execute("SELECT source, position FROM capture_positions").fetchall())
    except sqlite3.OperationalError:
        return {}
    finally:
        conn.close()


def test_existing_rows_become_one_read_each(tmp_path: Path) -> None:
    database = tmp_path / "billing.db"
    create_schema(database)
    simulate(database, 200)
    config = write_config(tmp_path, DEMO_TABLES, snapshot=True, batch_size=50)
    audit = tmp_path / "audit.db"
    for _ in range(2):  # a restart takes no second snapshot
        port = load_config(config).server.port
        with running_daemon(config, port):
            wait(lambda: positions(audit).get(marker_key("billing")) == FINISHED, "snapshot")
        set_port(config, free_port())
    store = AuditStore.open(f"sqlite:///{audit}")
    try:
        reads = events(store)
        assert {e.event_type for e in reads} == {EventType.READ}
        for entity, table, mask in (
            ("customer", "customers", ["card_number"]),
            ("resource_action", "resource_actions", []),
            ("charge", "charges", []),
        ):
            rows = table_state(database, table, mask=mask)
            mine = [e for e in reads if e.entity == entity]
            assert len(mine) == len(rows)
            assert trail_state(store, entity) == rows
            for event in mine:
                assert event.action == f"{entity}.snapshot"
                assert event.metadata == {"snapshot": True}
                assert event.actor == Actor("system") and event.before is None
                assert event.after is not None and set(event.properties) == set(event.after)
                assert event.properties[0] == "id"  # all columns, in table order
    finally:
        store.close()
    log = (tmp_path / "daemon.log").read_text()
    assert "Traceback" not in log and "rows/s" not in log  # no progress bar off a terminal


@pytest.mark.slow
def test_killed_half_way_the_snapshot_resumes_and_records_each_row_once(tmp_path: Path) -> None:
    database = tmp_path / "billing.db"
    conn = sqlite3.connect(database)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER, note TEXT)")
    conn.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 50000) "
        "INSERT INTO accounts SELECT i, i * 7, 'row ' || i FROM n"
    )
    conn.commit()
    conn.close()
    config = write_config(tmp_path, [{"table": "accounts"}], snapshot=True, batch_size=500)
    audit = tmp_path / "audit.db"
    key = progress_key("billing", "accounts")
    daemon = start_daemon(config)
    try:
        wait(lambda: 10_000 <= positions(audit).get(key, 0) <= 40_000, "half the snapshot", 120)
        daemon.send_signal(signal.SIGKILL)
        daemon.wait()
        stopped_at = positions(audit)[key]
        assert 10_000 <= stopped_at < 50_000 and marker_key("billing") in positions(audit)
        daemon = start_daemon(config)
        wait(lambda: positions(audit).get(marker_key("billing")) == FINISHED, "the rest", 120)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
    assert positions(audit)[key] == DONE
    conn = sqlite3.connect(audit)
    count, distinct = conn.execute(
        "SELECT count(*), count(DISTINCT entity_id) FROM events WHERE action = 'accounts.snapshot'"
    ).fetchone()
    seqs = [s for (s,) in conn.execute("SELECT seq FROM events ORDER BY seq")]
    conn.close()
    assert count == distinct == 50_000
    assert seqs == list(range(1, 50_001))


class FailingWriter(GroupCommitWriter):
    """The injected fault: the process dies (here: the append fails) after some chunks."""

    def __init__(self, store: AuditStore, allowed: int) -> None:
        super().__init__(store)
        self.allowed = allowed

    async def append(self, request: AppendRequest) -> list[Appended]:
        if self.allowed == 0:
            raise RuntimeError("killed")
        self.allowed -= 1
        return await super().append(request)


async def test_a_without_rowid_table_resumes_after_its_last_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    database = tmp_path / "billing.db"
    conn = sqlite3.connect(database)
    conn.execute(
        "CREATE TABLE rates (currency TEXT, day TEXT, rate REAL, PRIMARY KEY (day, currency)) "
        "WITHOUT ROWID"
    )
    conn.executemany(
        "INSERT INTO rates VALUES (?, ?, ?)",
        [(c, f"2026-01-{d:02d}", d / 3) for d in range(1, 11) for c in ("EUR", "USD", "JPY")],
    )
    conn.commit()
    conn.close()
    config = load_config(write_config(tmp_path, [{"table": "rates"}], snapshot=True))
    source = config.sources[0]
    auditor = installer.connect(database)
    installer.install(auditor, source.tables)
    auditor.close()
    store = AuditStore.open(config.store.url)
    try:
        failing = FailingWriter(store, allowed=3)
        await failing.start()
        with pytest.raises(RuntimeError):
            await SourceSnapshot(source, store, failing, batch_size=4).run()
        await failing.stop()
        assert len(events(store)) == 12
        writer = GroupCommitWriter(store)
        await writer.start()
        await SourceSnapshot(source, store, writer, batch_size=4, progress_bar=True).run()
        await writer.stop()
        ids = [e.entity_id for e in events(store)]
        assert len(ids) == len(set(ids)) == 30
        assert '["2026-01-01","EUR"]' in ids  # the key in primary key order
        assert "snapshot billing.rates" in capsys.readouterr().err
    finally:
        store.close()


def test_position_keys_fit_the_store() -> None:
    assert progress_key("billing", "customers") == "billing#snapshot:customers"
    long = progress_key("b" * 64, "t" * 100)
    assert len(long) <= 64 and long != progress_key("b" * 64, "t" * 99)
    assert position_key("billing", "#snapshot") == marker_key("billing")
