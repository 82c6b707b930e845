"""`GET /v1/entities/{entity}/{entity_id}/history` against both stores."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

Client = TestClient[Any, Any]
HISTORY = "/v1/entities/customer/73/history"


def event(event_type: str, at: str, **fields: Any) -> dict[str, Any]:
    return {
        "entity": "customer",
        "entity_id": "73",
        "event_type": event_type,
        "occurred_at": at,
        **fields,
    }


async def post(api: Client, *events: dict[str, Any]) -> list[dict[str, Any]]:
    response = await api.post("/v1/events", json={"events": list(events)})
    assert response.status == 201, await response.text()
    stored: list[dict[str, Any]] = (await response.json())["events"]
    return stored


async def history(api: Client, path: str = HISTORY, **params: str) -> dict[str, Any]:
    response = await api.get(path, params=params)
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return body


async def test_state_follows_the_events_up_to_as_of(api: Client) -> None:
    stored = await post(
        api,
        event("CREATE", "2026-01-01T10:00:00Z", after={"id": 73, "name": "SUBIN"}),
        event("UPDATE", "2026-01-02T10:00:00Z", after={"id": 73, "name": "SUBIN JEONG"}),
        event("READ", "2026-01-03T10:00:00Z"),
        event("UPDATE", "2026-01-04T10:00:00Z", before={"id": 73, "name": "SUBIN JEONG"}),
        event("DELETE", "2026-01-05T10:00:00Z", before={"id": 73, "name": "SUBIN JEONG"}),
        {**event("CREATE", "2026-01-01T10:00:00Z"), "entity_id": "74"},
    )
    body = await history(api)
    assert body["entity"] == "customer" and body["entity_id"] == "73"
    assert [e["id"] for e in body["events"]] == [e["id"] for e in stored[:5]]
    assert body["events"][0] == stored[0]
    assert body["state"] is None  # deleted
    assert body["state_redacted"] is False
    assert body["as_of"].endswith("Z") and len(body["as_of"]) == 24

    cases = {
        "2025-12-31": None,
        "2026-01-01T10:00:00Z": {"id": 73, "name": "SUBIN"},  # inclusive
        "2026-01-02": {"id": 73, "name": "SUBIN"},  # a date is its midnight UTC
        "2026-01-02T10:00:00.000Z": {"id": 73, "name": "SUBIN JEONG"},
        # READ and UPDATE without `after` keep the last known state
        "2026-01-04T12:00:00+02:00": {"id": 73, "name": "SUBIN JEONG"},
        "2026-01-05T10:00:00Z": None,
    }
    for as_of, state in cases.items():
        at = await history(api, as_of=as_of)
        assert at["state"] == state, as_of
        assert len(at["events"]) == 5, "every event, whatever as_of"
    assert (await history(api, as_of="2026-01-04T12:00:00+02:00"))["as_of"] == (
        "2026-01-04T10:00:00.000Z"
    )


async def test_events_come_oldest_first_whatever_order_they_were_stored_in(api: Client) -> None:
    late = await post(api, event("UPDATE", "2026-03-01T00:00:00Z", after={"v": 2}))
    early = await post(api, event("CREATE", "2026-02-01T00:00:00Z", after={"v": 1}))
    tie = await post(api, event("UPDATE", "2026-03-01T00:00:00Z", after={"v": 3}))
    body = await history(api)
    assert [e["id"] for e in body["events"]] == [early[0]["id"], late[0]["id"], tie[0]["id"]]
    assert body["state"] == {"v": 3}, "at the same time, the later stored event wins"


async def test_a_redacted_change_makes_the_state_unknown_until_a_later_one(api: Client) -> None:
    created, updated = await post(
        api,
        event("CREATE", "2026-01-01T00:00:00Z", after={"card": "1234"}),
        event("UPDATE", "2026-01-02T00:00:00Z", after={"card": "5678"}),
    )
    response = await api.delete(f"/delete_log/{updated['id']}")
    assert response.status == 200
    body = await history(api)
    assert body["events"][1]["redacted"] is True
    assert body["state"] is None and body["state_redacted"] is True
    assert (await history(api, as_of="2026-01-01"))["state_redacted"] is False
    assert (await history(api, as_of="2026-01-01T12:00:00Z"))["state"] == {"card": "1234"}

    await post(api, event("UPDATE", "2026-01-03T00:00:00Z", after={"card": "9999"}))
    body = await history(api)
    assert body["state"] == {"card": "9999"} and body["state_redacted"] is False
    # The redaction record is an event of the audit trail, not of the customer.
    assert all(e["entity"] == "customer" for e in body["events"])
    assert created["id"] == body["events"][0]["id"]


async def test_history_reads_past_one_page(api: Client) -> None:
    events = [
        event("UPDATE", f"2026-01-01T00:{i // 60:02d}:{i % 60:02d}Z", after={"n": i})
        for i in range(2500)
    ]
    await post(api, *events)
    body = await history(api)
    assert len(body["events"]) == 2500
    assert body["state"] == {"n": 2499}
    assert [e["after"]["n"] for e in body["events"]] == list(range(2500))


async def test_unknown_record_is_a_404_problem(api: Client) -> None:
    await post(api, event("CREATE", "2026-01-01T00:00:00Z"))
    for path in ("/v1/entities/customer/999/history", "/v1/entities/nobody/73/history"):
        response = await api.get(path)
        assert response.status == 404
        assert response.content_type == "application/problem+json"
        assert (await response.json())["status"] == 404


async def test_bad_parameters_are_400_problems(api: Client) -> None:
    await post(api, event("CREATE", "2026-01-01T00:00:00Z"))
    for params, field in (
        ({"as_of": "yesterday"}, "as_of"),
        ({"as_of": "2026-13-01"}, "as_of"),
        ({"limit": "5"}, "limit"),
    ):
        response = await api.get(HISTORY, params=params)
        assert response.status == 400, params
        body = await response.json()
        assert [e["field"] for e in body["errors"]] == [field]
    response = await api.get(f"/v1/entities/customer/{'x' * 201}/history")
    assert response.status == 400
