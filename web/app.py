"""The aiohttp application factory: routes, middleware, and the tasks the app owns."""

from __future__ import annotations

from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from config import Config
from storage.bus import EventBus
from storage.checkpoints import Checkpointer
from storage.signing import load_or_create_key
from storage.store import AuditStore
from storage.writer_process import runs_apart, writer_for
from web import (
    event_routes,
    export_routes,
    history_routes,
    integrity_routes,
    openapi,
    ops_routes,
    seed_routes,
    streams_routes,
    tail_routes,
)
from web.auth import auth_middlewares
from web.bodies import MAX_BODY
from web.keys import CONFIG, EVENT_BUS, READER, READINESS, STORE, WRITER
from web.metrics import METRICS, Metrics, store_error_middleware, timing_middleware
from web.problems import error_middleware
from web.readiness import Readiness


def create_app(config: Config, store: AuditStore) -> web.Application:
    """Build the API over an open store. The app owns the group-commit writer
    (`storage.writer_process.writer_for`): started with the app, drained and
    stopped on shutdown."""
    # Auth inside the error middleware, so its refusals get each route family's error shape.
    app = web.Application(
        middlewares=[
            timing_middleware,  # outermost: sees the status the client gets
            error_middleware,
            *auth_middlewares(config.auth),
            store_error_middleware,  # innermost: sees store errors before they become responses
        ],
        client_max_size=MAX_BODY,
    )
    app[CONFIG] = config
    app[STORE] = store
    app[WRITER] = writer_for(store, config.store.url, alone=config.server.workers == 1)
    # Raises storage.signing.KeyFileError when the key file cannot be made or trusted.
    key = load_or_create_key(config.integrity.key_file)
    app[integrity_routes.CHECKPOINTER] = Checkpointer(store, key)
    # Before the writer: cleanup runs in reverse, so the last checkpoint is signed
    # after the writer has drained.
    app.cleanup_ctx.append(integrity_routes.run_checkpointer)
    app.cleanup_ctx.append(_run_writer)
    app[READER] = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-reader")
    app.on_cleanup.append(_stop_reader)
    app[METRICS] = Metrics()
    app[EVENT_BUS] = EventBus()
    app[READINESS] = Readiness()
    app[READINESS].add("store", ops_routes.store_check(store, app[METRICS]))
    app.cleanup_ctx.append(_listen_to_commits)
    app.on_shutdown.append(_end_tails)
    app.add_routes(seed_routes.routes)
    app.add_routes(event_routes.routes)
    app.add_routes(history_routes.routes)
    app.add_routes(streams_routes.routes)
    app.add_routes(export_routes.routes)
    app.add_routes(tail_routes.routes)
    app.add_routes(ops_routes.routes)
    app.add_routes(openapi.routes)
    app.add_routes(integrity_routes.routes)
    return app


async def _stop_reader(app: web.Application) -> None:
    app[READER].shutdown(wait=True)


async def _run_writer(app: web.Application) -> AsyncIterator[None]:
    writer = app[WRITER]
    await writer.start()
    yield
    await writer.stop()


async def _listen_to_commits(app: web.Application) -> AsyncIterator[None]:
    """Live tails and the stored-events counter hear of every commit, whoever appends."""
    store, metrics = app[STORE], app[METRICS]
    config = app[CONFIG]
    # Other processes append too (API workers, the store writer process): read their
    # events back in position order. A store writer process's commits reach this
    # process's listeners later than capture's own; only the store has their order.
    if config.server.workers > 1 or runs_apart(config.store.url):
        app[EVENT_BUS].follow(store)
    else:
        app[EVENT_BUS].attach(store)
    store.add_commit_listener(metrics.count_committed)
    yield
    store.remove_commit_listener(metrics.count_committed)
    app[EVENT_BUS].close()


async def _end_tails(app: web.Application) -> None:
    # Before aiohttp waits for open requests: a tail would otherwise hold shutdown up.
    app[EVENT_BUS].close()
