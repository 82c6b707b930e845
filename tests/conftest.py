"""Shared fixtures: real stores (a SQLite file, a fresh PostgreSQL schema) and a
real aiohttp server on loopback.

PostgreSQL: `AUDITOR_TEST_PG` (default `postgresql://postgres@127.0.0.1:5432/test`).
A fresh database is created for the test session and dropped after it; each
test gets its own schema in it. Without a reachable server the PostgreSQL
tests are not run, with a message saying why, except under `CI=true`, where
they fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
import pytest_asyncio
import yaml
from aiohttp.test_utils import TestClient, TestServer

from config import Config, load_config
from storage.store import AuditStore
from web.app import create_app

PG_ADMIN_URL = os.environ.get("AUDITOR_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session; its psycopg URL."""
    name = f"auditor_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        message = f"PostgreSQL is not reachable at {PG_ADMIN_URL} ({exc.__class__.__name__})"
        if IN_CI:
            pytest.fail(f"{message}; in CI the PostgreSQL tests must run", pytrace=False)
        reason = f"{message}; set AUDITOR_TEST_PG to run the PostgreSQL tests"
        # Under CI=true this fails instead (above), so CI always runs the PostgreSQL tests.
        # Justified: the guide wants them left out, with a clear message, without PostgreSQL.
        pytest.skip(reason)  # justified: no PostgreSQL server outside CI (the guide's rule)
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_database: str) -> Iterator[str]:
    """A store URL whose tables live in a schema of their own, dropped after the test."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    plain = pg_database.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    yield f"{pg_database}?options={quote(f'-csearch_path={schema}')}"
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Every contract test runs against both stores."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'audit.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def store(store_url: str) -> Iterator[AuditStore]:
    opened = AuditStore.open(store_url)
    yield opened
    opened.close()


def write_config(tmp_path: Path, store_url: str, **sections: Any) -> Path:
    """A config.yaml in tmp_path for `store_url`, with extra top-level sections."""
    document: dict[str, Any] = {"store": {"url": store_url}, **sections}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture
def config(tmp_path: Path, store_url: str) -> Config:
    return load_config(write_config(tmp_path, store_url), environ={})


@pytest_asyncio.fixture
async def api(config: Config, store: AuditStore) -> AsyncIterator[TestClient[Any, Any]]:
    """A client of the real app, served by a real aiohttp server on 127.0.0.1."""
    server = TestServer(create_app(config, store), host="127.0.0.1")
    async with TestClient(server) as client:
        yield client
