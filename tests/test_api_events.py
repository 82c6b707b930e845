"""`/v1/events` through a real aiohttp server on loopback, against both stores."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import orjson
from aiohttp.test_utils import TestClient

Client = TestClient[Any, Any]

EVENT = {
    "entity": "customer",
    "entity_id": "73",
    "event_type": "update",
    "action": "customer.updated",
    "actor": {"id": "073", "name": "SUBIN JEONG", "ip": "125.22.33.22"},
    "occurred_at": "2026-11-28T12:00:00.123Z",
    "properties": ["name"],
    "before": {"id": 73, "name": "SUBIN"},
    "after": {"id": 73, "name": "SUBIN JEONG"},
    "metadata": {"request_id": "r-1"},
}


async def post(api: Client, body: Any, content_type: str = "application/json") -> Any:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return await api.post("/v1/events", data=raw, headers={"Content-Type": content_type})


async def test_post_one_event_and_read_it_back(api: Client) -> None:
    response = await post(api, EVENT)
    assert response.status == 201
    created = await response.json()
    assert response.headers["Location"] == f"/v1/events/{created['id']}"
    assert uuid.UUID(created["id"]).version == 7
    assert created["stream"] == "api" and created["seq"] == 1
    assert created["event_type"] == "UPDATE"
    assert created["occurred_at"] == "2026-11-28T12:00:00.123Z"
    assert created["recorded_at"].endswith("Z") and len(created["recorded_at"]) == 24
    assert created["actor"] == EVENT["actor"]
    assert created["before"] == EVENT["before"] and created["after"] == EVENT["after"]
    assert len(created["hash"]) == 64

    fetched = await api.get(f"/v1/events/{created['id']}")
    assert fetched.status == 200
    assert await fetched.json() == created


async def test_unknown_event_is_a_404_problem(api: Client) -> None:
    for path in (f"/v1/events/{uuid.uuid4()}", "/v1/events/not-a-uuid"):
        response = await api.get(path)
        assert response.status == 404
        assert response.content_type == "application/problem+json"
        body = await response.json()
        assert body["status"] == 404 and body["title"] == "Not Found" and body["detail"]


async def test_client_id_makes_a_post_idempotent(api: Client) -> None:
    event_id = str(uuid.uuid4())
    first = await post(api, {**EVENT, "id": event_id})
    again = await post(api, {**EVENT, "id": event_id, "entity": "changed"})
    assert (first.status, again.status) == (201, 200)
    assert await first.json() == await again.json()
    listing = await (await api.get("/v1/events")).json()
    assert len(listing["events"]) == 1


async def test_batch_is_all_or_nothing(api: Client) -> None:
    good = [{**EVENT, "entity_id": str(i)} for i in range(5)]
    response = await post(api, {"events": good})
    assert response.status == 201
    body = await response.json()
    assert [e["seq"] for e in body["events"]] == [1, 2, 3, 4, 5]

    bad = [*good, {"entity": "x", "event_type": "EXPLODE"}, {"event_type": "READ"}]
    response = await post(api, {"events": bad})
    assert response.status == 422
    problem = await response.json()
    fields = {e["field"] for e in problem["errors"]}
    assert fields == {"events[5].event_type", "events[6].entity"}
    listing = await (await api.get("/v1/events?limit=1000")).json()
    assert len(listing["events"]) == 5


async def test_batch_of_ten_thousand_and_not_one_more(api: Client) -> None:
    small = {"entity": "e", "event_type": "READ"}
    response = await post(api, {"events": [small] * 10_000})
    assert response.status == 201
    assert len((await response.json())["events"]) == 10_000
    response = await post(api, {"events": [small] * 10_001})
    assert response.status == 413
    page = await (await api.get("/v1/events?limit=1")).json()
    assert page["events"][0]["seq"] == 10_000


async def test_ndjson(api: Client) -> None:
    lines = b"\n".join(orjson.dumps({**EVENT, "entity_id": str(i)}) for i in range(3)) + b"\n"
    response = await post(api, lines, "application/x-ndjson")
    assert response.status == 201
    assert [e["entity_id"] for e in (await response.json())["events"]] == ["0", "1", "2"]
    response = await post(api, lines + b"{broken\n", "application/x-ndjson")
    assert response.status == 422
    assert (await response.json())["errors"][0]["field"] == "body"


async def test_cloudevents_structured_and_batch(api: Client) -> None:
    cloud = {
        "specversion": "1.0",
        "id": "evt-1",
        "source": "/billing/invoicer",
        "type": "charge.created",
        "subject": "ch_1",
        "time": "2026-11-28T10:00:00Z",
        "data": {"entity": "charge", "event_type": "CREATE", "after": {"amount": 1200}},
    }
    response = await post(api, cloud, "application/cloudevents+json")
    assert response.status == 201
    event = await response.json()
    assert event["action"] == "charge.created" and event["entity_id"] == "ch_1"
    assert event["occurred_at"] == "2026-11-28T10:00:00.000Z"
    assert event["metadata"]["cloudevents"] == {"source": "/billing/invoicer", "id": "evt-1"}
    again = await post(api, cloud, "application/cloudevents+json")
    assert again.status == 200 and (await again.json())["id"] == event["id"]

    batch = [{**cloud, "id": f"evt-{i}"} for i in range(2, 5)]
    response = await post(api, batch, "application/cloudevents-batch+json")
    assert response.status == 201
    assert len((await response.json())["events"]) == 3
    response = await post(api, [{**cloud, "data": None}], "application/cloudevents-batch+json")
    assert response.status == 422


async def test_an_invalid_single_cloudevent_is_a_422(api: Client) -> None:
    """Found by schemathesis: invalid `data` in a structured CloudEvent was a 500."""
    cloud = {"specversion": "1.0", "id": "e", "source": "/s", "type": "t"}
    bad_data = {"entity": "charge", "event_type": "CREATE", "occurred_at": "soon"}
    for body in ({**cloud, "data": bad_data}, {**cloud, "data": None}, ["not", "an", "object"]):
        response = await post(api, body, "application/cloudevents+json")
        assert response.status == 422, body
        assert response.content_type == "application/problem+json"
    fields = [
        e["field"]
        for e in (
            await (
                await post(api, {**cloud, "data": bad_data}, "application/cloudevents+json")
            ).json()
        )["errors"]
    ]
    assert fields == ["data.occurred_at"]
    listing = await (await api.get("/v1/events")).json()
    assert listing["events"] == []


async def test_query_filters_over_http(api: Client) -> None:
    events = [
        {**EVENT, "entity_id": "1", "event_type": "CREATE", "occurred_at": "2026-01-01"},
        {**EVENT, "entity_id": "2", "actor": "other", "occurred_at": "2026-02-01"},
        {
            **EVENT,
            "entity": "charge",
            "entity_id": "3",
            "properties": ["amount"],
            "occurred_at": "2026-03-01T00:00:00+02:00",
        },
    ]
    assert (await post(api, {"events": events})).status == 201

    async def ids(query: str) -> list[str]:
        response = await api.get(f"/v1/events?{query}")
        assert response.status == 200, await response.text()
        return [e["entity_id"] for e in (await response.json())["events"]]

    assert await ids("") == ["3", "2", "1"]
    assert await ids("order=asc") == ["1", "2", "3"]
    assert await ids("actor=073") == ["3", "1"]
    assert await ids("entity=charge") == ["3"]
    assert await ids("entity=customer&entity_id=2") == ["2"]
    assert await ids("event_type=create&event_type=UPDATE") == ["3", "2", "1"]
    assert await ids("event_type=CREATE") == ["1"]
    assert await ids("action=customer.updated&stream=api") == ["3", "2", "1"]
    assert await ids("property=amount") == ["3"]
    assert await ids("since=2026-01-15&until=2026-02-28T21:59:59Z") == ["2"]
    assert await ids("since=2026-02-28T22:00:00Z") == ["3"]


async def test_keyset_pagination_is_stable_while_events_arrive(api: Client) -> None:
    await post(api, {"events": [{**EVENT, "entity_id": str(i)} for i in range(7)]})
    seen: list[str] = []
    url = "/v1/events?limit=3&order=desc"
    while url:
        page = await (await api.get(url)).json()
        seen += [e["entity_id"] for e in page["events"]]
        await post(api, {**EVENT, "entity_id": "new"})
        url = (
            f"/v1/events?limit=3&order=desc&cursor={page['next_cursor']}"
            if page["next_cursor"]
            else ""
        )
    assert seen == [str(i) for i in reversed(range(7))]


async def test_cursor_is_bound_to_its_filters(api: Client) -> None:
    await post(api, {"events": [EVENT] * 3})
    page = await (await api.get("/v1/events?limit=1&entity=customer")).json()
    cursor = page["next_cursor"]
    assert (await api.get(f"/v1/events?limit=1&entity=customer&cursor={cursor}")).status == 200
    response = await api.get(f"/v1/events?limit=1&entity=charge&cursor={cursor}")
    assert response.status == 400
    assert (await response.json())["errors"][0]["field"] == "cursor"


async def test_concurrent_posts_get_gapless_seqs(api: Client) -> None:
    responses = await asyncio.gather(
        *(post(api, {**EVENT, "entity_id": str(i)}) for i in range(200))
    )
    assert {r.status for r in responses} == {201}
    seqs = sorted([(await r.json())["seq"] for r in responses])
    assert seqs == list(range(1, 201))
