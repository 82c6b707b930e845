"""Operational routes: liveness, readiness and Prometheus metrics.

`/healthz` answers as long as the event loop does. `/readyz` runs every
registered readiness check (`web.readiness`) and answers 503 problem+json naming
each failing one in `errors`. `/metrics` is the app's own registry.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from storage.store import AuditStore
from web.event_routes import json_response
from web.keys import READINESS
from web.metrics import METRICS, METRICS_CONTENT_TYPE, Metrics
from web.problems import Problem
from web.readiness import ReadinessCheck
from web.validation import FieldError

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(_request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    results = await request.app[READINESS].run()
    failing = [FieldError(name, reason) for name, reason in results.items() if reason is not None]
    if failing:
        raise Problem(503, "not ready: " + ", ".join(e.field for e in failing), failing)
    return json_response({"status": "ready", "checks": {name: "ok" for name in results}})


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})


def store_check(store: AuditStore, metrics: Metrics) -> ReadinessCheck:
    """Ready when the store answers a trivial query."""

    async def check() -> str | None:
        try:
            await asyncio.to_thread(store.ping)
        except Exception as exc:
            metrics.store_errors.inc()
            return f"the audit store does not answer ({exc.__class__.__name__})"
        return None

    return check
