"""Reconciliation: make the audit trail agree with a captured table after a gap.

The trail's state of a row is the fold of its entity's events in the source's
stream, in order: `CREATE`/`READ`/`UPDATE` set it to their `after`, `DELETE`
removes it. Reconciling a table compares that state with the table and records
each difference as an event with `metadata: {"reconciled": true}`, actor
`system`, at the time the table was read:

- a row the trail does not know → `CREATE` (`<entity>.created`);
- a row the trail thinks exists but the table has not → `DELETE` (`<entity>.deleted`,
  `before` = the trail's state);
- a row that differs → `UPDATE` (`<entity>.updated`, or the first named action that
  starts to hold, as for a captured change) with the changed columns as `properties`,
  `before` = the trail's state, `after` = the row.

Images are exactly what a captured change would show (`cdc.scan`). What is
compared: every column that both the row and the trail's state have, except
`ignore` columns (changes to them alone are never events) and masked columns
(both sides are only ever "***", so a change to a masked column alone cannot
be seen). A column the trail's state does not have is compared with the
column's declared default, but only when the state has no column that the
table lacks: that is a column added by ALTER TABLE, whose existing rows read
as the default, so a backfill or a change made before the triggers were
regenerated shows up, while a renamed column (old name in the state, new name
in the table) is not taken for a change of every row. A row whose latest event
was redacted has no known state: it is never re-recorded (that would undo the
redaction), only its deletion is.

Exactness under concurrent billing writes. The table is read in chunks of
`batch_size` rows along its rowid (or WITHOUT ROWID key), each chunk in ONE
short read transaction together with the shadow table's head seq H. The poller
then stores exactly the changes up to H (`drain(up_to=H)`), the trail is
folded, and the chunk's rows are compared: table and trail both as of H. Rows
the trail knows but no chunk showed (deleted, or changed behind the scan) are
looked up by key at the end, again with the head of the same read transaction.
So when `reconcile` returns, every row of the table and every row the trail
holds has been compared at one moment at which both were known exactly, and
every difference found is in the trail, after the events before that moment
and before those after it. Changes made while it runs are captured by the
triggers as usual.

Not guaranteed: what happened *during* a gap beyond the end state (a row
updated twice shows as one UPDATE; a row deleted and re-inserted shows as an
UPDATE or nothing); changes to masked or ignored columns alone; entities that
two tables of one source share (give each table its own `entity`). Memory: the
trail's state of the table, one compact JSON image per row.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol

import orjson

from cdc import installer
from cdc.blocking import run_blocking
from cdc.scan import Chunk, Key, TableReader, as_events, as_update, image_of
from config import SourceConfig, TableConfig
from storage.events import SYSTEM_ACTOR, EventType, NewEvent, new_event_id
from storage.query import EventQuery
from storage.store import AppendRequest, AuditStore
from storage.writer import Writer

log = logging.getLogger(__name__)

RECONCILED: dict[str, Any] = {"reconciled": True}
_UNKNOWN = b""
"""The state of a row whose latest event was redacted."""


class ReconcileError(Exception):
    """A table could not be reconciled (a row that cannot be turned into an image)."""


class Drainer(Protocol):
    """What reconciliation needs from the source's poller (`cdc.poller.ShadowPoller`)."""

    async def drain(self, up_to: int | None = None) -> int: ...


@dataclass
class TableReport:
    """What reconciling one table recorded."""

    source: str
    table: str
    created: int = 0
    updated: int = 0
    deleted: int = 0
    unidentified: int = 0
    """Rows without a usable key (a NULL primary key): never compared."""

    @property
    def differences(self) -> int:
        return self.created + self.updated + self.deleted

    def summary(self) -> str:
        noun = "difference" if self.differences == 1 else "differences"
        line = f"{self.source}.{self.table}: {self.differences} {noun} recorded"
        if self.differences:
            line += f" ({self.created} created, {self.updated} updated, {self.deleted} deleted)"
        if self.unidentified:
            line += f"; {self.unidentified} rows without a key were not compared"
        return line


class TrailState:
    """The trail's last known image of each row of one entity, folded incrementally."""

    def __init__(self, store: AuditStore, stream: str, entity: str) -> None:
        self.store = store
        self.query = EventQuery(stream=stream, entity=entity, order="asc")
        self.images: dict[str, bytes] = {}
        self.own: set[str] = set()
        """Ids of events reconciliation appended itself: their rows are settled."""
        self._after_pk: int | None = None

    def catch_up(self) -> None:
        """Fold the events stored since the last call."""
        last = None
        for event in self.store.iter_events(replace(self.query, after_pk=self._after_pk)):
            last = event
            entity_id = event.entity_id
            if entity_id is None or event.id in self.own:
                continue
            if event.event_type is EventType.DELETE:
                self.images.pop(entity_id, None)
            elif event.redacted:
                self.images[entity_id] = _UNKNOWN
            elif event.after is not None:
                self.images[entity_id] = orjson.dumps(event.after)
            else:
                self.images.setdefault(entity_id, _UNKNOWN)
        if last is not None:
            self._after_pk = self.store.position_of(last.id)

    def image(self, entity_id: str) -> dict[str, Any] | None:
        raw = self.images.get(entity_id)
        return orjson.loads(raw) if raw else None


class Reconciler:
    """Reconciles the tables of one source through its poller and the shared writer."""

    def __init__(
        self,
        source: SourceConfig,
        store: AuditStore,
        writer: Writer,
        poller: Drainer,
        batch_size: int,
    ) -> None:
        self.source = source
        self.store = store
        self.writer = writer
        self.poller = poller
        self.batch_size = batch_size

    async def reconcile(self, options: TableConfig) -> TableReport:
        """Compare one table with the trail and record the differences (module docstring)."""
        conn = await run_blocking(installer.connect, self.source.database)
        try:
            reader = await run_blocking(TableReader, conn, options)
            defaults = await run_blocking(reader.defaults)
            return await _TableRun(self, options, reader, defaults).run()
        finally:
            conn.close()


class _TableRun:
    """One reconciliation of one table."""

    def __init__(
        self, owner: Reconciler, options: TableConfig, reader: TableReader, defaults: str | None
    ) -> None:
        self.owner = owner
        self.options = options
        self.reader = reader
        self.stream = owner.source.name
        self.defaults = (
            None if defaults is None else image_of(defaults, options, reader.shape, self.stream)
        )
        self.report = TableReport(owner.source.name, options.table)
        self.trail = TrailState(owner.store, self.stream, options.entity)
        self.ignored = frozenset(options.ignore) | frozenset(options.mask)

    async def run(self) -> TableReport:
        reader = self.reader
        after: Key | None = None
        while True:
            chunk = await run_blocking(reader.chunk, after, self.owner.batch_size)
            await self._settle(chunk, None)
            if chunk.last_key is None or len(chunk.rows) < self.owner.batch_size:
                break
            after = chunk.last_key
        # What the trail holds but no chunk showed: each looked up at a moment of its own.
        leftovers = list(self.trail.images)
        for start in range(0, len(leftovers), self.owner.batch_size):
            entity_ids = leftovers[start : start + self.owner.batch_size]
            keys: list[Key | str] = []
            wanted = []
            for entity_id in entity_ids:
                try:
                    keys.append(reader.key_of(entity_id, self.trail.image(entity_id)))
                except ValueError:
                    self.report.unidentified += 1
                    continue
                wanted.append(entity_id)
            chunk = await run_blocking(reader.lookup, keys)
            await self._settle(chunk, wanted)
        return self.report

    async def _settle(self, chunk: Chunk, wanted: Sequence[str] | None) -> None:
        """Compare one chunk with the trail as of the chunk's head seq; record differences.

        `wanted`: the entity ids looked up (a missing one was deleted); None for a
        scan chunk (its rows are compared, and leave the set of rows still to check)."""
        await self.owner.poller.drain(up_to=chunk.head_seq)
        await run_blocking(self.trail.catch_up)
        shape = self.reader.shape
        created, failures = as_events(chunk.rows, self.options, shape, self.stream, chunk.read_at)
        if failures:
            failed, reason = failures[0]
            raise ReconcileError(f"table {self.options.table!r}: row {failed.pk}: {reason}")
        found: dict[str, tuple[NewEvent, str] | None] = {}
        for event, (_, image) in zip(created, chunk.rows, strict=True):
            if event.entity_id is None:
                self.report.unidentified += 1
            else:
                found[event.entity_id] = (event, image)
        differences: list[NewEvent] = []
        # A look-up may also find a row under another id (a NOCASE key): only the
        # ids asked for are settled here; the other row was seen by the scan.
        checked = found if wanted is None else {e: found.get(e) for e in wanted}
        for entity_id, row in checked.items():
            known = self.trail.images.pop(entity_id, None)
            if row is None:
                if known is not None:
                    differences.append(self._deleted(entity_id, known, chunk.read_at))
            elif known is None:
                differences.append(replace(row[0], id=new_event_id(), metadata=RECONCILED))
                self.report.created += 1
            elif known != _UNKNOWN:
                update = self._updated(row[0], row[1], orjson.loads(known))
                if update is not None:
                    differences.append(update)
        if differences:
            self.trail.own.update(event.id for event in differences)
            await self.owner.writer.append(AppendRequest(differences))

    def _deleted(self, entity_id: str, known: bytes, at: datetime) -> NewEvent:
        self.report.deleted += 1
        before = orjson.loads(known) if known else None
        entity = self.options.entity
        return NewEvent(
            stream=self.stream,
            entity=entity,
            event_type=EventType.DELETE,
            actor=SYSTEM_ACTOR,
            occurred_at=at,
            entity_id=entity_id,
            action=f"{entity}.deleted",
            properties=_in_column_order(before or {}, self.reader.shape.columns),
            before=before,
            after=None,
            metadata=RECONCILED,
        )

    def _updated(self, current: NewEvent, image: str, known: dict[str, Any]) -> NewEvent | None:
        after = current.after or {}
        changed = changed_columns(after, known, self.defaults, self.ignored)
        if not changed:
            return None
        # Translated as the captured UPDATE from the trail's state would be, so that the
        # named actions apply exactly as they do to captured changes.
        merged = {**after, **{c: known.get(c, (self.defaults or {}).get(c)) for c in changed}}
        old = orjson.dumps([merged[c] for c in self.reader.shape.columns]).decode()
        update = as_update(
            old, image, self.options, self.reader.shape, self.stream, current.occurred_at
        )
        if update is None:
            return None
        self.report.updated += 1
        return replace(
            update,
            entity_id=current.entity_id,
            properties=tuple(changed),
            before=known,
            id=new_event_id(),
            metadata=RECONCILED,
        )


def _in_column_order(image: dict[str, Any], columns: tuple[str, ...]) -> tuple[str, ...]:
    """The image's columns in table order (the store gives images back sorted by name)."""
    return tuple(c for c in columns if c in image) + tuple(c for c in image if c not in columns)


def changed_columns(
    current: dict[str, Any],
    known: dict[str, Any],
    defaults: dict[str, Any] | None,
    skipped: frozenset[str],
) -> list[str]:
    """The columns in which `current` differs from the trail's `known` image (see the
    module docstring for which columns are compared)."""
    added_only = all(column in current for column in known)
    changed = []
    for column, value in current.items():
        if column in skipped:
            continue
        if column in known:
            was = known[column]
        elif added_only and defaults is not None and column in defaults:
            was = defaults[column]
        else:
            continue
        if value != was:
            changed.append(column)
    return changed
