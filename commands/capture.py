"""Capture commands: install-triggers, uninstall-triggers, status, reconcile, migrate."""

from __future__ import annotations

import argparse
import sqlite3
import sys
from datetime import UTC, datetime
from typing import Any

from cdc import installer, shadow
from commands.common import EXIT_FAILED_CHECK, EXIT_OK, UsageError, open_store
from config import Config, SourceConfig
from storage.checkpoints import latest_checkpoint
from storage.events import format_time


def add_parsers(sub: Any) -> None:
    sub.add_parser(
        "install-triggers", help="set up capture on the billing databases without running"
    ).set_defaults(handler=cmd_install_triggers)
    sub.add_parser(
        "uninstall-triggers", help="remove every trigger and table Auditor added"
    ).set_defaults(handler=cmd_uninstall_triggers)
    sub.add_parser(
        "status", help="each stream: events, backlog, lag, last checkpoint"
    ).set_defaults(handler=cmd_status)
    _add_capture_parsers(sub)


def _check_databases(config: Config) -> None:
    for source in config.sources:
        if not source.database.exists():
            raise UsageError(
                f"{config.path}: sources: {source.name}: database {source.database} does not exist"
            )


def cmd_install_triggers(args: argparse.Namespace, config: Config) -> int:
    from cdc.service import install_source
    from cdc.triggers import CaptureError

    _check_databases(config)
    store = open_store(config)
    try:
        for source in config.sources:
            try:
                changed, _ = install_source(source, store.capture_position(source.name))
            except CaptureError as exc:
                raise UsageError(f"{config.path}: sources: {source.name}: {exc}") from exc
            print(
                f"{source.name}: triggers current on {len(source.tables)} table(s)"
                f"{', installed on ' + ', '.join(changed) if changed else ''}"
            )
    finally:
        store.close()
    return EXIT_OK


def cmd_uninstall_triggers(args: argparse.Namespace, config: Config) -> int:
    _check_databases(config)
    for source in config.sources:
        conn = installer.connect(source.database)
        try:
            installer.uninstall(conn)
        finally:
            conn.close()
        print(f"{source.name}: capture removed from {source.database}")
    return EXIT_OK


def cmd_status(args: argparse.Namespace, config: Config) -> int:
    """One line per stream: events, capture backlog and lag, last signed checkpoint."""
    store = open_store(config)
    try:
        heads = {head.name: head for head in store.streams()}
        names = sorted(set(heads) | {s.name for s in config.sources})
        with store.engines.read.connect() as conn:
            checkpoints = {name: latest_checkpoint(conn, name) for name in names}
        for name in names:
            head = heads.get(name)
            parts = [f"{name}: {head.head_seq if head else 0} events"]
            source = next((s for s in config.sources if s.name == name), None)
            if source is not None:
                parts.append(_capture_status(source, store.capture_position(name)))
            checkpoint = checkpoints[name]
            if checkpoint is None:
                parts.append("no checkpoint yet")
            else:
                signed = format_time(checkpoint.signed_at)
                parts.append(f"last checkpoint at size {checkpoint.size}, signed {signed}")
            print(", ".join(parts))
    finally:
        store.close()
    return EXIT_OK


def _capture_status(source: SourceConfig, position: int) -> str:
    if not source.database.exists():
        return f"database {source.database} missing"
    conn = installer.connect(source.database)
    try:
        waiting = shadow.backlog(conn, position)
        oldest = shadow.oldest_change_after(conn, position) if waiting else None
    except sqlite3.OperationalError:
        return "capture not installed"
    finally:
        conn.close()
    if not oldest:
        return "backlog 0, lag 0 s"
    lag = datetime.now(UTC) - datetime.fromisoformat(oldest)
    return f"backlog {waiting}, lag {max(lag.total_seconds(), 0):.1f} s"


def _add_capture_parsers(sub: Any) -> None:
    reconcile = sub.add_parser(
        "reconcile", help="compare captured tables with the audit trail; record the differences"
    )
    reconcile.add_argument("--source", help="this source only (default: every source)")
    reconcile.set_defaults(handler=cmd_reconcile)
    migrate = sub.add_parser(
        "migrate",
        help="run a schema migration on a billing database without losing a change "
        "(e.g. DROP COLUMN of a captured column)",
    )
    migrate.add_argument("--source", help="the source whose database to migrate")
    migrate.add_argument("sql", help="the SQL to run, e.g. 'ALTER TABLE t DROP COLUMN c'")
    migrate.set_defaults(handler=cmd_migrate)


def _selected_sources(config: Config, name: str | None, *, one: bool = False) -> list[Any]:
    names = ", ".join(s.name for s in config.sources) or "none"
    if name is None:
        if not config.sources:
            raise UsageError(f"{config.path}: sources: no source is configured")
        if one and len(config.sources) > 1:
            raise UsageError(f"--source: name one of the sources ({names})")
        chosen = list(config.sources)
    else:
        chosen = [s for s in config.sources if s.name == name]
        if not chosen:
            raise UsageError(f"--source: no source {name!r} in {config.path} (sources: {names})")
    for source in chosen:
        if not source.database.exists():
            raise UsageError(
                f"{config.path}: sources: {source.name}: database {source.database} does not exist"
            )
    return chosen


def cmd_reconcile(args: argparse.Namespace, config: Config) -> int:
    """Attach each source (triggers, drain, a due snapshot), then reconcile its tables."""
    import asyncio

    from cdc.catchup import reconcile_sources
    from cdc.reconcile import ReconcileError
    from cdc.triggers import CaptureError

    sources = _selected_sources(config, args.source)
    store = open_store(config)
    try:
        reports = asyncio.run(reconcile_sources(config, store, sources))
    except CaptureError as exc:
        raise UsageError(f"{config.path}: sources: {exc}") from exc
    except ReconcileError as exc:
        print(f"auditor: {exc}", file=sys.stderr)
        return EXIT_FAILED_CHECK
    finally:
        store.close()
    for report in reports:
        print(report.summary())
    return EXIT_OK


def cmd_migrate(args: argparse.Namespace, config: Config) -> int:
    """The SQL, with the triggers dropped and regenerated, in one billing transaction."""
    from cdc.migration import MigrationError, migrate
    from cdc.triggers import CaptureError

    (source,) = _selected_sources(config, args.source, one=True)
    store = open_store(config)
    try:
        position = store.capture_position(source.name)
    finally:
        store.close()
    conn = installer.connect(source.database)
    try:
        regenerated = migrate(conn, source.tables, args.sql, next_seq=position + 1)
    except (MigrationError, CaptureError, sqlite3.Error) as exc:
        raise UsageError(f"{source.name}: migration rolled back, nothing changed: {exc}") from exc
    finally:
        conn.close()
    print(
        f"{source.name}: migrated {source.database}; capture triggers regenerated"
        f"{' on ' + ', '.join(regenerated) if regenerated else ''}"
    )
    return EXIT_OK
