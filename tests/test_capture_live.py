"""Live capture through the real daemon: a separate process writes the billing
database; the events show up through the HTTP API."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cdc.poller import LOOK_ROWS, SchemaChanged, ShadowPoller
from cdc.service import CaptureService
from cdc.watcher import DatabaseWatcher
from config import Config, load_config
from demo.simulator import create_schema
from storage.query import EventQuery
from storage.store import Appended, AppendRequest, AuditStore
from storage.writer import GroupCommitWriter
from storage.writer_process import ProcessWriter, WriterLost
from tests.capture_support import capturing, run_sql, wait_for
from tests.daemon import ROOT, free_port, run_cli, running_daemon

DEMO_TABLES = [
    {
        "table": "customers",
        "entity": "customer",
        "actor": "id",
        "ignore": ["updated_at"],
        "mask": ["card_number"],
        "actions": [{"action": "customer.deactivated", "when": {"status": "deactivated"}}],
    },
    {"table": "resource_actions", "entity": "resource_action", "actor": "customer_id"},
    {"table": "charges", "entity": "charge", "actor": "customer_id"},
]


def demo_config(tmp_path: Path, port: int, **capture: Any) -> Path:
    document = {
        "store": {"url": "sqlite:///audit.db"},
        "server": {"host": "127.0.0.1", "port": port},
        "capture": {"poll_interval": 1.0, "snapshot": False, **capture},
        "sources": [{"name": "billing", "database": "billing.db", "tables": DEMO_TABLES}],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def captured_billing(tmp_path: Path, changes: int) -> Config:
    """The demo's config, its billing database with triggers, and `changes` made to it
    by the simulator (a process of its own)."""
    config = load_config(demo_config(tmp_path, free_port()))
    create_schema(tmp_path / "billing.db")
    assert run_cli("install-triggers", config=tmp_path / "config.yaml").returncode == 0
    simulate(tmp_path / "billing.db", changes)
    return config


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def simulate(database: Path, count: int, seed: int = 3) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "demo.simulator",
            str(database),
            "--rate",
            "0",
            "--count",
            str(count),
            "--seed",
            str(seed),
        ],
        check=True,
        cwd=ROOT,
        timeout=60,
    )


def test_changes_by_another_process_arrive_through_the_api(tmp_path: Path) -> None:
    port = free_port()
    config = demo_config(tmp_path, port)
    create_schema(tmp_path / "billing.db")
    with running_daemon(config, port):
        simulate(tmp_path / "billing.db", 300)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            page = get_json(f"http://127.0.0.1:{port}/v1/events?stream=billing&limit=1000")
            if len(page["events"]) >= 300:
                break
            time.sleep(0.05)
        events = page["events"]
        kinds = {(e["entity"], e["action"]) for e in events}
        assert ("customer", "customer.created") in kinds
        assert ("resource_action", "resource_action.created") in kinds
        assert ("charge", "charge.created") in kinds
        assert ("customer", "customer.deactivated") in kinds
        assert all(
            e["after"] is None or e["after"].get("card_number") in (None, "***")
            for e in events
            if e["entity"] == "customer"
        )
        charge = next(e for e in events if e["entity"] == "charge")
        assert charge["actor"]["id"] == str(charge["after"]["customer_id"])

        streams = {s["name"]: s for s in get_json(f"http://127.0.0.1:{port}/v1/streams")["streams"]}
        billing = streams["billing"]
        assert billing["head_seq"] == len(events) and billing["capturing"] is True
        assert billing["backlog"] == 0 and billing["untranslatable"] == 0
        assert billing["last_capture_at"].endswith("Z")
        assert get_json(f"http://127.0.0.1:{port}/readyz")["status"] == "ready"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            metrics = response.read().decode()
        assert 'auditor_capture_backlog{source="billing"}' in metrics

    raw = (tmp_path / "audit.db").read_bytes()
    conn = sqlite3.connect(tmp_path / "billing.db")
    cards = [row[0] for row in conn.execute("SELECT card_number FROM customers")]
    conn.close()
    assert cards and not any(card.encode() in raw for card in cards)


async def test_fallback_poll_captures_without_file_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The injected fault: a file system that never reports a write."""
    monkeypatch.setattr("cdc.watcher.DatabaseWatcher.watch", lambda *args: None)
    config = load_config(demo_config(tmp_path, free_port(), poll_interval=0.3))
    create_schema(tmp_path / "billing.db")
    store = AuditStore.open(config.store.url)
    writer = GroupCommitWriter(store)
    await writer.start()
    service = CaptureService(config, store, writer)
    await service.start()
    try:
        simulate(tmp_path / "billing.db", 20)
        deadline = time.monotonic() + 5
        count = 0
        while time.monotonic() < deadline and count < 20:
            await asyncio.sleep(0.1)
            count = len(store.query(EventQuery(stream="billing", limit=1000)).events)
        assert count == 20
    finally:
        await service.stop()
        await writer.stop()
        store.close()


@pytest.mark.parametrize("journal_mode", ["wal", "delete"])
@pytest.mark.parametrize("watcher", ["inotify on the loop", "watchdog observer"])
async def test_file_events_alone_wake_capture_for_each_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, journal_mode: str, watcher: str
) -> None:
    """One change at a time, written by another process, the fallback poll an hour
    away: each is stored through file events alone (WAL, and a rollback journal,
    whose commit ends with the journal's deletion), read on the event loop or, where
    inotify is missing (here: made to be), by watchdog's observer threads."""
    if watcher == "watchdog observer":
        monkeypatch.setattr("cdc.watcher._LoopInotify.open", lambda *args: None)
    config_path = demo_config(tmp_path, free_port(), poll_interval=3600)
    database = tmp_path / "billing.db"
    create_schema(database)
    run_sql(database, f"PRAGMA journal_mode = {journal_mode};")
    async with capturing(config_path) as (_, store):

        def stored() -> int:
            return len(store.query(EventQuery(entity="charge", limit=100)).events)

        for n in range(1, 4):
            run_sql(
                database,
                "INSERT INTO charges (customer_id, amount_cents, currency, description,"
                f" created_at) VALUES (1, {n}, 'EUR', 'test', '2026-11-28T12:00:00Z');",
            )
            await wait_for(lambda: stored() >= n, f"change {n} to be stored", seconds=5)  # noqa: B023
            assert stored() == n


async def test_writes_to_other_files_in_the_folder_raise_next_to_no_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """inotify watches the database's files for writes, and its folder only for files
    appearing and going: 50 commits of another process to a store beside the billing
    database raise a handful of events for the daemon's loop to read and drop (its
    WAL and shared-memory files made and deleted: 4 here), not one for each write
    (watching the folder for writes: 67-80 here). Writes to the watched database,
    its WAL deleted and made anew in between, still wake it."""
    from watchdog.observers.inotify_c import InotifyFD

    events: list[tuple[int, int, int, bytes]] = []
    parse = InotifyFD._parse_event_buffer

    def counting(buffer: bytes) -> Any:
        for event in parse(buffer):
            events.append(event)
            yield event

    monkeypatch.setattr(InotifyFD, "_parse_event_buffer", staticmethod(counting))
    database = tmp_path / "billing.db"
    create_schema(database)  # WAL; its last connection closed, so no -wal file now
    neighbour = tmp_path / "audit.db"
    run_sql(neighbour, "PRAGMA journal_mode = WAL; CREATE TABLE t (x);")
    wakes: list[float] = []
    watcher = DatabaseWatcher()
    watcher.watch(database, lambda: wakes.append(time.monotonic()))
    watcher.start()
    try:
        # From a thread, so that the loop reads events as they come (the kernel merges
        # repeats of an event that waits unread).
        commits = "".join(f"INSERT INTO t VALUES ({i});" for i in range(50))
        await asyncio.to_thread(run_sql, neighbour, commits)
        await asyncio.sleep(0.3)
        assert wakes == []
        assert len(events) < 10, events

        for n in range(1, 3):  # each process's last close deletes the WAL: made anew
            run_sql(
                database,
                "INSERT INTO charges (customer_id, amount_cents, currency, description,"
                f" created_at) VALUES (1, {n}, 'EUR', 'test', '2026-11-28T12:00:00Z');",
            )
            await wait_for(lambda: len(wakes) >= n, f"a wake-up for write {n}", seconds=5)  # noqa: B023
            await asyncio.sleep(0.1)
    finally:
        watcher.stop()


async def test_a_cancelled_drain_lets_its_thread_finish_before_the_connection_closes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The injected fault: a prune still running in its thread when capture stops.
    Closing the poller's connection under a running statement crashed the daemon
    (sqlite3 segfault on shutdown)."""
    original = ShadowPoller._tidy
    tidying, finished = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def slow_tidy(self: ShadowPoller) -> None:
        connection = self._connection()
        tidying.set()
        time.sleep(0.3)  # the drain is cancelled and the poller closed meanwhile
        try:
            connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
            original(self)
        except BaseException as exc:
            errors.append(exc)
            raise
        finally:
            finished.set()

    monkeypatch.setattr(ShadowPoller, "_tidy", slow_tidy)
    config = captured_billing(tmp_path, 5)
    store = AuditStore.open(config.store.url)
    writer = GroupCommitWriter(store)
    await writer.start()
    poller = ShadowPoller(config.sources[0], writer, 0, 1000)
    try:
        drain = asyncio.create_task(poller.drain())
        assert await asyncio.to_thread(tidying.wait, 5)
        drain.cancel()
        with pytest.raises(asyncio.CancelledError):
            await drain
        ended_first = finished.is_set()
        poller.close()
    finally:
        await writer.stop()
        store.close()
    assert await asyncio.to_thread(finished.wait, 5)
    assert errors == []
    assert ended_first


def test_install_and_uninstall_commands_leave_sqlite_master_as_it_was(tmp_path: Path) -> None:
    config = demo_config(tmp_path, free_port())
    create_schema(tmp_path / "billing.db")
    simulate(tmp_path / "billing.db", 50)

    def snapshot() -> tuple[list[Any], list[Any]]:
        conn = sqlite3.connect(tmp_path / "billing.db")
        master = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name")
        schema = master.fetchall()
        data = conn.execute("SELECT * FROM customers ORDER BY id").fetchall()
        conn.close()
        return schema, data

    before = snapshot()
    assert run_cli("install-triggers", config=config).returncode == 0
    assert run_cli("install-triggers", config=config).returncode == 0
    installed = snapshot()
    assert len(installed[0]) > len(before[0])
    status = run_cli("status", config=config)
    assert status.returncode == 0
    assert "billing: 0 events, backlog 0, lag 0 s, no checkpoint yet" in status.stdout
    assert run_cli("uninstall-triggers", config=config).returncode == 0
    assert snapshot() == before


def test_install_on_a_missing_database_is_a_usage_error(tmp_path: Path) -> None:
    config = demo_config(tmp_path, free_port())
    result = run_cli("install-triggers", config=config)
    assert result.returncode == 2 and "billing.db" in result.stderr


def test_demo_command_simulates_captures_serves_and_stops_cleanly(tmp_path: Path) -> None:
    """`run_daemon.py demo`: creates the billing database, its simulator process
    changes it, the changes arrive through the API; SIGTERM stops both."""
    port = free_port()
    config = demo_config(tmp_path, port)
    with running_daemon(config, port, "demo") as daemon:
        deadline = time.monotonic() + 20
        events: list[Any] = []
        while time.monotonic() < deadline and len(events) < 5:
            time.sleep(0.2)
            events = get_json(f"http://127.0.0.1:{port}/v1/events?stream=billing")["events"]
        assert len(events) >= 5
        assert {e["entity"] for e in events} <= {"customer", "resource_action", "charge"}
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=20) == 0
    log = (tmp_path / "daemon.log").read_text()
    simulator_pid = int(log.split("(pid ", 1)[1].split(")", 1)[0])
    # The daemon waits for its simulator, so the process is gone, not a zombie.
    assert not Path(f"/proc/{simulator_pid}").exists()


def _shadow(database: Path) -> tuple[int, int]:
    """(rows in the shadow table, its newest seq)."""
    conn = sqlite3.connect(database)
    try:
        count, newest = conn.execute('SELECT count(*), max("seq") FROM _auditor_changes').fetchone()
        return int(count), int(newest or 0)
    finally:
        conn.close()


async def test_stored_shadow_rows_are_pruned_in_chunks_and_when_idle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pruning is a write on the billing database: not after every small drain, but once
    `PRUNE_ROWS` have gathered or `PRUNE_SECONDS` after the last prune (idle wake-ups
    of the fallback poll get there)."""
    monkeypatch.setattr("cdc.poller.PRUNE_ROWS", 60)
    monkeypatch.setattr("cdc.poller.PRUNE_SECONDS", 3.0)
    database = tmp_path / "billing.db"
    create_schema(database)
    config = load_config(demo_config(tmp_path, free_port(), poll_interval=0.2))
    store = AuditStore.open(config.store.url)
    writer = GroupCommitWriter(store)
    await writer.start()
    service = CaptureService(config, store, writer)
    await service.start()

    def captured() -> bool:
        return store.capture_position("billing") == _shadow(database)[1]

    def pruned() -> bool:
        return _shadow(database)[0] <= 1  # the newest row always stays

    try:
        simulate(database, 20)
        await wait_for(captured, "the first changes to be stored")
        await wait_for(pruned, "the first changes to be pruned")
        simulate(database, 10, seed=4)
        await wait_for(captured, "ten more changes to be stored")
        # Fewer than PRUNE_ROWS, and the last prune was under PRUNE_SECONDS ago: they stay…
        assert _shadow(database)[0] >= 10
        # …until PRUNE_SECONDS have passed and a (fallback) wake-up prunes them.
        await wait_for(pruned, "the idle prune", seconds=10)
        simulate(database, 70, seed=5)
        await wait_for(captured, "70 more changes to be stored")
        await asyncio.sleep(0.3)
        # PRUNE_ROWS gathered: pruned without waiting PRUNE_SECONDS (at most the rows of
        # the drain after that prune are left).
        assert _shadow(database)[0] <= 70 - 60 + 1
    finally:
        await service.stop()
        await writer.stop()
        store.close()


class _FlakyWriter:
    """The real group-commit writer, except that one append fails: after its commit
    (a store writer process that died holding it: committed, but nobody can say) or
    before it."""

    def __init__(self, writer: GroupCommitWriter, *, commit_first: bool) -> None:
        self._writer = writer
        self._commit_first = commit_first
        self.failed = False
        self.commits = 0

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def append(self, request: AppendRequest) -> list[Appended]:
        if self.failed:
            return await self._writer.append(request)
        self.failed = True
        if self._commit_first:
            await self._writer.append(request)
        raise WriterLost("the store writer stopped during this commit")


def _stored_charges(store: AuditStore) -> list[tuple[int, str]]:
    page = store.query(EventQuery(stream="billing", limit=1000, order="asc"))
    return [(e.seq, e.id) for e in page.events]


@pytest.mark.parametrize("commit_first", [True, False], ids=["committed", "not-committed"])
async def test_a_failed_append_is_stored_once_from_the_position_the_store_holds(
    tmp_path: Path, commit_first: bool
) -> None:
    """An append that fails may have committed (its position with it) or not. The next
    drain starts from the position the store holds: a committed batch is not stored
    again (before, every retry failed on the events' unique ids, and capture stopped
    for good); one that was not is stored, without waiting for a new billing commit."""
    config = captured_billing(tmp_path, 20)
    store = AuditStore.open(config.store.url)
    writer = GroupCommitWriter(store)
    await writer.start()
    flaky = _FlakyWriter(writer, commit_first=commit_first)
    poller = ShadowPoller(
        config.sources[0],
        flaky,
        0,
        1000,
        stored_position=lambda: store.capture_position("billing"),
    )
    try:
        with pytest.raises(WriterLost):
            await poller.drain()
        first = _stored_charges(store)
        assert len(first) == (20 if commit_first else 0)
        await poller.drain()  # no billing commit in between
        stored = _stored_charges(store)
        assert len(stored) == 20 and len({id_ for _, id_ in stored}) == 20
        assert [seq for seq, _ in stored] == list(range(1, 21))
        simulate(tmp_path / "billing.db", 5, seed=4)
        await poller.drain()
        assert len(_stored_charges(store)) == 25
        assert poller.stats.position == store.capture_position("billing")
    finally:
        poller.close()
        await writer.stop()
        store.close()


@contextlib.asynccontextmanager
async def polling(
    config: Config,
) -> AsyncIterator[tuple[AuditStore, GroupCommitWriter, ShadowPoller]]:
    """A store, its group-commit writer and a poller of the config's first source
    (batches of 1,000), closed afterwards."""
    store = AuditStore.open(config.store.url)
    writer = GroupCommitWriter(store)
    await writer.start()
    poller = ShadowPoller(config.sources[0], writer, 0, 1000)
    try:
        yield store, writer, poller
    finally:
        poller.close()
        await writer.stop()
        store.close()


async def test_a_drain_given_a_stale_schema_version_reads_and_stores_nothing(
    tmp_path: Path,
) -> None:
    """The capture task checks the schema version in the drain's first read: a migration
    since the version it knows stops the drain before anything is read, so the task can
    follow the migration first; the version it knows lets the drain through."""
    async with polling(captured_billing(tmp_path, 20)) as (store, writer, poller):
        known = poller.schema_version()
        run_sql(tmp_path / "billing.db", "ALTER TABLE customers ADD COLUMN fax TEXT")
        with pytest.raises(SchemaChanged):
            await poller.drain(schema=known)
        assert _stored_charges(store) == [] and poller.stats.position == 0
        assert writer.commits == 0
        assert await poller.drain(schema=poller.schema_version()) == 20
        assert [seq for seq, _ in _stored_charges(store)] == list(range(1, 21))


async def test_a_backlog_found_by_the_first_look_is_stored_in_one_full_batch(
    tmp_path: Path,
) -> None:
    """The first read of a drain runs on the loop and takes at most `LOOK_ROWS` rows;
    finding more, it leaves them to the worker thread's full batch instead of
    committing a small batch of its own first."""
    async with polling(captured_billing(tmp_path, 150)) as (store, writer, poller):
        consumed = await poller.drain()
        assert consumed > LOOK_ROWS
        assert writer.commits == 1
        assert len(_stored_charges(store)) > 0
        assert poller.stats.position == store.capture_position("billing")


_HOLD_LOCK = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
conn.execute("UPDATE customers SET name = 'Locked Writer' WHERE id = 1")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""


async def test_a_billing_writer_holding_its_lock_never_stalls_the_event_loop(
    tmp_path: Path,
) -> None:
    """A drain's first read runs on the event loop, on a connection that never waits for
    a lock. When the billing service holds a rollback journal's exclusive lock (no WAL),
    that read gives way to the worker thread, which waits for the lock: the loop goes on
    meanwhile, and the change committed under the lock is stored once it is released."""
    config = captured_billing(tmp_path, 5)
    database = tmp_path / "billing.db"
    run_sql(database, "PRAGMA journal_mode = DELETE")
    holder: asyncio.subprocess.Process | None = None
    async with polling(config) as (store, _, poller):
        try:
            assert await poller.drain() == 5
            holder = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _HOLD_LOCK, str(database), "1.0", stdout=subprocess.PIPE
            )
            assert holder.stdout is not None and await holder.stdout.readline() == b"locked\n"
            gaps: list[float] = []

            async def tick() -> None:
                last = time.monotonic()
                while True:
                    await asyncio.sleep(0.005)
                    now = time.monotonic()
                    gaps.append(now - last)
                    last = now

            ticker = asyncio.create_task(tick())
            started = time.monotonic()
            consumed = await poller.drain()
            waited = time.monotonic() - started
            ticker.cancel()
            assert await asyncio.wait_for(holder.wait(), 30) == 0
            assert consumed == 1 and waited >= 0.5  # it waited for the lock…
            assert max(gaps) < 0.5  # …in the worker thread, not on the loop
            updated = store.query(
                EventQuery(entity="customer", entity_id="1", event_types=("UPDATE",))
            )
            assert [e.after["name"] for e in updated.events if e.after] == ["Locked Writer"]
        finally:
            if holder is not None and holder.returncode is None:
                holder.kill()
                await holder.wait()


@contextlib.asynccontextmanager
async def two_writers(
    config: Config, batch_size: int
) -> AsyncIterator[tuple[AuditStore, GroupCommitWriter, ProcessWriter, ShadowPoller]]:
    """A store, capture's thread writer, a running store writer process and a poller
    that commits caught-up batches through the process, closed afterwards."""
    store = AuditStore.open(config.store.url, shared=True)
    thread = GroupCommitWriter(store)
    process = ProcessWriter(store, config.store.url)
    await thread.start()
    await process.start()
    poller = ShadowPoller(config.sources[0], thread, 0, batch_size, caught_up_writer=process)
    try:
        process.warm()
        await wait_for(lambda: process.ready, "the store writer process")
        yield store, thread, process, poller
    finally:
        poller.close()
        await process.stop()
        await thread.stop()
        store.close()


async def test_a_caught_up_read_commits_through_the_store_writer_process(tmp_path: Path) -> None:
    """A backlog's full batches go through capture's thread writer; the batch of the read
    that caught up, through the store writer process (its commit does not wait for the
    API at the daemon's GIL)."""
    async with two_writers(captured_billing(tmp_path, 25), 10) as (store, thread, process, poller):
        assert await poller.drain() == 25
        assert (thread.commits, process.commits) == (2, 1)  # 10 + 10, then 5
        assert process.pid is not None
        assert [seq for seq, _ in _stored_charges(store)] == list(range(1, 26))
        simulate(tmp_path / "billing.db", 3, seed=4)
        assert await poller.drain() == 3
        assert (thread.commits, process.commits) == (2, 2)
        assert poller.stats.position == store.capture_position("billing")


async def test_capture_starts_a_store_writer_process_that_died_again(tmp_path: Path) -> None:
    """The store writer process is killed: the next caught-up batch commits through the
    thread and asks for the process again, and the batches after it go through the new
    one, with no post needed to restart it."""
    async with two_writers(captured_billing(tmp_path, 5), 1000) as (store, thread, process, poller):
        assert await poller.drain() == 5
        first = process.pid
        assert first is not None and (thread.commits, process.commits) == (0, 1)
        os.kill(first, signal.SIGKILL)
        await wait_for(lambda: not process.ready, "the store writer process to die")
        simulate(tmp_path / "billing.db", 3, seed=4)
        assert await poller.drain() == 3
        assert (thread.commits, process.commits) == (1, 1)
        await wait_for(lambda: process.ready, "a new store writer process")
        assert process.pid != first
        simulate(tmp_path / "billing.db", 3, seed=5)
        assert await poller.drain() == 3
        assert (thread.commits, process.commits) == (1, 2)
        assert poller.stats.position == store.capture_position("billing")


def test_a_capturing_daemon_starts_its_store_writer_process_with_capture(tmp_path: Path) -> None:
    """Before any post: capture's first caught-up batch must not wait for it to start."""
    port = free_port()
    config = demo_config(tmp_path, port)
    create_schema(tmp_path / "billing.db")
    with running_daemon(config, port) as daemon:
        deadline = time.monotonic() + 20
        children: list[str] = []
        while time.monotonic() < deadline and not children:
            time.sleep(0.1)
            children = [
                cmdline
                for stat in Path("/proc").glob("[0-9]*/stat")
                if _parent(stat) == daemon.pid
                and "storage.writer_process" in (cmdline := _cmdline(stat.parent))
            ]
        assert children, "no store writer process started"
        simulate(tmp_path / "billing.db", 5)
        deadline = time.monotonic() + 20
        events: list[Any] = []
        while time.monotonic() < deadline and len(events) < 5:
            time.sleep(0.1)
            events = get_json(f"http://127.0.0.1:{port}/v1/events?stream=billing")["events"]
        assert len(events) == 5


def _parent(stat: Path) -> int | None:
    try:
        return int(stat.read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _cmdline(process: Path) -> str:
    try:
        return (process / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
