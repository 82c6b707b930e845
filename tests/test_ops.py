"""`/healthz`, `/readyz` and `/metrics` through a real aiohttp server on loopback."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.exc import OperationalError

from storage.store import AuditStore
from web.keys import READINESS
from web.metrics import METRICS

Client = TestClient[Any, Any]


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample called `name`, by its sorted labels."""
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


async def metrics_text(api: Client) -> str:
    response = await api.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    return await response.text()


async def test_healthz(api: Client) -> None:
    response = await api.get("/healthz")
    assert response.status == 200
    assert await response.json() == {"status": "ok"}


async def test_readyz_when_the_store_answers(api: Client) -> None:
    response = await api.get("/readyz")
    assert response.status == 200
    assert await response.json() == {"status": "ready", "checks": {"store": "ok"}}


async def test_readyz_names_each_failing_check(api: Client) -> None:
    async def capture_stopped() -> str | None:
        return "capture of billing is not running"

    async def never_answers() -> str | None:
        await asyncio.sleep(3600)
        return None

    async def ok() -> str | None:
        return None

    readiness = api.app[READINESS]
    readiness.add("capture", capture_stopped)
    # Only the check that never answers gets a short timeout: the store's keeps the
    # default, so a loaded machine cannot make it fail as well.
    readiness.add("slow", never_answers, timeout=0.2)
    readiness.add("other", ok)
    response = await api.get("/readyz")
    assert response.status == 503
    assert response.content_type == "application/problem+json"
    body = await response.json()
    assert body["status"] == 503 and body["title"] == "Service Unavailable"
    assert body["detail"] == "not ready: capture, slow"
    assert body["errors"] == [
        {"field": "capture", "message": "capture of billing is not running"},
        {"field": "slow", "message": "no answer within 0.2 s"},
    ]


async def test_readyz_when_the_store_fails(
    api: Client, store: AuditStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreachable() -> None:
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    monkeypatch.setattr(store, "ping", unreachable)
    response = await api.get("/readyz")
    assert response.status == 503
    body = await response.json()
    assert body["errors"] == [
        {"field": "store", "message": "the audit store does not answer (OperationalError)"}
    ]
    assert samples(await metrics_text(api), "auditor_store_errors_total") == {(): 1.0}


async def test_events_stored_are_counted_by_stream_and_type(api: Client) -> None:
    events = [{"entity": "charge", "event_type": t} for t in ("CREATE", "CREATE", "DELETE")]
    assert (await api.post("/v1/events", json={"events": events})).status == 201
    same_id = {
        "entity": "charge",
        "event_type": "READ",
        "id": "0193c1c4-5a1e-7c3b-9f4e-2b8d1c0a9e77",
    }
    assert (await api.post("/v1/events", json=same_id)).status == 201
    assert (await api.post("/v1/events", json=same_id)).status == 200  # not stored again
    assert (
        await api.post("/create_log/073", data=b'{"entity": "x", "event_type": "UPDATE"}')
    ).status == 200
    stored = samples(await metrics_text(api), "auditor_events_stored_total")
    assert stored == {
        (("event_type", "CREATE"), ("stream", "api")): 2.0,
        (("event_type", "DELETE"), ("stream", "api")): 1.0,
        (("event_type", "READ"), ("stream", "api")): 1.0,
        (("event_type", "UPDATE"), ("stream", "api")): 1.0,
    }


async def test_request_durations_are_labelled_by_route_template(api: Client) -> None:
    posted = await (await api.post("/v1/events", json={"entity": "c", "event_type": "READ"})).json()
    for _ in range(2):
        assert (await api.get(f"/v1/events/{posted['id']}")).status == 200
    assert (await api.get("/v1/events/0193c1c4-5a1e-7c3b-9f4e-2b8d1c0a9e78")).status == 404
    assert (await api.get("/no/such/route")).status == 404
    for method in ("PROPFIND", "MKCOL"):  # methods HTTP knows, none of them a series
        assert (await api.request(method, "/v1/events")).status == 405
    counts = samples(await metrics_text(api), "auditor_http_request_duration_seconds_count")
    route = "/v1/events/{event_id}"
    assert counts[(("method", "GET"), ("route", route), ("status", "200"))] == 2
    assert counts[(("method", "GET"), ("route", route), ("status", "404"))] == 1
    assert counts[(("method", "POST"), ("route", "/v1/events"), ("status", "201"))] == 1
    assert counts[(("method", "GET"), ("route", "unmatched"), ("status", "404"))] == 1
    assert counts[(("method", "other"), ("route", "unmatched"), ("status", "405"))] == 2
    assert not any(value in ("PROPFIND", "MKCOL") for labels in counts for _, value in labels)
    assert not any(posted["id"] in value for labels in counts for _, value in labels)


async def test_a_store_failure_during_a_request_is_counted(
    api: Client, store: AuditStore
) -> None:
    # A real failure, whichever process commits the post: its tables are gone.
    with store.engines.write.begin() as conn:
        conn.exec_driver_sql("DROP TABLE event_properties")
        conn.exec_driver_sql("DROP TABLE events")
    response = await api.post("/v1/events", json={"entity": "c", "event_type": "READ"})
    assert response.status == 503
    assert samples(await metrics_text(api), "auditor_store_errors_total") == {(): 1.0}


async def test_capture_gauges_and_a_registry_per_app(api: Client) -> None:
    api.app[METRICS].set_capture("billing", backlog=12, lag_seconds=0.25)
    text = await metrics_text(api)
    assert samples(text, "auditor_capture_backlog") == {(("source", "billing"),): 12.0}
    assert samples(text, "auditor_capture_lag_seconds") == {(("source", "billing"),): 0.25}
    # Nothing of this app is in the process-global registry.
    from prometheus_client import REGISTRY

    assert REGISTRY.get_sample_value("auditor_capture_backlog", {"source": "billing"}) is None
