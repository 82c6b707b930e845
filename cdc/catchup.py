"""What a source's capture task does besides polling: the snapshot and reconciliation.

`CatchUp` hooks into a `cdc.service.SourceCapture`:

- `attach_first` replaces the source's first `attach`: it decides whether a
  snapshot is due (a fresh source with `capture.snapshot: true`, or one whose
  snapshot was interrupted) and records that decision in the store before the
  first drain stores anything, so a crash can never lose it. On a fresh source
  the triggers missing at first attach are no gap: capture starts there.
- `on_gap` notes the tables whose capture may have had a gap (triggers found
  missing, or regenerated for a new shape);
- `run_pending`, called by the capture task before each drain, takes the
  snapshot if one is due, then reconciles the noted tables. Both run in the
  capture task, never beside a drain, and keep their work until it succeeds
  (a failure is logged and retried on the next poll; capture goes on).

Neither runs in `CaptureService.start`, so a big table never delays the API.
`reconcile_sources` is `run_daemon.py reconcile`: the same, on demand, without
the server.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from cdc.reconcile import Reconciler, TableReport
from cdc.snapshot import SourceSnapshot, snapshot_state
from config import Config, SourceConfig
from storage.store import AuditStore
from storage.writer import GroupCommitWriter

if TYPE_CHECKING:
    from cdc.service import SourceCapture

log = logging.getLogger(__name__)


class CatchUp:
    """The snapshot and reconciliations of one source, run by its capture task."""

    def __init__(self, capture: SourceCapture, *, snapshot: bool, batch_size: int) -> None:
        self.capture = capture
        self.snapshot_enabled = snapshot
        self.snapshot = SourceSnapshot(
            capture.source, capture.store, capture.writer, batch_size, poller=capture.poller
        )
        self.reconciler = Reconciler(
            capture.source, capture.store, capture.writer, capture.poller, batch_size
        )
        self.snapshot_pending = False
        self.gaps: set[str] = set()
        self._capture_starts = False
        capture.on_gap = self.on_gap
        capture.before_drain = self.run_pending
        capture.work_waits = lambda: self.snapshot_pending or bool(self.gaps)

    async def attach_first(self) -> None:
        """The source's first attach, with the snapshot decided (and recorded) before it."""
        fresh, started = snapshot_state(self.capture.store, self.capture.source.name)
        if fresh and self.snapshot_enabled:
            await self.snapshot.mark_started()
        self.snapshot_pending = started or (fresh and self.snapshot_enabled)
        self._capture_starts = fresh
        try:
            await self.capture.attach()
        finally:
            self._capture_starts = False

    async def on_gap(self, capture: SourceCapture, tables: list[str]) -> None:
        if self._capture_starts:
            return
        log.info("source %s: capture may have missed changes to %s", capture.source.name, tables)
        self.gaps.update(tables)

    async def run_pending(self, capture: SourceCapture) -> None:
        """The due snapshot, then the noted reconciliations. A failure is logged and the
        work kept for the next poll; it never stops the drain that follows."""
        name = capture.source.name
        if self.snapshot_pending:
            try:
                await self.snapshot.run()
            except Exception:
                log.exception("source %s: snapshot failed; resuming on the next poll", name)
                return
            self.snapshot_pending = False
        for options in capture.source.tables:
            if options.table not in self.gaps:
                continue
            try:
                report = await self.reconciler.reconcile(options)
            except Exception:
                log.exception(
                    "source %s: reconciling %s failed; retrying on the next poll",
                    name,
                    options.table,
                )
                continue
            self.gaps.discard(options.table)
            log.info("reconciled %s", report.summary())

    async def reconcile_all(self) -> list[TableReport]:
        """Reconcile every table of the source (any noted gaps included)."""
        reports = []
        for options in self.capture.source.tables:
            reports.append(await self.reconciler.reconcile(options))
            self.gaps.discard(options.table)
        return reports


async def reconcile_sources(
    config: Config, store: AuditStore, sources: list[SourceConfig]
) -> list[TableReport]:
    """`run_daemon.py reconcile`: attach each source (installing or refreshing its
    triggers, draining, taking a due snapshot), then reconcile each of its tables."""
    from cdc.service import SourceCapture

    writer = GroupCommitWriter(store)
    await writer.start()
    reports: list[TableReport] = []
    try:
        for source in sources:
            capture = SourceCapture(source, store, writer, config.capture.batch_size)
            catch_up = CatchUp(
                capture, snapshot=config.capture.snapshot, batch_size=config.capture.batch_size
            )
            try:
                await catch_up.attach_first()
                if catch_up.snapshot_pending:
                    await catch_up.snapshot.run()
                    catch_up.snapshot_pending = False
                reports += await catch_up.reconcile_all()
                await capture.poller.drain()
            finally:
                capture.poller.close()
    finally:
        await writer.stop()
    return reports
