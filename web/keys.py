"""Typed application keys shared by the route modules."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, Protocol, TypeVar

from aiohttp import web

from config import Config
from storage.bus import EventBus
from storage.store import AuditStore
from storage.writer import Writer
from web.readiness import Readiness

CONFIG = web.AppKey("config", Config)
STORE = web.AppKey("store", AuditStore)
WRITER: web.AppKey[Writer] = web.AppKey("writer")
EVENT_BUS = web.AppKey("event_bus", EventBus)
READINESS = web.AppKey("readiness", Readiness)


class CaptureStatus(Protocol):
    """Per capture source: backlog, lag_seconds, last_capture_at, untranslatable, running.

    `run_daemon.py` provides it when capture runs; web/ never imports cdc/."""

    def __call__(self) -> Mapping[str, Mapping[str, Any]]: ...


CAPTURE_STATUS = web.AppKey("capture_status", CaptureStatus)


READER = web.AppKey("reader", ThreadPoolExecutor)
"""One thread for the store reads (`GET /v1/events`, one event, the seed lists); a
`GET /v1/events` page that `AuditStore.query_is_quick` deems bounded runs on the
event loop instead, where it is cheaper than the hand-off (web/event_routes.py).

Measured with wrk, 64 connections, 100,000 events: 628 req/s with one reader
thread, 515 with two, 450 with three, 376 with asyncio's default pool: decoding
rows is Python work, and more threads only fight over the GIL."""

P = ParamSpec("P")
R = TypeVar("R")


async def read_in_reader(
    request: web.Request, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs
) -> R:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(request.app[READER], lambda: fn(*args, **kwargs))
