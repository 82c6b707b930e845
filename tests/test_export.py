"""`GET /v1/export` and `run_daemon.py export`: both stores, both formats, and flat
memory on a 200,000-event export from a real daemon."""

from __future__ import annotations

import array
import asyncio
import csv
import fcntl
import http.client
import io
import signal
import subprocess
import sys
import termios
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from config import Config
from storage.events import Actor, EventType, NewEvent
from storage.store import AppendRequest, AuditStore
from tests.conftest import write_config
from tests.daemon import ROOT, free_port, run_cli, running_daemon
from web.export_format import CSV_COLUMNS

Client = TestClient[Any, Any]


def event(n: int, **fields: Any) -> dict[str, Any]:
    return {
        "entity": "charge",
        "entity_id": f"ch_{n}",
        "event_type": "CREATE",
        "action": "charge.created",
        "actor": {"id": "073", "name": "SUBIN JEONG", "ip": "125.22.33.22"},
        "occurred_at": f"2026-11-{1 + n % 28:02d}T12:00:00.123Z",
        "properties": ["amount"],
        "after": {"amount": n, "note": 'a, "quoted"\nline'},
        **fields,
    }


async def post(api: Client, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    response = await api.post("/v1/events", json={"events": events})
    assert response.status == 201, await response.text()
    stored: list[dict[str, Any]] = (await response.json())["events"]
    return stored


async def export(api: Client, **params: Any) -> tuple[Any, bytes]:
    response = await api.get("/v1/export", params=params)
    return response, await response.read()


async def test_ndjson_export_is_every_match_oldest_first(api: Client) -> None:
    stored = await post(api, [event(n) for n in range(2500)])
    response, body = await export(api)
    assert response.status == 200
    assert response.content_type == "application/x-ndjson"
    assert response.headers["Transfer-Encoding"] == "chunked"
    lines = body.splitlines()
    assert [orjson.loads(line) for line in lines] == stored

    _, body = await export(api, order="desc", format="ndjson")
    assert [orjson.loads(line)["seq"] for line in body.splitlines()] == list(range(2500, 0, -1))


async def test_head_of_an_export_has_no_body(api: Client) -> None:
    await post(api, [event(1)])
    response = await api.head("/v1/export", params={"format": "csv"})
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/csv; charset=utf-8"
    # On the same keep-alive connection: a body sent after HEAD would garble this one.
    assert (await api.get("/v1/events")).status == 200
    assert (await api.head("/v1/export", params={"format": "xml"})).status == 400


async def test_export_takes_the_query_filters(api: Client) -> None:
    stored = await post(
        api,
        [
            event(1),
            event(2, event_type="UPDATE", entity="customer"),
            event(3, event_type="DELETE", actor={"id": "999"}),
            event(4, event_type="READ"),
        ],
    )
    listing = await (
        await api.get("/v1/events", params=[("event_type", "update"), ("event_type", "DELETE")])
    ).json()
    _, body = await export(api, event_type=["update", "DELETE"])
    exported = [orjson.loads(line) for line in body.splitlines()]
    assert exported == list(reversed(listing["events"])) == stored[1:3]

    _, body = await export(api, actor="999")
    assert [orjson.loads(line)["id"] for line in body.splitlines()] == [stored[2]["id"]]
    _, body = await export(api, entity="customer", since="2026-11-01", until="2026-12-01")
    assert [orjson.loads(line)["id"] for line in body.splitlines()] == [stored[1]["id"]]
    response, body = await export(api, stream="nothing")
    assert response.status == 200 and body == b""


async def test_csv_export_has_one_row_per_event_in_field_order(api: Client) -> None:
    stored = await post(api, [event(n) for n in range(3)])
    await api.delete(f"/delete_log/{stored[1]['id']}")
    response, body = await export(api, format="csv", entity="charge")
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/csv; charset=utf-8"
    rows = list(csv.reader(io.StringIO(body.decode("utf-8"), newline="")))
    header, *data = rows
    assert header == list(CSV_COLUMNS)
    assert header[:15] == list(stored[0])  # the event's own field order
    assert len(data) == 3
    first = dict(zip(header, data[0], strict=True))
    assert first["id"] == stored[0]["id"] and first["seq"] == "1"
    assert orjson.loads(first["after"]) == stored[0]["after"]  # commas, quotes, newlines survive
    assert orjson.loads(first["actor"]) == stored[0]["actor"]
    assert orjson.loads(first["properties"]) == ["amount"]
    assert orjson.loads(first["metadata"]) == {}
    assert first["before"] == "" and first["redacted"] == "false"
    assert first["occurred_at"] == stored[0]["occurred_at"]
    redacted = dict(zip(header, data[1], strict=True))
    assert redacted["after"] == "" and redacted["redacted"] == "true"


async def test_bad_export_parameters_are_400_problems(api: Client) -> None:
    cases: list[tuple[dict[str, str], list[str]]] = [
        ({"cursor": "abc"}, ["cursor"]),
        ({"limit": "10"}, ["limit"]),
        ({"format": "xml"}, ["format"]),
        ({"since": "soon", "order": "up"}, ["order", "since"]),
        ({"colour": "red"}, ["colour"]),
    ]
    for params, fields in cases:
        response = await api.get("/v1/export", params=params)
        assert response.status == 400, params
        assert response.content_type == "application/problem+json"
        body = await response.json()
        assert sorted(e["field"] for e in body["errors"]) == fields
    response = await api.get("/v1/export", params=[("format", "csv"), ("format", "csv")])
    assert response.status == 400


async def test_cli_export_writes_what_the_route_serves(api: Client, config: Config) -> None:
    await post(api, [event(n, event_type="UPDATE" if n % 3 else "CREATE") for n in range(1200)])
    for fmt in ("ndjson", "csv"):
        _, served = await export(api, format=fmt, event_type="update", order="desc")
        args = ["--event-type", "update", "--order", "desc", "--format", fmt]
        result = await asyncio.to_thread(cli_export, config.path, *args)
        assert result.returncode == 0, result.stderr
        assert result.stdout == served
    assert len(served.decode().splitlines()) > 800


def cli_export(config: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    # Bytes, not text: CSV rows end in CRLF, which text mode would translate.
    command = [sys.executable, str(ROOT / "run_daemon.py"), "--config", str(config), "export"]
    return subprocess.run([*command, *args], capture_output=True, timeout=60, check=False)


@pytest.mark.parametrize(
    "args",
    [
        ["--since", "soon"],
        ["--event-type", "EXPLODE"],
        ["--format", "xml"],
        ["--order", "sideways"],
        ["--entity", ""],
        ["--limit", "5"],
        ["--actor"],
    ],
)
def test_cli_export_bad_arguments_exit_2(tmp_path: Path, args: list[str]) -> None:
    config = write_config(tmp_path, "sqlite:///audit.db")
    result = run_cli("export", *args, config=config, timeout=30)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr


def test_an_interrupted_export_exits_130(tmp_path: Path) -> None:
    # Ctrl-C before the end is not success: a script must not take a cut-off export
    # (or an interrupted verify) for a finished one.
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    fill_store(url, 5_000)
    config = write_config(tmp_path, url)
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "run_daemon.py"), "--config", str(config), "export"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 30
        while _unread(process.stdout.fileno()) < 65_536:  # the pipe is full: it waits
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err
    assert out.count(b"\n") < 5_000
    assert b"Traceback" not in err


def _unread(fd: int) -> int:
    """Bytes waiting in a pipe."""
    buffer = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, buffer)
    return buffer[0]


# -- memory stays flat -------------------------------------------------------

EXPORT_SIZE = 200_000
MAX_RSS_GROWTH_KB = 60 * 1024


def fill_store(url: str, count: int, batch: int = 50_000) -> None:
    store = AuditStore.open(url)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    try:
        for first in range(0, count, batch):
            store.append(
                [
                    AppendRequest(
                        [
                            NewEvent(
                                stream="billing",
                                entity="charge",
                                entity_id=str(n),
                                event_type=EventType.CREATE,
                                actor=Actor("073", "SUBIN JEONG", "125.22.33.22"),
                                occurred_at=start + timedelta(seconds=n),
                                properties=("amount",),
                                after={"id": n, "amount": n * 100, "currency": "EUR"},
                            )
                            for n in range(first, min(first + batch, count))
                        ]
                    )
                ]
            )
    finally:
        store.close()


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_a_large_export_streams_in_flat_memory(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    port = free_port()
    config = write_config(tmp_path, url, server={"port": port})
    with running_daemon(config, port) as daemon:
        fill_store(url, EXPORT_SIZE)  # while the daemon idles: the test's time is mostly this
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        # Warm up: the code paths and one page's worth of memory.
        for path in ("/v1/events?limit=1000", "/v1/export?entity=none"):
            connection.request("GET", path)
            connection.getresponse().read()
        baseline = rss_kb(daemon.pid)
        peak = baseline
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, rss_kb(daemon.pid))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            connection.request("GET", "/v1/export")
            response = connection.getresponse()
            assert response.status == 200
            lines = 0
            first = response.read(64 * 1024)
            # A slow reader: a server that ignored backpressure would buffer meanwhile.
            time.sleep(1)
            chunk, tail, last_line = first, b"", b""
            while chunk:
                lines += chunk.count(b"\n")
                buffer = tail + chunk
                if b"\n" in buffer:
                    *_, last_line, tail = buffer.rsplit(b"\n", 2)
                else:
                    tail = buffer
                chunk = response.read(256 * 1024)
        finally:
            done.set()
            sampler.join()
            connection.close()
    assert lines == EXPORT_SIZE
    assert orjson.loads(first.split(b"\n", 1)[0])["seq"] == 1
    assert orjson.loads(last_line)["seq"] == EXPORT_SIZE
    growth = peak - baseline
    print(f"RSS {baseline} kB before the export, {peak} kB at its peak")
    assert growth < MAX_RSS_GROWTH_KB, f"RSS grew by {growth} kB while exporting"
