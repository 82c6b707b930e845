"""Bad input: every case gets a clear 4xx, stores nothing, and the server keeps serving."""

from __future__ import annotations

import io
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

Client = TestClient[Any, Any]
GOOD = {"entity": "customer", "event_type": "CREATE"}


def deep(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels):
        value = {"a": value}
    return value


POST_CASES: list[tuple[str, bytes, str, int, str | None]] = [
    ("malformed json", b'{"entity": ', "application/json", 400, None),
    ("empty body", b"", "application/json", 400, None),
    ("json array", b"[1, 2]", "application/json", 422, "body"),
    ("json string", b'"hello"', "application/json", 422, "body"),
    ("missing entity", orjson.dumps({"event_type": "READ"}), "application/json", 422, "entity"),
    ("missing type", orjson.dumps({"entity": "x"}), "application/json", 422, "event_type"),
    (
        "unknown type",
        orjson.dumps({**GOOD, "event_type": "EXPLODE"}),
        "application/json",
        422,
        "event_type",
    ),
    ("entity wrong type", orjson.dumps({**GOOD, "entity": 5}), "application/json", 422, "entity"),
    ("entity empty", orjson.dumps({**GOOD, "entity": "  "}), "application/json", 422, "entity"),
    (
        "entity too long",
        orjson.dumps({**GOOD, "entity": "x" * 201}),
        "application/json",
        422,
        "entity",
    ),
    (
        "bad date",
        orjson.dumps({**GOOD, "occurred_at": "yesterday"}),
        "application/json",
        422,
        "occurred_at",
    ),
    (
        "impossible date",
        orjson.dumps({**GOOD, "datetime": "2022-02-30"}),
        "application/json",
        422,
        "datetime",
    ),
    (
        "bad actor ip",
        orjson.dumps({**GOOD, "actor": {"id": "1", "ip": "999.1.1.1"}}),
        "application/json",
        422,
        "actor.ip",
    ),
    (
        "actor without id",
        orjson.dumps({**GOOD, "actor": {"name": "x"}}),
        "application/json",
        422,
        "actor.id",
    ),
    ("before not object", orjson.dumps({**GOOD, "before": [1]}), "application/json", 422, "before"),
    (
        "properties not list",
        orjson.dumps({**GOOD, "properties": {"a": 1}}),
        "application/json",
        422,
        "properties",
    ),
    ("unknown field", orjson.dumps({**GOOD, "colour": "red"}), "application/json", 422, "colour"),
    ("deep nesting", orjson.dumps({**GOOD, "after": deep(40)}), "application/json", 422, "after"),
    (
        "very deep nesting",
        b'{"after":' + b'{"a":' * 5000 + b"1" + b"}" * 5001,
        "application/json",
        400,
        None,
    ),
    (
        "nul in entity",
        orjson.dumps({**GOOD, "entity": "cust\x00omer"}),
        "application/json",
        422,
        "entity",
    ),
    (
        "nul in payload",
        orjson.dumps({**GOOD, "after": {"k": "v\x00"}}),
        "application/json",
        422,
        "after",
    ),
    (
        "nul in key",
        orjson.dumps({**GOOD, "metadata": {"k\x00": 1}}),
        "application/json",
        422,
        "metadata",
    ),
    ("not utf-8", b'{"entity": "\xff\xfe", "event_type": "READ"}', "application/json", 400, None),
    ("bad id", orjson.dumps({**GOOD, "id": "not-a-uuid"}), "application/json", 422, "id"),
    ("empty batch", orjson.dumps({"events": []}), "application/json", 422, "events"),
    ("unsupported type", orjson.dumps(GOOD), "text/xml", 415, None),
    (
        "sql in entity",
        orjson.dumps({**GOOD, "entity": "x'; DROP TABLE events; --" * 20}),
        "application/json",
        422,
        "entity",
    ),
]


@pytest.mark.parametrize(
    ("name", "body", "content_type", "status", "field"), POST_CASES, ids=[c[0] for c in POST_CASES]
)
async def test_bad_posts_are_refused_and_store_nothing(
    api: Client, name: str, body: bytes, content_type: str, status: int, field: str | None
) -> None:
    response = await api.post("/v1/events", data=body, headers={"Content-Type": content_type})
    assert response.status == status, await response.text()
    assert response.content_type == "application/problem+json"
    problem = await response.json()
    assert problem["status"] == status and problem["title"] and problem["detail"]
    if field is not None:
        assert field in {e["field"] for e in problem["errors"]}
    await assert_nothing_stored_and_still_serving(api)


QUERY_CASES = [
    ("limit=0", "limit"),
    ("limit=1001", "limit"),
    ("limit=ten", "limit"),
    ("limit=-1", "limit"),
    ("order=sideways", "order"),
    ("event_type=EXPLODE", "event_type"),
    ("since=not-a-date", "since"),
    ("until=2026-13-01", "until"),
    ("cursor=bogus", "cursor"),
    ("cursor=eyJ2IjoxLCJrIjoiMSJ9", "cursor"),
    ("cursor=" + "A" * 300, "cursor"),
    ("colour=red", "colour"),
    ("actor=a&actor=b", "actor"),
    ("actor=" + "x" * 201, "actor"),
]


@pytest.mark.parametrize(("query", "field"), QUERY_CASES, ids=[c[0][:30] for c in QUERY_CASES])
async def test_bad_queries_are_400_naming_the_parameter(
    api: Client, query: str, field: str
) -> None:
    response = await api.get(f"/v1/events?{query}")
    assert response.status == 400
    problem = await response.json()
    assert field in {e["field"] for e in problem["errors"]}


async def test_sql_fragments_in_filters_are_just_values(api: Client) -> None:
    await api.post("/v1/events", json=GOOD)
    for value in ("' OR '1'='1", 'x"; DROP TABLE events; --', "%", "_"):
        response = await api.get("/v1/events", params={"actor": value, "entity": value})
        assert response.status == 200
        assert (await response.json())["events"] == []
    assert len((await (await api.get("/v1/events")).json())["events"]) == 1


async def test_body_over_10_mib_is_413_without_reading_it(api: Client) -> None:
    big = b'{"entity": "x", "event_type": "READ", "after": {"blob": "' + b"a" * (11 << 20) + b'"}}'
    response = await api.post(
        "/v1/events", data=io.BytesIO(big), headers={"Content-Type": "application/json"}
    )
    assert response.status == 413
    assert response.content_type == "application/problem+json"

    async def chunks() -> Any:
        for _ in range(12):
            yield b"a" * (1 << 20)

    response = await api.post(
        "/v1/events", data=chunks(), headers={"Content-Type": "application/json"}
    )
    assert response.status == 413
    await assert_nothing_stored_and_still_serving(api)


async def test_unknown_route_and_method_are_problems(api: Client) -> None:
    response = await api.get("/v1/nothing-here")
    assert response.status == 404 and response.content_type == "application/problem+json"
    response = await api.delete("/v1/events")
    assert response.status == 405 and response.content_type == "application/problem+json"


async def assert_nothing_stored_and_still_serving(api: Client) -> None:
    listing = await api.get("/v1/events")
    assert listing.status == 200
    assert (await listing.json())["events"] == []
    assert (await api.get("/ping")).status == 200
