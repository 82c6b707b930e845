"""Prometheus metrics of one app, in a `CollectorRegistry` of its own.

Never the process-global registry: tests build many apps in one process, and
an app's numbers must be its own. What feeds each metric:

- `auditor_events_stored_total{stream,event_type}`: the store's commit listener,
  so every writer counts (the API, capture, redactions), and `POST /v1/events`
  for the posts the store writer process parsed (`count_stored`);
- `auditor_http_request_duration_seconds{route,method,status}`: `timing_middleware`,
  labelled by route template (`/v1/events/{event_id}`), never the raw path, and
  by method only when it is a standard one (`other` otherwise), so the number of
  series stays bounded whatever clients send;
- `auditor_store_errors_total`: `store_error_middleware` (a request failed because
  of the store), the readiness check, and capture through `Metrics.store_errors`;
- `auditor_capture_backlog{source}`, `auditor_capture_lag_seconds{source}`: set by
  capture through `Metrics.set_capture`.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter as Tally
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.exc import SQLAlchemyError

from storage.store import Appended, StorageError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

UNMATCHED_ROUTE = "unmatched"
OTHER_METHOD = "other"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """The app's metrics and the registry they live in."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.events_stored = Counter(
            "auditor_events_stored",
            "Events stored, by stream and event type.",
            ["stream", "event_type"],
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "auditor_http_request_duration_seconds",
            "HTTP request duration, by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.store_errors = Counter(
            "auditor_store_errors",
            "Store operations that failed.",
            registry=self.registry,
        )
        self.capture_backlog = Gauge(
            "auditor_capture_backlog",
            "Shadow rows captured but not yet stored, by source.",
            ["source"],
            registry=self.registry,
        )
        self.capture_lag = Gauge(
            "auditor_capture_lag_seconds",
            "Age of the oldest change not yet stored, by source.",
            ["source"],
            registry=self.registry,
        )
        # Labelled children, kept: `labels()` costs more than the observation itself on
        # the POST path. Both keys are bounded (route templates x METHODS x statuses;
        # configured streams x event types).
        self._durations: dict[tuple[str, str, int], Histogram] = {}
        self._stored: dict[tuple[str, str], Counter] = {}

    def count_committed(self, appended: list[Appended]) -> None:
        """A store commit listener: count each created event once."""
        tally = Tally((a.event.stream, a.event.event_type.value) for a in appended if a.created)
        self.count_stored((stream, kind, count) for (stream, kind), count in tally.items())

    def count_stored(self, stored: Iterable[tuple[str, str, int]]) -> None:
        """Count (stream, event type, count) created events: the store writer process's
        answers to the posts it parsed, which no commit listener sees as events."""
        for stream, event_type, count in stored:
            counter = self._stored.get((stream, event_type))
            if counter is None:
                counter = self._stored[stream, event_type] = self.events_stored.labels(
                    stream=stream, event_type=event_type
                )
            counter.inc(count)

    def set_capture(self, source: str, backlog: int, lag_seconds: float) -> None:
        self.capture_backlog.labels(source=source).set(backlog)
        self.capture_lag.labels(source=source).set(lag_seconds)

    def observe_request(self, request: web.Request, status: int, seconds: float) -> None:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else UNMATCHED_ROUTE
        method = request.method if request.method in METHODS else OTHER_METHOD
        key = (route, method, status)
        histogram = self._durations.get(key)
        if histogram is None:
            histogram = self._durations[key] = self.request_duration.labels(
                route=route, method=method, status=str(status)
            )
        histogram.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


METRICS = web.AppKey("metrics", Metrics)


@web.middleware
async def timing_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: times every request and labels it with the status the client got."""
    start = time.perf_counter()
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        request.app[METRICS].observe_request(request, exc.status, time.perf_counter() - start)
        raise
    except asyncio.CancelledError:
        raise
    except Exception:
        request.app[METRICS].observe_request(request, 500, time.perf_counter() - start)
        raise
    request.app[METRICS].observe_request(request, response.status, time.perf_counter() - start)
    return response


@web.middleware
async def store_error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Innermost: counts requests that failed because of the store, before the error
    middleware turns the exception into a response."""
    try:
        return await handler(request)
    except Exception as exc:
        if is_store_error(exc):
            request.app[METRICS].store_errors.inc()
        raise


def is_store_error(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(10):  # the cause chain is short; never loop on a cycle
        if seen is None:
            return False
        if isinstance(seen, StorageError | SQLAlchemyError):
            return True
        seen = seen.__cause__
    return False
