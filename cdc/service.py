"""Capture every configured source: install triggers, poll, follow schema changes.

`CaptureService` owns, per source, a `ShadowPoller` and a task that drains it
whenever it is woken: by watchdog (the database file or its WAL was written),
by the APScheduler fallback job every `capture.poll_interval` seconds, or at
start. Before each drain reads anything it compares `PRAGMA schema_version`
with the last one it saw (in the drain's first read, unless a snapshot or a
reconciliation waits to run first); when the billing service migrated a
captured table (added, renamed or dropped a column, rebuilt the table), the
triggers are regenerated, and where they had gone missing (or were
regenerated for a new shape) the table is reconciled, so a gap in capture can
never silently disagree with the billing data. The snapshot of a fresh source
and the reconciliations run in the source's task (`cdc.catchup`), never in
`start`, so they do not delay the API.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from cdc import installer
from cdc.blocking import run_blocking
from cdc.catchup import CatchUp
from cdc.installer import InstallState
from cdc.poller import CaptureStats, SchemaChanged, ShadowPoller
from cdc.triggers import SHADOW_TABLE
from cdc.watcher import DatabaseWatcher
from config import Config, SourceConfig
from storage.store import AuditStore
from storage.writer import Writer
from storage.writer_process import ProcessWriter

log = logging.getLogger(__name__)

GapHandler = Callable[["SourceCapture", list[str]], Awaitable[None]]
"""Called after the poller has caught up, with the tables whose capture may have had a gap:
their triggers were missing, or were regenerated for a new shape or new options (changes
made before that were captured with the old columns, or not at all)."""


def install_source(source: SourceConfig, position: int) -> tuple[list[str], list[str]]:
    """Make the source's triggers current. Returns (tables (re)installed, tables whose
    triggers were missing, i.e. where changes may have gone uncaptured)."""
    changed, missing, _ = install_source_at(source, position)
    return changed, missing


def install_source_at(source: SourceConfig, position: int) -> tuple[list[str], list[str], int]:
    """`install_source`, and the schema version it leaves. The check, the install and the
    version are ONE write transaction: a migration that drops triggers just before or
    just after can never slip between them unnoticed."""
    conn = installer.connect(source.database)
    try:
        with installer.write_transaction(conn):
            missing = [
                t.table
                for t in source.tables
                if installer.installed_state(conn, t) is not InstallState.CURRENT
                and not _has_triggers(conn, t.table)
            ]
            changed = installer.install_in_transaction(conn, source.tables, next_seq=position + 1)
            version = installer.schema_version(conn)
    finally:
        conn.close()
    return changed, missing, version


def _has_triggers(conn: sqlite3.Connection, table: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ? "
        "AND name LIKE '\\_auditor\\_%' ESCAPE '\\'",
        (table,),
    ).fetchone()
    return row is not None


class SourceCapture:
    """One source: its poller, its wake-up event and the task that drains it."""

    def __init__(
        self,
        source: SourceConfig,
        store: AuditStore,
        writer: Writer,
        batch_size: int,
        caught_up_writer: ProcessWriter | None = None,
    ) -> None:
        self.source = source
        self.store = store
        self.writer = writer
        self.poller = ShadowPoller(
            source,
            writer,
            store.capture_position(source.name),
            batch_size,
            caught_up_writer=caught_up_writer,
            stored_position=lambda: store.capture_position(source.name),
        )
        self._wake = asyncio.Event()
        self._schema_version: int | None = None
        self._task: asyncio.Task[None] | None = None
        self.on_gap: GapHandler | None = None
        self.before_drain: Callable[[SourceCapture], Awaitable[None]] | None = None
        """Work for the capture task before each drain (a snapshot, reconciliations)."""
        self.work_waits: Callable[[], bool] = lambda: False
        """Whether `before_drain` has work to do (set with it)."""
        self.running = False

    @property
    def stats(self) -> CaptureStats:
        return self.poller.stats

    def wake(self) -> None:
        self._wake.set()

    async def attach(self) -> None:
        """Install or refresh the triggers, then catch up with what is waiting."""
        changed, missing, version = await run_blocking(
            install_source_at, self.source, self.poller.stats.position
        )
        if changed:
            log.info("source %s: capture triggers installed on %s", self.source.name, changed)
        self._schema_version = version
        await self.poller.drain()
        gaps = [t.table for t in self.source.tables if t.table in missing or t.table in changed]
        if gaps and self.on_gap is not None:
            await self.on_gap(self, gaps)

    def _read_schema_version(self) -> int:
        # The poller's own connection: this runs before every drain, on every wake-up.
        return self.poller.schema_version()

    def _shadow_table_exists(self) -> bool:
        conn = installer.connect(self.source.database)
        try:
            found = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (SHADOW_TABLE,)
            ).fetchone()
        finally:
            conn.close()
        return found is not None

    async def _follow_schema(self) -> None:
        version = await run_blocking(self._read_schema_version)
        if version == self._schema_version:
            return
        log.info(
            "source %s: schema changed (version %s → %s); checking triggers",
            self.source.name,
            self._schema_version,
            version,
        )
        # Without the shadow table (uninstall-triggers) there is nothing to drain, and
        # trying would fail before the attach that brings capture back.
        if await run_blocking(self._shadow_table_exists):
            await self.poller.drain()
        await self.attach()

    async def _drain(self) -> None:
        """Follow a migration, run the work waiting before the drain, then drain.

        When nothing waits and the schema version is known, the drain's first read
        checks the version as it reads (`ShadowPoller.drain(schema=…)`): the check's
        own trip to the worker thread was 0.9 ms (median) of a 5.2 ms wake-up at 500
        changes/s with the API polled (`bench/analysis.md`, session 14, item 62). A
        changed version stops that read before it reads anything, and the migration
        is followed as before."""
        if self._schema_version is not None and not self.work_waits():
            try:
                await self.poller.drain(schema=self._schema_version)
                return
            except SchemaChanged:
                pass
        await self._follow_schema()
        if self.before_drain is not None:
            await self.before_drain(self)
        await self.poller.drain()

    async def run(self) -> None:
        self.running = True
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                try:
                    await self._drain()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception(
                        "source %s: capture failed; retrying on the next poll", self.source.name
                    )
        finally:
            self.running = False

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name=f"capture-{self.source.name}")
        self.wake()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.poller.close()


class CaptureService:
    """Every source of the config, woken by file events and a fallback schedule."""

    def __init__(
        self,
        config: Config,
        store: AuditStore,
        writer: Writer,
        caught_up_writer: ProcessWriter | None = None,
    ) -> None:
        """`writer` commits capture's batches; `caught_up_writer`, when given, those of
        reads that caught up (`ShadowPoller.poll_once`)."""
        self.config = config
        self.sources = [
            SourceCapture(source, store, writer, config.capture.batch_size, caught_up_writer)
            for source in config.sources
        ]
        self.catch_ups = [
            CatchUp(capture, snapshot=config.capture.snapshot, batch_size=config.capture.batch_size)
            for capture in self.sources
        ]
        self._watcher = DatabaseWatcher()
        self._scheduler: AsyncIOScheduler | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for capture, catch_up in zip(self.sources, self.catch_ups, strict=True):
            await catch_up.attach_first()
            self._watcher.watch(capture.source.database, capture.wake)
            capture.start()
        self._watcher.start()
        self._scheduler = AsyncIOScheduler(event_loop=loop)
        self._scheduler.add_job(
            self.wake_all,
            "interval",
            seconds=self.config.capture.poll_interval,
            coalesce=True,
            max_instances=1,
            id="fallback-poll",
        )
        self._scheduler.start()

    def wake_all(self) -> None:
        for capture in self.sources:
            capture.wake()

    async def stop(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None
        self._watcher.stop()
        for capture in self.sources:
            await capture.stop()

    @property
    def running(self) -> bool:
        return all(capture.running for capture in self.sources)

    def status(self) -> dict[str, dict[str, Any]]:
        """Per source, what `/v1/streams`, `/metrics` and `/readyz` show about capture."""
        now = datetime.now(UTC)
        report: dict[str, dict[str, Any]] = {}
        for capture in self.sources:
            stats = capture.stats
            lag = 0.0
            if stats.oldest_pending_at:
                with contextlib.suppress(ValueError):
                    oldest = datetime.fromisoformat(stats.oldest_pending_at)
                    lag = max(0.0, (now - oldest.astimezone(UTC)).total_seconds())
            report[capture.source.name] = {
                "running": capture.running,
                "position": stats.position,
                "backlog": stats.backlog,
                "lag_seconds": round(lag, 3),
                "last_capture_at": stats.last_capture_at,
                "untranslatable": len(stats.untranslatable),
            }
        return report
