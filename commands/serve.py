"""`run` and `demo`: capture every source and serve the API in one process."""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import make_url

from commands.common import EXIT_OK, UsageError, log, open_store
from config import Config
from storage.store import AuditStore

if TYPE_CHECKING:
    from commands.workers import WorkerPool
    from web.keys import CaptureStatus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def add_parsers(sub: Any) -> None:
    sub.add_parser("run", help="capture every source and serve the API").set_defaults(
        handler=cmd_run
    )
    sub.add_parser(
        "demo", help="simulate a billing database, capture it and serve the API"
    ).set_defaults(handler=cmd_demo)


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
    # Loaded before the API workers' starter is forked, so that every worker shares it.
    import web.app  # noqa: F401

    check_exposure(config)
    if not config.auth.tokens:
        log.warning(
            "auth is off (auth.tokens is empty): serving on loopback %s only", config.server.host
        )
    pool = None
    if config.server.workers > 1:
        from commands.workers import WorkerPool

        url = make_url(config.store.url)
        if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
            raise UsageError(
                f"{config.path}: server.workers: {config.server.workers} processes cannot "
                "share an in-memory store: give store.url a SQLite file or PostgreSQL"
            )

        pool = WorkerPool(config, config.server.workers - 1)  # before any thread starts
    try:
        _serve(config, pool)
    finally:
        if pool is not None:
            pool.close()
    return EXIT_OK


def _serve(config: Config, pool: WorkerPool | None) -> None:
    from aiohttp import web

    from storage.signing import KeyFileError
    from web.app import create_app
    from web.keys import CAPTURE_STATUS, READINESS

    store = open_store(config)
    try:
        try:
            app = create_app(config, store)
        except KeyFileError as exc:
            raise UsageError(f"{config.path}: integrity.key_file: {exc}") from exc
        if config.sources:
            attach_capture(app, config, store)
        attach_store_watch(app, config)
        host, port = config.server.host, config.server.port
        if pool is None:
            settle_collector()
            web.run_app(app, host=host, port=port, print=None, access_log=None)
        else:
            from commands.workers import listen_sockets

            try:
                sockets = listen_sockets(host, port)
            except OSError as exc:
                raise UsageError(
                    f"{config.path}: server: cannot listen on {host}:{port}: {exc}"
                ) from exc
            pool.serve_on(sockets[0].getsockname()[1], app.get(CAPTURE_STATUS))
            app[READINESS].add("workers", pool.readiness)
            app.on_shutdown.append(pool.stop_restarting)
            app.cleanup_ctx.append(pool.run)
            settle_collector()
            web.run_app(app, sock=sockets, print=None, access_log=None)
        log.info("stopped cleanly")
    finally:
        store.close()


GC_THRESHOLDS = (50_000, 20, 100)
"""The cyclic collector's thresholds while serving (CPython's default: 700, 10, 10)."""


def settle_collector() -> None:
    """Tune the cyclic garbage collector for a long-running daemon; call once set up.

    Everything built so far lives as long as the process: `gc.freeze()` keeps it
    out of every later collection. Measured: GET /v1/events p99 at one connection
    92 ms -> 1.9 ms (full collections walking the startup objects were the 92 ms).
    A capture batch or a group commit allocates some 20 container objects an
    event, so the default young-generation threshold (700) ran a collection
    every ~35 events: with `GC_THRESHOLDS` the 60,000-change drain benchmark went
    from 11,605 to 20,470 changes/s (BENCHMARKS.md, change 9; the same as with
    the collector off). Few cycles are made (a drain run with the collector off
    left 4,148 objects for one final collection); the collector still runs,
    only less often.
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def attach_store_watch(app: Any, config: Config) -> None:
    """With API workers, wake the live tails' follower whenever the SQLite store's
    files are written (by any process), so a tail need not wait for its next read."""
    from cdc.watcher import DatabaseWatcher
    from web.keys import EVENT_BUS

    url = make_url(config.store.url)
    database = url.database
    if config.server.workers == 1 or url.get_backend_name() != "sqlite":
        return  # one process hears its own commits; PostgreSQL has no file to watch
    if not database or database == ":memory:":
        return

    async def watch(app: Any) -> AsyncIterator[None]:
        watcher = DatabaseWatcher()
        watcher.watch(Path(database), app[EVENT_BUS].wake)
        watcher.start()
        yield
        watcher.stop()

    app.cleanup_ctx.append(watch)


def attach_capture(app: Any, config: Config, store: AuditStore) -> None:
    """Capture as a task the web app owns (started after the writer, stopped before it),
    with its status in `/v1/streams`, `/readyz` and `/metrics`."""
    from cdc.service import CaptureService
    from storage.writer import GroupCommitWriter
    from storage.writer_process import ProcessWriter
    from web.keys import WRITER

    # Capture drains in a thread of the daemon, sharing the API's writer when that is
    # one too. Where the API has a store writer process (storage.writer_process), a
    # backlog's full batches still go through a thread of capture's own (the trip to
    # the process and back cost more than the thread's GIL hand-offs), and only the
    # small batches of a poller that has caught up go to the process, where their
    # commit does not wait for the API at the daemon's GIL (cdc.poller.poll_once).
    api_writer = app[WRITER]
    own = None if isinstance(api_writer, GroupCommitWriter) else GroupCommitWriter(store)
    caught_up = api_writer if isinstance(api_writer, ProcessWriter) else None
    service = CaptureService(config, store, own or api_writer, caught_up_writer=caught_up)
    publisher = show_capture_status(app, service.status)

    async def capture(app: Any) -> AsyncIterator[None]:
        if own is not None:
            await own.start()
        if caught_up is not None and service.sources:
            caught_up.warm()  # started with the API's writer, before capture
        await service.start()
        log.info("capturing %d source(s)", len(service.sources))
        async with publisher():
            yield
        await service.stop()
        if own is not None:
            await own.stop()

    app.cleanup_ctx.append(capture)


def show_capture_status(
    app: Any, status: CaptureStatus, *, stale: Callable[[], str | None] | None = None
) -> Callable[[], contextlib.AbstractAsyncContextManager[None]]:
    """Show capture's `status` in `/v1/streams`, `/readyz` (and `stale()`'s complaint
    there, when given) and `/metrics`; the returned context publishes the metrics
    while it is open."""
    import asyncio

    from web.keys import CAPTURE_STATUS, READINESS
    from web.metrics import METRICS

    app[CAPTURE_STATUS] = status
    metrics = app[METRICS]

    async def capture_running() -> str | None:
        problem = stale() if stale is not None else None
        stopped = [name for name, s in status().items() if not s["running"]]
        return problem or (f"capture is not running for {', '.join(stopped)}" if stopped else None)

    app[READINESS].add("capture", capture_running)

    async def publish_metrics() -> None:
        while True:
            for name, source in status().items():
                metrics.set_capture(name, source["backlog"], source["lag_seconds"])
            await asyncio.sleep(1.0)

    @contextlib.asynccontextmanager
    async def publishing() -> AsyncIterator[None]:
        task = asyncio.create_task(publish_metrics())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return publishing


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
        cwd=ROOT,
    )
    base = f"http://{config.server.host}:{config.server.port}"
    print(f"demo: simulating a billing service in {database} (pid {simulator.pid})")
    print(f"demo: watch the audit trail: curl '{base}/v1/events?limit=5'")
    try:
        return cmd_run(args, config)
    finally:
        simulator.terminate()
        simulator.wait(timeout=10)
