"""The seed routes, with exactly the seed's JSON shapes, against both stores."""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp.test_utils import TestClient

Client = TestClient[Any, Any]
SEED_KEYS = {"result", "entity", "property", "event_uuid", "event_type", "datetime", "customer"}


async def create(api: Client, user: str, body: str) -> dict[str, Any]:
    # The seed's clients use `curl -d`, which sends form encoding: the body is read as JSON anyway.
    response = await api.post(
        f"/create_log/{user}",
        data=body,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status == 200, await response.text()
    result: dict[str, Any] = await response.json()
    return result


async def test_ping(api: Client) -> None:
    response = await api.get("/ping")
    assert response.status == 200
    assert await response.json() == {"result": "success", "message": "pong"}


async def test_create_then_get_by_event_and_by_customer(api: Client) -> None:
    created = await create(
        api,
        "073",
        '{"entity": "CustomerData", "datetime": "2022-02-02", "event_type": "CREATE",'
        ' "property": "name", "name": "SUBIN JEONG", "ip": "125.22.33.22"}',
    )
    assert set(created) == SEED_KEYS
    assert created["result"] == "success" and created["entity"] == "CustomerData"
    assert created["event_type"] == "CREATE" and created["property"] == ["name"]
    assert created["datetime"] == "2022-02-02T00:00:00.000Z"
    assert created["customer"] == "073 SUBIN JEONG ,125.22.33.22"

    one = await (await api.get(f"/get_log/event/{created['event_uuid']}")).json()
    assert one == created

    await create(api, "073", '{"entity": "CustomerData", "event_type": "UPDATE"}')
    await create(api, "999", '{"entity": "CustomerData", "event_type": "READ"}')
    listing = await (await api.get("/get_log/customer/073")).json()
    assert listing["result"] == "success"
    assert [e["event_type"] for e in listing["events"]] == ["UPDATE", "CREATE"]
    event = await (await api.get(f"/v1/events/{created['event_uuid']}")).json()
    assert event["stream"] == "api" and event["actor"]["id"] == "073"


async def test_unknown_event_is_failed_does_not_exist(api: Client) -> None:
    for path in (f"/get_log/event/{uuid.uuid4()}", "/get_log/event/garbage"):
        response = await api.get(path)
        assert response.status == 404
        assert await response.json() == {"result": "failed", "reason": "does not exist"}
    response = await api.put(f"/update_log/{uuid.uuid4()}", data="{}")
    assert response.status == 404
    response = await api.delete(f"/delete_log/{uuid.uuid4()}")
    assert response.status == 404


async def test_bad_create_is_400_with_reason_and_stores_nothing(api: Client) -> None:
    for body in (
        "not json",
        '{"entity": "x"}',
        '{"entity": "x", "event_type": "NOPE"}',
        '{"entity": "x", "event_type": "READ", "datetime": "2022-02-31"}',
        "[]",
    ):
        response = await api.post("/create_log/073", data=body)
        assert response.status == 400, body
        failure = await response.json()
        assert failure["result"] == "failed" and failure["reason"]
    assert (await (await api.get("/get_log/customer/073")).json())["events"] == []


async def test_update_appends_a_correction_and_keeps_the_original(api: Client) -> None:
    created = await create(
        api, "073", '{"entity": "CustomerData", "event_type": "CREATE", "after": {"name": "SUBIN"}}'
    )
    response = await api.put(
        f"/update_log/{created['event_uuid']}", data='{"after": {"name": "SUBIN JEONG"}}'
    )
    assert response.status == 200
    correction = await response.json()
    assert correction["event_uuid"] != created["event_uuid"]
    amended = await (await api.get(f"/v1/events/{correction['event_uuid']}")).json()
    assert amended["metadata"] == {"amends": created["event_uuid"]}
    assert amended["after"] == {"name": "SUBIN JEONG"} and amended["entity"] == "CustomerData"
    original = await (await api.get(f"/v1/events/{created['event_uuid']}")).json()
    assert original["after"] == {"name": "SUBIN"}


async def test_delete_redacts_and_records_the_redaction(api: Client) -> None:
    created = await create(
        api, "073", '{"entity": "CustomerData", "event_type": "CREATE", "after": {"card": "4111"}}'
    )
    before = await (await api.get(f"/v1/events/{created['event_uuid']}")).json()
    response = await api.delete(f"/delete_log/{created['event_uuid']}")
    assert response.status == 200
    assert (await response.json())["event_uuid"] == created["event_uuid"]
    after = await (await api.get(f"/v1/events/{created['event_uuid']}")).json()
    assert after["after"] is None and after["before"] is None and after["metadata"] == {}
    assert after["redacted"] is True and after["hash"] == before["hash"]
    log = await (await api.get("/v1/events?entity=audit_event")).json()
    assert [e["metadata"]["redacts"] for e in log["events"]] == [created["event_uuid"]]
