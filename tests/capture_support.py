"""Helpers for the capture tests: configs, a separate SQL process, capture in process,
and the two sides reconciliation compares (the trail's fold, the table's rows)."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import yaml

from cdc.service import CaptureService
from config import load_config
from storage.events import EventType
from storage.query import EventQuery
from storage.store import AuditStore
from storage.writer import GroupCommitWriter
from tests.daemon import ROOT, free_port

_SQL_PROCESS = (
    "import sqlite3, sys\n"
    "conn = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)\n"
    "conn.executescript(sys.argv[2])\n"
)


def run_sql(database: Path, sql: str) -> None:
    """Run an SQL script on the billing database from a separate process, as the billing
    service (or its migration tool) would."""
    subprocess.run(
        [sys.executable, "-c", _SQL_PROCESS, str(database), sql], check=True, timeout=60, cwd=ROOT
    )


def write_config(tmp_path: Path, tables: Sequence[Any], **capture: Any) -> Path:
    document = {
        "store": {"url": "sqlite:///audit.db"},
        "server": {"host": "127.0.0.1", "port": free_port()},
        "capture": {"poll_interval": 0.2, "snapshot": False, **capture},
        "sources": [{"name": "billing", "database": "billing.db", "tables": list(tables)}],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@asynccontextmanager
async def capturing(config_path: Path) -> AsyncIterator[tuple[CaptureService, AuditStore]]:
    """The capture service in this process, with a real store and group-commit writer."""
    config = load_config(config_path)
    store = AuditStore.open(config.store.url)
    writer = GroupCommitWriter(store)
    await writer.start()
    service = CaptureService(config, store, writer)
    try:
        await service.start()
        yield service, store
    finally:
        await service.stop()
        await writer.stop()
        store.close()


async def wait_for(predicate: Callable[[], bool], what: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def trail_state(store: AuditStore, entity: str, stream: str = "billing") -> dict[str, Any]:
    """The fold of the trail: entity_id → the last `after` (deleted rows absent)."""
    state: dict[str, Any] = {}
    for event in store.iter_events(EventQuery(stream=stream, entity=entity, order="asc")):
        assert event.entity_id is not None
        if event.event_type is EventType.DELETE:
            state.pop(event.entity_id, None)
        elif event.after is not None:
            state[event.entity_id] = event.after
    return state


def table_state(
    database: Path, table: str, *, key: str = "id", mask: Iterable[str] = ()
) -> dict[str, Any]:
    """entity_id → the row as a captured change shows it (masked columns as "***")."""
    masked = set(mask)
    conn = sqlite3.connect(database)
    conn.row_factory = sqlite3.Row
    try:
        rows = conn.execute(f'SELECT * FROM "{table}"').fetchall()
    finally:
        conn.close()
    # sqlite3.Row iterates its values, not its column names: keys() is needed.
    return {
        str(row[key]): {c: "***" if c in masked else row[c] for c in row.keys()}  # noqa: SIM118
        for row in rows
    }


def without(state: dict[str, Any], *columns: str) -> dict[str, Any]:
    """`state` with `columns` left out of every row (ignored columns lag by design)."""
    return {k: {c: v for c, v in row.items() if c not in columns} for k, row in state.items()}


def events(store: AuditStore, **filters: Any) -> list[Any]:
    return list(store.iter_events(EventQuery(stream="billing", order="asc", **filters)))
