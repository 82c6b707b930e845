"""Typed application keys shared by the route modules."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from aiohttp import web

from config import Config
from storage.bus import EventBus
from storage.store import AuditStore
from storage.writer import GroupCommitWriter
from web.readiness import Readiness

CONFIG = web.AppKey("config", Config)
STORE = web.AppKey("store", AuditStore)
WRITER = web.AppKey("writer", GroupCommitWriter)
EVENT_BUS = web.AppKey("event_bus", EventBus)
READINESS = web.AppKey("readiness", Readiness)


class CaptureStatus(Protocol):
    """Per capture source: backlog, lag_seconds, last_capture_at, untranslatable, running.

    `run_daemon.py` provides it when capture runs; web/ never imports cdc/."""

    def __call__(self) -> Mapping[str, Mapping[str, Any]]: ...


CAPTURE_STATUS = web.AppKey("capture_status", CaptureStatus)
