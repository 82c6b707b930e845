"""The OpenAPI document: valid OpenAPI 3.1, served, and in step with the routes."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient
from openapi_spec_validator import validate

from web.openapi import document
from web.problems import SEED_PREFIXES

Client = TestClient[Any, Any]

# Routes documented (from SPEC.md) ahead of the code that serves them. None now:
# every route of SPEC is served. Add one here when documenting a route before
# it lands, and remove it in the change that serves it (the test below says so).
NOT_YET_SERVED: set[tuple[str, str]] = set()


def template(path: str) -> str:
    """Parameter names do not matter, only where parameters are."""
    return re.sub(r"\{[^}]*\}", "{}", path)


def served_routes(app: web.Application) -> set[tuple[str, str]]:
    routes = set()
    for route in app.router.routes():
        if route.method == "HEAD":  # aiohttp adds HEAD to every GET route
            continue
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        assert path, f"route without a path: {route}"
        routes.add((route.method, template(path)))
    return routes


def documented_routes() -> set[tuple[str, str]]:
    return {
        (method.upper(), template(path))
        for path, item in document()["paths"].items()
        for method in item
    }


def test_the_document_is_valid_openapi_3_1() -> None:
    doc = document()
    assert doc["openapi"].startswith("3.1")
    validate(doc)


async def test_the_document_is_served(api: Client) -> None:
    response = await api.get("/openapi.json")
    assert response.status == 200
    assert response.content_type == "application/json"
    assert await response.json() == document()


async def test_every_route_is_documented_and_every_documented_route_served(api: Client) -> None:
    served = served_routes(api.app)
    documented = documented_routes()
    assert not served - documented, "routes the OpenAPI document lacks: add them to web/openapi.py"
    stale = NOT_YET_SERVED & served
    assert not stale, f"served now: remove from NOT_YET_SERVED: {sorted(stale)}"
    assert documented - served == NOT_YET_SERVED, "documented routes that nothing serves"


def test_every_error_is_a_problem_except_on_the_seed_routes() -> None:
    doc = document()
    for path, item in doc["paths"].items():
        seed = path.startswith(SEED_PREFIXES)
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if int(status) < 400:
                    continue
                if "$ref" in response:
                    name = response["$ref"].rsplit("/", 1)[1]
                    response = doc["components"]["responses"][name]
                content = response["content"]
                expected = "application/json" if seed else "application/problem+json"
                assert list(content) == [expected], (method, path, status)


def test_event_and_problem_schemas() -> None:
    schemas = document()["components"]["schemas"]
    assert set(schemas["Event"]["required"]) == {
        "id",
        "stream",
        "seq",
        "entity",
        "entity_id",
        "event_type",
        "action",
        "properties",
        "before",
        "after",
        "actor",
        "occurred_at",
        "recorded_at",
        "metadata",
        "hash",
    }
    problem = schemas["Problem"]
    assert set(problem["required"]) == {"type", "status", "title", "detail"}
    assert problem["properties"]["errors"]["items"] == {"$ref": "#/components/schemas/FieldError"}
    assert schemas["FieldError"]["required"] == ["field", "message"]
    bearer = document()["components"]["securitySchemes"]["bearerAuth"]
    assert (bearer["type"], bearer["scheme"]) == ("http", "bearer")
