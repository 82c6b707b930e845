#!/usr/bin/env python3
"""Auditor's one entry point: `run_daemon.py [--config PATH] [COMMAND]`.

This module only parses the command line, loads the configuration and wires
the packages together (`cdc/` and `web/` never import each other).
Exit codes: 0 success, 1 a failed check, 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import logging
import os
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from sqlalchemy.engine import make_url

from config import Config, ConfigError, load_config, resolve_config_path
from storage.store import AuditStore, StorageError

log = logging.getLogger("auditor")

EXIT_OK = 0
EXIT_FAILED_CHECK = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """Bad usage or configuration: reported on stderr, exit 2."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("AUDITOR_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # APScheduler logs every run of the fallback poll at INFO.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    command: Callable[[argparse.Namespace, Config], int] = args.handler
    try:
        config = load_config(resolve_config_path(args.config, os.environ))
        return command(args, config)
    except (ConfigError, UsageError) as exc:
        print(f"auditor: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_daemon.py", description="Auditor: audit trail daemon"
    )
    parser.add_argument(
        "--config", help="configuration file (default: $AUDITOR_CONFIG or config.yaml)"
    )
    parser.set_defaults(handler=cmd_run)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    sub.add_parser("run", help="capture every source and serve the API").set_defaults(
        handler=cmd_run
    )
    sub.add_parser(
        "demo", help="simulate a billing database, capture it and serve the API"
    ).set_defaults(handler=cmd_demo)
    sub.add_parser(
        "install-triggers", help="set up capture on the billing databases without running"
    ).set_defaults(handler=cmd_install_triggers)
    sub.add_parser(
        "uninstall-triggers", help="remove every trigger and table Auditor added"
    ).set_defaults(handler=cmd_uninstall_triggers)
    sub.add_parser(
        "status", help="each stream: events, backlog, lag, last checkpoint"
    ).set_defaults(handler=cmd_status)
    _add_export_parser(sub)
    _add_capture_parsers(sub)
    verify = sub.add_parser(
        "verify", help="recompute the audit trail and check it against the signed checkpoints"
    )
    verify.add_argument("--stream", help="check this stream only (default: every stream)")
    verify.add_argument(
        "--checkpoint",
        metavar="FILE",
        help="also check against this checkpoint (a saved GET /v1/checkpoints/latest body)",
    )
    verify.set_defaults(handler=cmd_verify)
    return parser


def open_store(config: Config) -> AuditStore:
    url = make_url(config.store.url).render_as_string(hide_password=True)
    try:
        store = AuditStore.open(config.store.url)
    except StorageError as exc:
        raise UsageError(f"{config.path}: store.url: {exc} ({url})") from exc
    log.info("audit store ready at %s", url)
    return store


def check_exposure(config: Config) -> None:
    """Without tokens the API is open to anyone who can reach it: loopback only."""
    if not config.auth.tokens and not config.loopback_only:
        raise UsageError(
            f"{config.path}: server.host: {config.server.host} is not a loopback address, "
            "and auth.tokens is empty: without tokens Auditor serves a loopback address only "
            "(127.0.0.1, ::1, localhost); "
            "add a token under auth.tokens to listen there"
        )


def cmd_run(args: argparse.Namespace, config: Config) -> int:
    from aiohttp import web

    from web.app import create_app

    check_exposure(config)
    if not config.auth.tokens:
        log.warning(
            "auth is off (auth.tokens is empty): serving on loopback %s only", config.server.host
        )
    from storage.signing import KeyFileError

    store = open_store(config)
    try:
        try:
            app = create_app(config, store)
        except KeyFileError as exc:
            raise UsageError(f"{config.path}: integrity.key_file: {exc}") from exc
        if config.sources:
            attach_capture(app, config, store)
        host, port = config.server.host, config.server.port
        web.run_app(app, host=host, port=port, print=None, access_log=None)
        log.info("stopped cleanly")
    finally:
        store.close()
    return EXIT_OK


def attach_capture(app: Any, config: Config, store: AuditStore) -> None:
    """Capture as a task the web app owns (started after the writer, stopped before it),
    with its status in `/v1/streams`, `/readyz` and `/metrics`."""
    import asyncio
    import contextlib

    from cdc.service import CaptureService
    from web.keys import CAPTURE_STATUS, READINESS, WRITER
    from web.metrics import METRICS

    service = CaptureService(config, store, app[WRITER])
    app[CAPTURE_STATUS] = service.status
    metrics = app[METRICS]

    async def capture_running() -> str | None:
        stopped = [name for name, s in service.status().items() if not s["running"]]
        return f"capture is not running for {', '.join(stopped)}" if stopped else None

    app[READINESS].add("capture", capture_running)

    async def publish_metrics() -> None:
        while True:
            for name, status in service.status().items():
                metrics.set_capture(name, status["backlog"], status["lag_seconds"])
            await asyncio.sleep(1.0)

    async def capture(app: Any) -> AsyncIterator[None]:
        await service.start()
        log.info("capturing %d source(s)", len(service.sources))
        publisher = asyncio.create_task(publish_metrics())
        yield
        publisher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await publisher
        await service.stop()

    app.cleanup_ctx.append(capture)


def cmd_demo(args: argparse.Namespace, config: Config) -> int:
    """The demo billing database, a simulator changing it in its own process, and `run`."""
    import subprocess

    from demo.simulator import create_schema

    check_exposure(config)
    if not config.sources:
        raise UsageError(f"{config.path}: sources: the demo needs a source to simulate")
    database = config.sources[0].database
    create_schema(database)
    simulator = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "demo.simulator", str(database), "--rate", "5"],
        cwd=os.path.dirname(os.path.abspath(__file__)),
    )
    base = f"http://{config.server.host}:{config.server.port}"
    print(f"demo: simulating a billing service in {database} (pid {simulator.pid})")
    print(f"demo: watch the audit trail: curl '{base}/v1/events?limit=5'")
    try:
        return cmd_run(args, config)
    finally:
        simulator.terminate()
        simulator.wait(timeout=10)


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
    from cdc import installer

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
    from cdc import installer, shadow

    store = open_store(config)
    try:
        heads = {head.name: head for head in store.streams()}
        names = sorted(set(heads) | {s.name for s in config.sources})
        for name in names:
            head = heads.get(name)
            line = f"{name}: {head.head_seq if head else 0} events"
            source = next((s for s in config.sources if s.name == name), None)
            if source is not None and source.database.exists():
                position = store.capture_position(name)
                conn = installer.connect(source.database)
                try:
                    waiting = shadow.backlog(conn, position)
                    oldest = (
                        conn.execute(
                            'SELECT min("changed_at") FROM "_auditor_changes" WHERE "seq" > ?',
                            (position,),
                        ).fetchone()[0]
                        if waiting
                        else None
                    )
                except sqlite3.OperationalError:
                    waiting, oldest = 0, None
                finally:
                    conn.close()
                line += f", backlog {waiting}"
                if oldest:
                    line += f" (oldest change waiting since {oldest})"
            if head is not None:
                line += f", last event recorded {head.updated_at.isoformat(timespec='seconds')}"
            print(line)
    finally:
        store.close()
    return EXIT_OK


_EXPORT_FILTERS = ("actor", "entity", "entity_id", "action", "stream", "property", "since", "until")


def _add_export_parser(sub: Any) -> None:
    export = sub.add_parser("export", help="events matching the filters to standard output")
    for name in _EXPORT_FILTERS:
        export.add_argument(f"--{name.replace('_', '-')}", dest=name, metavar="VALUE")
    export.add_argument(
        "--event-type",
        dest="event_type",
        action="append",
        default=[],
        metavar="TYPE",
        help="CREATE, READ, UPDATE or DELETE (repeatable)",
    )
    export.add_argument("--order", help="asc (default) or desc")
    export.add_argument("--format", default="ndjson", help="ndjson (default) or csv")
    export.set_defaults(handler=cmd_export)


def cmd_export(args: argparse.Namespace, config: Config) -> int:
    """The same bytes as `GET /v1/export`, written to standard output a page at a time."""
    from multidict import MultiDict

    from web.export_format import export_chunks
    from web.export_routes import parse_export_params
    from web.problems import Problem

    params: MultiDict[str] = MultiDict(
        [(name, getattr(args, name)) for name in _EXPORT_FILTERS if getattr(args, name) is not None]
        + [("event_type", value) for value in args.event_type]
        + [("format", args.format)]
        + ([("order", args.order)] if args.order is not None else [])
    )
    try:
        query, fmt = parse_export_params(params)
    except Problem as problem:
        raise UsageError(
            "; ".join(f"--{e.field.replace('_', '-')}: {e.message}" for e in problem.errors)
        ) from problem
    store = open_store(config)
    try:
        for chunk in export_chunks(store, query, fmt):
            sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
    except BrokenPipeError:
        # The reader (`| head`) has had enough; that is not a failure.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        store.close()
    return EXIT_OK


def cmd_verify(args: argparse.Namespace, config: Config) -> int:
    """Exit 0 when every checked stream is intact, 1 when one is not (each named on stdout)."""
    from pathlib import Path

    from storage.verify_cli import VerifyUsageError, run_verify

    store = open_store(config)
    try:
        return run_verify(
            store,
            config.integrity.key_file,
            stream=args.stream,
            checkpoint_file=Path(args.checkpoint) if args.checkpoint else None,
            out=sys.stdout,
            err=sys.stderr,
        )
    except VerifyUsageError as exc:
        raise UsageError(f"{config.path}: {exc}") from exc
    finally:
        store.close()


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
    from cdc import installer
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


if __name__ == "__main__":
    sys.exit(main())
