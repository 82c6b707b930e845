"""Move one source's shadow rows into the audit store, exactly once.

`ShadowPoller.poll_once` reads a batch of shadow rows after the source's
position, translates them, and appends the events *together with the new
position* in one store transaction (through the group-commit writer). Only
then does it prune the shadow table, in short transactions of its own. A crash
anywhere in between is harmless: on restart the position says which rows are
already stored, and those are pruned without being stored again.

A row that cannot be translated is kept in the shadow table, logged and
counted, and the position moves past it, so it never blocks the rows behind
it. Idle polls are cheap: `PRAGMA data_version` tells whether anyone has
committed to the billing database since the last look.

Billing-database work is blocking sqlite3 code; it runs in a worker thread so
the event loop keeps serving the API. The exception is a drain's first read of
at most `LOOK_ROWS` rows, on a connection that never waits for a lock (see
`poll_once`).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from cdc import installer, shadow
from cdc.blocking import run_blocking
from cdc.translate import translate
from config import SourceConfig, TableConfig
from storage.store import AppendRequest, CapturePosition
from storage.writer import Writer
from storage.writer_process import ProcessWriter

log = logging.getLogger(__name__)

LOOK_ROWS = 64
"""The most rows the first read of a drain takes on the event loop (see `poll_once`)."""
RESTART_SECONDS = 1.0
"""How often a caught-up read may ask for the store writer process to start again."""
PRUNE_ROWS = 1000
"""Prune once this many stored rows have gathered in the shadow table…"""
PRUNE_SECONDS = 1.0
"""…or this long after the last prune (the fallback poll's wake-ups get there when idle)."""


class SchemaChanged(Exception):
    """`drain(schema=…)` found the billing schema changed since that version: it read
    nothing, so the caller can follow the migration before anything is stored."""


@dataclass
class CaptureStats:
    """What `/v1/streams`, `/metrics` and `status` show about a source."""

    position: int = 0
    backlog: int = 0
    captured: int = 0
    last_capture_at: datetime | None = None
    oldest_pending_at: str | None = None
    """Change time of the oldest shadow row not yet stored (None when none waits)."""
    untranslatable: dict[int, str] = field(default_factory=dict)
    """Shadow seq → why it could not be translated (kept in the shadow table)."""


class ShadowPoller:
    """Polls one source's shadow table into the audit store."""

    def __init__(
        self,
        source: SourceConfig,
        writer: Writer,
        position: int,
        batch_size: int,
        *,
        caught_up_writer: ProcessWriter | None = None,
        stored_position: Callable[[], int] | None = None,
    ) -> None:
        self.source = source
        self._writer = writer
        self._caught_up_writer = caught_up_writer
        """Where the batch of a read that caught up goes, when given (see `poll_once`)."""
        self._stored_position = stored_position
        """The position the store holds (worker thread), read again after a failed append."""
        self._unsure = False
        """An append failed: it may have committed (its position with it) or not."""
        self._restarted_at = -RESTART_SECONDS
        self._batch_size = batch_size
        self._tables: Mapping[str, TableConfig] = {t.table: t for t in source.tables}
        self._conn: sqlite3.Connection | None = None
        """The worker thread's connection (reads, prunes)."""
        self._loop_conn: sqlite3.Connection | None = None
        """The event loop's connection: reads only, and never waits for a lock."""
        self._data_versions: dict[int, int] = {}
        """`PRAGMA data_version` each connection saw last (per connection: its values
        mean nothing to another)."""
        self._more = False
        """The last read hit its limit: more rows may be waiting right behind it."""
        self._pruned_up_to = -1
        self._pruned_at = 0.0
        self._behind: tuple[int, str | None] | None = None
        """What the last caught-up read left behind its batch: (backlog, oldest change)."""
        self.stats = CaptureStats(position=position)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = installer.connect(self.source.database)
        return self._conn

    def _loop_connection(self) -> sqlite3.Connection:
        if self._loop_conn is None:
            self._loop_conn = installer.connect(self.source.database, busy_timeout_ms=0)
        return self._loop_conn

    def schema_version(self) -> int:
        """The billing database's `PRAGMA schema_version` (changes with every migration)."""
        return installer.schema_version(self._connection())

    def close(self) -> None:
        self._close_loop_connection()
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._data_versions.clear()

    def _close_loop_connection(self) -> None:
        if self._loop_conn is not None:
            self._data_versions.pop(id(self._loop_conn), None)
            self._loop_conn.close()
            self._loop_conn = None

    def _changed_since_last_look(self, conn: sqlite3.Connection) -> bool:
        version = int(conn.execute("PRAGMA data_version").fetchone()[0])
        changed = version != self._data_versions.get(id(conn))
        self._data_versions[id(conn)] = version
        return changed

    async def poll_once(
        self, *, force: bool = False, up_to: int | None = None, schema: int | None = None
    ) -> int:
        """Store one batch; returns how many shadow rows it consumed (0 when idle).

        A batch read by a read that caught up (fewer rows than its limit: changes
        someone may be waiting to see) goes through `caught_up_writer`, the store
        writer process, where there is one and it runs (while it starts, the
        thread takes them: waiting for it held back the first changes for a third
        of a second; if it died, it is started again, `_restart`). Its commit
        does not take turns with the API at the daemon's GIL: capture latency at
        500 changes/s with the API polled (`python -m bench.ab ... latency`, two
        runs of six alternating rounds), p50 medians 18.5 -> 16.0 ms and 20.0 ->
        20.1 ms, p99 39.5 -> 39.1 and 40.3 -> 39.4 ms. A backlog's full batches
        stay on `writer`, the daemon's thread: every batch through the process
        cost end to end 0.46-0.47 of the raw ceiling against 0.51
        (`bench/analysis.md`, session 13).

        With `schema`, the read first checks that the billing database's schema
        version is still that one, and raises `SchemaChanged` (nothing read) if not.

        The first read of a drain (not forced, no `up_to`) runs on the event loop,
        taking at most `LOOK_ROWS` rows, on a connection that never waits for a
        lock: in WAL mode it is a few reads of pages in memory, and the trip to the
        worker thread cost more than the read (about 1 ms of a 3.7 ms wake-up at
        500 changes/s with the API polled; `bench/analysis.md`, session 14). Where
        it cannot (a writer holds a rollback journal's lock, any error), or when it
        finds more than `LOOK_ROWS` rows (a backlog, read in full batches), the
        read is done again in the worker thread.
        """
        self._behind = None
        rows = None
        if not force and up_to is None and not self._unsure:
            try:
                rows = self._read(False, None, schema, on_loop=True)
            except sqlite3.Error:
                self._close_loop_connection()
                force = True  # the loop's look may have taken the change's news
            if rows is not None and self._more:
                # A backlog: read again in the worker thread as one full batch, not a
                # small batch and its own commit first.
                rows, force = None, True
        if rows is None:
            rows = await run_blocking(self._read, force, up_to, schema)
        if not rows:
            self._show_behind()
            return 0
        events, failures = translate(rows, self._tables, self.source.name)
        position = rows[-1].seq
        writer = self._writer
        caught_up = self._caught_up_writer
        if caught_up is not None and up_to is None and not self._more:
            if caught_up.ready:
                writer = caught_up
            else:
                self._restart(caught_up)
        try:
            await writer.append(AppendRequest(events, CapturePosition(self.source.name, position)))
        except BaseException:
            # Committed or not (a writer process that died holding it cannot say): the
            # next read starts from the position the store holds, so the batch is
            # stored again only if it was not, and never twice.
            self._unsure = True
            raise
        self._show_behind()
        for row, reason in failures:
            if row.seq not in self.stats.untranslatable:
                log.error(
                    "source %s: shadow row %d (table %r) kept, cannot translate: %s",
                    self.source.name,
                    row.seq,
                    row.table,
                    reason,
                )
            self.stats.untranslatable[row.seq] = reason
        self.stats.position = position
        self.stats.captured += len(events)
        self.stats.last_capture_at = datetime.now().astimezone()
        return len(rows)

    def _restart(self, process: ProcessWriter) -> None:
        """Start the store writer process again in the background (it died), at most
        once every `RESTART_SECONDS`; the thread writer commits meanwhile. Without
        this a capture-only daemon stayed on the thread for good, and one that also
        serves posts until the next post."""
        now = time.monotonic()
        if now - self._restarted_at >= RESTART_SECONDS:
            self._restarted_at = now
            process.warm()

    def _read(
        self, force: bool, up_to: int | None, schema: int | None, *, on_loop: bool = False
    ) -> list[shadow.ShadowRow]:
        conn = self._loop_connection() if on_loop else self._connection()
        if schema is not None and installer.schema_version(conn) != schema:
            raise SchemaChanged(f"source {self.source.name}: schema version is no longer {schema}")
        if self._unsure:
            if self._stored_position is not None:
                self.stats.position = self._stored_position()
            self._unsure, force = False, True  # the failed batch's rows are still there
        if not force and not self._changed_since_last_look(conn):
            return []
        limit = min(self._batch_size, LOOK_ROWS) if on_loop else self._batch_size
        if up_to is not None:
            if self.stats.position >= up_to:
                return []
            limit = max(1, min(limit, up_to - self.stats.position))
        rows = shadow.read_batch(conn, self.stats.position, limit)
        if up_to is not None:
            # Never past `up_to`: reconciliation compares the trail as of exactly that
            # seq. `up_to` is a head read in a committed snapshot, so no statement spans
            # it, and cutting there never splits a REPLACE from its pre-images.
            rows = [row for row in rows if row.seq <= up_to]
        self._more = len(rows) >= limit
        if self._more or up_to is not None:
            # More may be waiting: make the next look read even if nobody commits.
            self._data_versions.clear()
        else:
            self._behind = self._count_after(conn, rows[-1].seq if rows else self.stats.position)
        return rows

    def _count_after(self, conn: sqlite3.Connection, seq: int) -> tuple[int, str | None]:
        waiting = shadow.backlog(conn, seq)
        return waiting, shadow.oldest_change_after(conn, seq) if waiting else None

    def _show_behind(self) -> None:
        """Publish the backlog the last read counted, once its batch is stored."""
        if self._behind is not None:
            self.stats.backlog, self.stats.oldest_pending_at = self._behind
            self._behind = None

    async def drain(self, up_to: int | None = None, *, schema: int | None = None) -> int:
        """Poll until the backlog (or everything up to seq `up_to`) is stored.

        With `schema` (a `PRAGMA schema_version`), the first read checks it before
        it reads and raises `SchemaChanged`, storing nothing, when the billing
        database has migrated since (`cdc.service` then follows the migration
        first).

        Without `up_to` it stops after a batch that did not fill up: that read saw
        every committed change, and the next commit wakes the poller again. Stored
        rows are pruned once `PRUNE_ROWS` of them have gathered or `PRUNE_SECONDS`
        have passed: pruning is a write transaction on the billing database, and
        doing it after every small drain made each wake-up (and so capture latency)
        longer and competed with the billing service's own writes.

        The backlog shown in the stats is counted by the read that caught up, in
        the same read (rows committed after it wake the poller again); a drain
        ends with a trip to the worker thread of its own only to prune, or after
        an `up_to` drain. At 500 changes/s with the API polled, that trip was 1.4
        ms (median) of every wake-up's 18 ms (`bench/analysis.md`, session 13).
        """
        total = 0
        force = up_to is not None
        while True:
            consumed = await self.poll_once(force=force, up_to=up_to, schema=schema)
            schema = None
            total += consumed
            if consumed == 0:
                break
            if up_to is None and not self._more:
                break
            if up_to is not None and self.stats.position >= up_to:
                break
            force = True
        if up_to is not None or self._prune_due():
            await run_blocking(self._tidy)
        return total

    def _prune_due(self) -> bool:
        unpruned = self.stats.position - self._pruned_up_to
        return unpruned > 0 and (
            unpruned >= PRUNE_ROWS or time.monotonic() - self._pruned_at >= PRUNE_SECONDS
        )

    def _tidy(self) -> None:
        """Prune when due, then count what is left to capture (worker thread)."""
        if self._prune_due():
            self.prune()
        self.refresh_backlog()

    def prune(self) -> None:
        started = time.monotonic()
        position = self.stats.position
        deleted = shadow.prune(self._connection(), position, keep=tuple(self.stats.untranslatable))
        self._pruned_up_to, self._pruned_at = position, time.monotonic()
        log.debug(
            "source %s: pruned %d shadow rows in %.1f ms",
            self.source.name,
            deleted,
            (time.monotonic() - started) * 1000,
        )

    def refresh_backlog(self) -> None:
        conn = self._connection()
        self.stats.backlog = shadow.backlog(conn, self.stats.position)
        self.stats.oldest_pending_at = (
            shadow.oldest_change_after(conn, self.stats.position) if self.stats.backlog else None
        )
