"""`GET /v1/streams` against both stores."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp.test_utils import TestClient

from storage.events import Actor, EventType, NewEvent
from storage.store import AppendRequest, AuditStore

Client = TestClient[Any, Any]


async def test_no_streams_before_any_event(api: Client) -> None:
    response = await api.get("/v1/streams")
    assert response.status == 200
    assert await response.json() == {"streams": []}


async def test_each_stream_shows_its_head(api: Client, store: AuditStore) -> None:
    response = await api.post("/v1/events", json={"entity": "charge", "event_type": "CREATE"})
    first = await response.json()
    store.append(
        [
            AppendRequest(
                [
                    NewEvent(
                        stream="billing",
                        entity="customer",
                        event_type=EventType.CREATE,
                        actor=Actor("system"),
                        occurred_at=datetime(2026, 1, 1, tzinfo=UTC),
                    )
                    for _ in range(3)
                ]
            )
        ]
    )
    body = await (await api.get("/v1/streams")).json()
    assert [s["name"] for s in body["streams"]] == ["api", "billing"]
    api_stream, billing = body["streams"]
    assert set(api_stream) >= {"name", "head_seq", "head_hash", "updated_at"}
    # A tree of one leaf has that leaf's hash as its root.
    assert api_stream["head_seq"] == 1 and api_stream["head_hash"] == first["hash"]
    assert api_stream["updated_at"] == first["recorded_at"]
    assert billing["head_seq"] == 3 and len(billing["head_hash"]) == 64
    assert billing["head_hash"] == store.streams()[1].head_hash
