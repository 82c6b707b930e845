"""Bearer-token auth: every registered route by {no token, wrong scope, right scope},
the error shapes, and the daemon's refusal to serve without tokens off loopback."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from config import load_config
from storage.store import AuditStore
from tests.conftest import write_config
from tests.daemon import free_port, run_cli, running_daemon
from web.app import create_app
from web.auth import bearer_token, is_listed, required_scope, route_shape

Client = TestClient[Any, Any]
SOME_ID = str(uuid.uuid4())

# A token per test role: only one scope, or every scope but one.
TOKENS = {
    "only-read": ["read"],
    "only-write": ["write"],
    "only-admin": ["admin"],
    "no-read": ["write", "admin"],
    "no-write": ["read", "admin"],
    "no-admin": ["read", "write"],
}
ALL_SCOPES = ("read", "write", "admin")

# An example path for every parametrized route (keyed by `route_shape`). A route
# added to the app without an example here fails `test_every_route_needs_its_scope`.
EXAMPLE_PATHS = {
    "/get_log/customer/{}": "/get_log/customer/073",
    "/get_log/event/{}": f"/get_log/event/{SOME_ID}",
    "/create_log/{}": "/create_log/073",
    "/update_log/{}": f"/update_log/{SOME_ID}",
    "/delete_log/{}": f"/delete_log/{SOME_ID}",
    "/v1/events/{}": f"/v1/events/{SOME_ID}",
    "/v1/events/{}/redact": f"/v1/events/{SOME_ID}/redact",
    "/v1/events/{}/proof": f"/v1/events/{SOME_ID}/proof",
    "/v1/entities/{}/{}/history": "/v1/entities/customer/73/history",
}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest_asyncio.fixture
async def auth_api(tmp_path: Path, store_url: str, store: AuditStore) -> AsyncIterator[Client]:
    tokens = [{"token": name, "scopes": scopes} for name, scopes in TOKENS.items()]
    config = load_config(write_config(tmp_path, store_url, auth={"tokens": tokens}), environ={})
    async with TestClient(TestServer(create_app(config, store), host="127.0.0.1")) as client:
        yield client


def registered_routes(app: web.Application) -> list[tuple[str, str]]:
    routes = []
    for route in app.router.routes():
        resource = route.resource
        assert resource is not None
        routes.append((route.method, resource.canonical))
    return routes


def example_path(canonical: str) -> str:
    if "{" not in canonical:
        return canonical
    shape = route_shape(canonical)
    assert shape in EXAMPLE_PATHS, f"add an example path for {canonical} to EXAMPLE_PATHS"
    return EXAMPLE_PATHS[shape]


async def status_of(api: Client, method: str, path: str, headers: dict[str, str]) -> int:
    # A connection per request: what a stream leaves unread must not reach the next one.
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        try:
            async with asyncio.timeout(3):
                async with session.request(method, api.make_url(path), headers=headers) as r:
                    return r.status
        except TimeoutError:
            # Auth answers at once; a handler still busy (a stream) has let the request in.
            return 0
        except aiohttp.ClientResponseError as exc:
            raise AssertionError(
                f"{method} {path}: malformed response (a body sent after HEAD?): {exc.message}"
            ) from exc


async def test_every_route_needs_its_scope(auth_api: Client) -> None:
    app = auth_api.app
    assert app is not None
    routes = registered_routes(app)
    assert ("GET", "/v1/streams") in routes and ("HEAD", "/v1/streams") in routes
    for method, canonical in routes:
        where = f"{method} {canonical}"
        assert is_listed(method, canonical), f"{where}: add it to web.auth.ROUTE_SCOPES"
        path = example_path(canonical)
        scope = required_scope(method, canonical)
        if scope is None:
            for headers in ({}, bearer("nonsense")):
                status = await status_of(auth_api, method, path, headers)
                assert status not in (401, 403), where
            continue
        assert await status_of(auth_api, method, path, {}) == 401, where
        assert await status_of(auth_api, method, path, bearer("nonsense")) == 401, where
        assert await status_of(auth_api, method, path, bearer(f"no-{scope}")) == 403, where
        status = await status_of(auth_api, method, path, bearer(f"only-{scope}"))
        assert status not in (401, 403), where


def test_scopes_of_the_spec() -> None:
    assert required_scope("GET", "/v1/events") == "read"
    assert required_scope("HEAD", "/v1/events") == "read"
    assert required_scope("POST", "/v1/events") == "write"
    assert required_scope("POST", "/create_log/{user_id}") == "write"
    assert required_scope("PUT", "/update_log/{event_uuid}") == "admin"
    assert required_scope("DELETE", "/delete_log/{event_uuid}") == "admin"
    assert required_scope("POST", "/v1/events/{event_id}/redact") == "admin"
    assert required_scope("GET", "/v1/verify") == "admin"
    for public in ("/ping", "/healthz", "/readyz"):
        assert required_scope("GET", public) is None
    # Routes nobody listed: read to look, admin to change.
    assert required_scope("GET", "/v1/something-new") == "read"
    assert required_scope("PATCH", "/v1/events/{id}") == "admin"
    assert required_scope("POST", None) == "admin"


async def test_refusals_have_each_route_familys_error_shape(auth_api: Client) -> None:
    response = await auth_api.get("/v1/events")
    assert response.status == 401
    assert response.content_type == "application/problem+json"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    body = await response.json()
    assert body["status"] == 401 and body["title"] == "Unauthorized" and body["detail"]

    response = await auth_api.get("/v1/events", headers=bearer("wrong"))
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]

    response = await auth_api.post("/v1/events", json={}, headers=bearer("only-read"))
    assert response.status == 403
    assert response.content_type == "application/problem+json"
    assert 'scope="write"' in response.headers["WWW-Authenticate"]
    assert (await response.json())["status"] == 403

    response = await auth_api.get("/get_log/customer/073")
    assert response.status == 401
    assert response.content_type == "application/json"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    body = await response.json()
    assert body["result"] == "failed" and body["reason"]

    response = await auth_api.delete(f"/delete_log/{SOME_ID}", headers=bearer("no-admin"))
    assert response.status == 403
    assert (await response.json())["result"] == "failed"


async def test_a_valid_token_gets_through_and_nothing_is_stored_without_one(
    auth_api: Client,
) -> None:
    event = {"entity": "charge", "event_type": "CREATE"}
    refused = await auth_api.post("/v1/events", json=event, headers=bearer("only-read"))
    assert refused.status == 403
    created = await auth_api.post("/v1/events", json=event, headers=bearer("only-write"))
    assert created.status == 201
    listing = await auth_api.get("/v1/events", headers={"Authorization": "bearer only-read"})
    assert listing.status == 200
    assert len((await listing.json())["events"]) == 1
    ping = await auth_api.get("/ping")
    assert ping.status == 200


async def test_unknown_routes_are_not_revealed_without_a_token(auth_api: Client) -> None:
    assert (await auth_api.get("/v1/nothing-here")).status == 401
    found = await auth_api.get("/v1/nothing-here", headers=bearer("only-read"))
    assert found.status == 404
    assert found.content_type == "application/problem+json"
    assert (await auth_api.post("/v1/nothing-here", headers=bearer("no-admin"))).status == 403


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer ", "Basic b25seS1yZWFk", "only-read", "Bearer only-read extra"],
)
def test_malformed_authorization_headers_carry_no_token(header: str | None) -> None:
    assert bearer_token(header) is None


def test_bearer_scheme_is_case_insensitive() -> None:
    assert bearer_token("bearer abc") == "abc"
    assert bearer_token("BEARER  abc ") == "abc"


async def test_without_tokens_everything_is_open(api: Client) -> None:
    assert (await api.get("/v1/events")).status == 200
    assert (await api.get("/v1/verify-nothing")).status == 404


# -- the daemon --------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "::"])
def test_daemon_without_tokens_refuses_a_non_loopback_host(tmp_path: Path, host: str) -> None:
    config = write_config(
        tmp_path, "sqlite:///data/audit.db", server={"host": host, "port": free_port()}
    )
    result = run_cli(config=config, timeout=30)
    assert result.returncode == 2
    assert "server.host" in result.stderr and "auth.tokens" in result.stderr
    assert "loopback" in result.stderr
    assert not (tmp_path / "data" / "audit.db").exists(), "refused before anything started"


def test_daemon_with_a_token_serves_any_host_and_never_logs_tokens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = f"tok-{uuid.uuid4().hex}"
    wrong = f"wrong-{uuid.uuid4().hex}"
    monkeypatch.setenv("AUDITOR_TOKEN", secret)
    monkeypatch.setenv("AUDITOR_LOG_LEVEL", "DEBUG")
    port = free_port()
    config = write_config(
        tmp_path,
        "sqlite:///data/audit.db",
        server={"host": "0.0.0.0", "port": port},
        auth={"tokens": [{"token": "${AUDITOR_TOKEN}", "scopes": ["read", "write"]}]},
    )
    with running_daemon(config, port):
        for token in (secret, wrong):
            for path in ("/v1/events", "/get_log/customer/073", "/v1/export", "/nowhere"):
                status_for_path(port, path, token)
            status_for_path(port, f"/delete_log/{SOME_ID}", token, method="DELETE")
            status_for_path(port, "/v1/events", token, method="POST", body=b"{not json")
        assert status_for_path(port, "/v1/events", secret) == 200
        assert status_for_path(port, "/v1/events", wrong) == 401
        assert status_for_path(port, f"/delete_log/{SOME_ID}", secret, method="DELETE") == 403
    log = (tmp_path / "daemon.log").read_text()
    assert secret not in log and wrong not in log
    assert "auth is off" not in log


def test_daemon_without_tokens_says_once_that_auth_is_off(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(
        tmp_path, "sqlite:///data/audit.db", server={"host": "127.0.0.1", "port": port}
    )
    with running_daemon(config, port):
        assert status_for_path(port, "/v1/events", None) == 200
    log = (tmp_path / "daemon.log").read_text()
    assert log.count("auth is off") == 1 and "loopback" in log


def status_for_path(
    port: int, path: str, token: str | None, method: str = "GET", body: bytes | None = None
) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status: int = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
        exc.close()
    return status
