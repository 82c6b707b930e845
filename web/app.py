"""The aiohttp application factory: routes, middleware, and the tasks the app owns."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from config import Config
from storage.store import AuditStore
from storage.writer import GroupCommitWriter
from web import event_routes, seed_routes
from web.bodies import MAX_BODY
from web.keys import CONFIG, STORE, WRITER
from web.problems import error_middleware


def create_app(config: Config, store: AuditStore) -> web.Application:
    """Build the API over an open store. The app owns the group-commit writer:
    started with the app, drained and stopped on shutdown."""
    app = web.Application(middlewares=[error_middleware], client_max_size=MAX_BODY)
    app[CONFIG] = config
    app[STORE] = store
    app[WRITER] = GroupCommitWriter(store)
    app.cleanup_ctx.append(_run_writer)
    app.add_routes(seed_routes.routes)
    app.add_routes(event_routes.routes)
    return app


async def _run_writer(app: web.Application) -> AsyncIterator[None]:
    writer = app[WRITER]
    await writer.start()
    yield
    await writer.stop()
