"""The snapshot: on first attach, each existing row becomes one `READ` event.

With `capture.snapshot: true`, a source that has never stored anything (no
position, no events in its stream) records every row of each captured table as
a `READ` event with action `<entity>.snapshot`: `after` is the row exactly as a
captured change would show it (`cdc.scan`), `properties` all its columns, actor
`system`, `metadata: {"snapshot": true}`.

The triggers are installed before the first row is read, so no change is
missed; a change that races with the snapshot may appear both in a `READ` and
in a later event (the `READ` already shows the changed row, and the event's
`before` is the older image). The trail's last state is right either way:
events of changes made after a chunk was read are always stored after it.

Resumable. Each chunk of `capture.batch_size` rows is read in its own short
read transaction (so the WAL can checkpoint) and stored in ONE store
transaction together with the table's progress, a `capture_positions` row:
`<source>#snapshot:<table>` = the last rowid stored (a WITHOUT ROWID table
stores the number of rows, and resumes after the key of its newest snapshot
event), `DONE` when the table is complete. `<source>#snapshot` is `STARTED`
from before the first drain of the source until every table is done, then
`FINISHED`. Killed half way, the snapshot goes on where it stopped: each row
is recorded exactly once.

The source's poller may drain between chunks (live changes keep flowing during
a long snapshot): a chunk's events are stored before any change made after it
was read, and a change stored before its row's `READ` is older than the `READ`.

A progress bar (tqdm) goes to stderr when stderr is a terminal.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from dataclasses import replace
from typing import Any

from tqdm import tqdm

from cdc import installer
from cdc.blocking import run_blocking
from cdc.reconcile import Drainer
from cdc.scan import Key, TableReader, as_events
from config import SourceConfig, TableConfig
from storage.events import EventType, NewEvent, new_event_id
from storage.query import EventQuery
from storage.store import AppendRequest, AuditStore, CapturePosition
from storage.writer import Writer

log = logging.getLogger(__name__)

STARTED = 1
FINISHED = 2
DONE = 2**63 - 1
"""A table's progress once every row is stored: past any rowid."""
SNAPSHOT: dict[str, Any] = {"snapshot": True}
_KEY_LENGTH = 64


def position_key(source: str, suffix: str) -> str:
    """A `capture_positions` key of `source` (at most 64 characters, readable when short)."""
    key = f"{source}{suffix}"
    if len(key) <= _KEY_LENGTH:
        return key
    return "#" + hashlib.sha256(key.encode()).hexdigest()[: _KEY_LENGTH - 1]


def marker_key(source: str) -> str:
    return position_key(source, "#snapshot")


def progress_key(source: str, table: str) -> str:
    return position_key(source, f"#snapshot:{table}")


def snapshot_state(store: AuditStore, source: str) -> tuple[bool, bool]:
    """(fresh: nothing of the source was ever stored, started: a snapshot is unfinished)."""
    marker = store.stored_capture_position(marker_key(source))
    heads = {head.name: head.head_seq for head in store.streams()}
    fresh = (
        marker is None
        and store.stored_capture_position(source) is None
        and heads.get(source, 0) == 0
    )
    return fresh, marker == STARTED


class SourceSnapshot:
    """Takes (or resumes) the snapshot of one source through the shared writer."""

    def __init__(
        self,
        source: SourceConfig,
        store: AuditStore,
        writer: Writer,
        batch_size: int,
        progress_bar: bool | None = None,
        poller: Drainer | None = None,
    ) -> None:
        self.source = source
        self.store = store
        self.writer = writer
        self.batch_size = batch_size
        self.poller = poller
        """Drained after each chunk, so live changes keep flowing during a long snapshot."""
        self.progress_bar = sys.stderr.isatty() if progress_bar is None else progress_bar

    async def mark_started(self) -> None:
        """Record that a snapshot is due, before the source's first drain stores anything."""
        await self.writer.append(
            AppendRequest([], CapturePosition(marker_key(self.source.name), STARTED))
        )

    async def run(self) -> int:
        """Snapshot every table not yet done; returns how many rows it recorded."""
        conn = await run_blocking(installer.connect, self.source.database)
        try:
            total = 0
            for options in self.source.tables:
                total += await self._table(conn, options)
        finally:
            conn.close()
        await self.writer.append(
            AppendRequest([], CapturePosition(marker_key(self.source.name), FINISHED))
        )
        return total

    async def _table(self, conn: Any, options: TableConfig) -> int:
        name = self.source.name
        key = progress_key(name, options.table)
        done = await run_blocking(self.store.stored_capture_position, key)
        if done == DONE:
            return 0
        reader = await run_blocking(TableReader, conn, options)
        after: Key | None = None
        if done is not None:
            after = await run_blocking(self._resume_after, reader, options, done)
        stored = 0 if done is None or not reader.shape.without_rowid else done
        bar = tqdm(
            total=await run_blocking(reader.count, after) if self.progress_bar else None,
            desc=f"snapshot {name}.{options.table}",
            unit=" rows",
            file=sys.stderr,
            disable=not self.progress_bar,
        )
        recorded = 0
        try:
            while True:
                chunk = await run_blocking(reader.chunk, after, self.batch_size)
                if chunk.last_key is None:
                    break
                events, failures = as_events(chunk.rows, options, reader.shape, name, chunk.read_at)
                for row, reason in failures:
                    log.error("source %s: snapshot of row %s skipped: %s", name, row.pk, reason)
                stored += len(chunk.rows)
                after = chunk.last_key
                progress = stored if reader.shape.without_rowid else int(after[0])
                await self.writer.append(
                    AppendRequest(
                        [_as_read(event, options) for event in events],
                        CapturePosition(key, progress),
                    )
                )
                recorded += len(events)
                bar.update(len(chunk.rows))
                if self.poller is not None:
                    await self.poller.drain()
                if len(chunk.rows) < self.batch_size:
                    break
        finally:
            bar.close()
        await self.writer.append(AppendRequest([], CapturePosition(key, DONE)))
        log.info("source %s: snapshot of %s: %d rows", name, options.table, recorded)
        return recorded

    def _resume_after(self, reader: TableReader, options: TableConfig, done: int) -> Key | None:
        if not reader.shape.without_rowid:
            return (done,)
        # The newest snapshot event of this entity is this table's: tables are taken
        # one after the other, and the ones before it are done.
        page = self.store.query(
            EventQuery(
                stream=self.source.name,
                entity=options.entity,
                action=f"{options.entity}.snapshot",
                order="desc",
                limit=1,
            )
        )
        if not page.events or page.events[0].after is None:
            return None
        return reader.keyset_of(page.events[0].after)


def _as_read(event: NewEvent, options: TableConfig) -> NewEvent:
    return replace(
        event,
        event_type=EventType.READ,
        action=f"{options.entity}.snapshot",
        metadata=SNAPSHOT,
        id=new_event_id(),
    )
