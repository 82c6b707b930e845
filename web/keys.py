"""Typed application keys shared by the route modules."""

from __future__ import annotations

from aiohttp import web

from config import Config
from storage.store import AuditStore
from storage.writer import GroupCommitWriter

CONFIG = web.AppKey("config", Config)
STORE = web.AppKey("store", AuditStore)
WRITER = web.AppKey("writer", GroupCommitWriter)
