"""`server.workers`: the real daemon serving its port from several processes."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from commands.workers import STALE_AFTER, StatusFile
from demo.simulator import create_schema
from tests.daemon import free_port, run_cli, running_daemon
from tests.test_capture_live import DEMO_TABLES, get_json, simulate

LISTEN, ESTABLISHED = "0A", "01"


def workers_config(
    tmp_path: Path, port: int, workers: int = 2, store_url: str = "sqlite:///audit.db"
) -> Path:
    document = {
        "store": {"url": store_url},
        "server": {"host": "127.0.0.1", "port": port, "workers": workers},
        "capture": {"poll_interval": 1.0, "snapshot": False},
        "sources": [{"name": "billing", "database": "billing.db", "tables": DEMO_TABLES}],
    }
    create_schema(tmp_path / "billing.db")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def socket_owners() -> dict[str, int]:
    """Socket inode -> the pid of a process holding it (every process, from /proc)."""
    owners: dict[str, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{entry}/fd"):
                target = os.readlink(f"/proc/{entry}/fd/{fd}")
                if target.startswith("socket:["):
                    owners[target[8:-1]] = int(entry)
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return owners


def tcp_sockets(port: int, state: str) -> list[tuple[int, str]]:
    """(remote port, inode) of the IPv4 sockets on local `port` in `state`."""
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, st, inode = fields[1], fields[2], fields[3], fields[9]
        if int(local.split(":")[1], 16) == port and st == state:
            found.append((int(remote.split(":")[1], 16), inode))
    return found


def listening_pids(port: int) -> set[int]:
    owners = socket_owners()
    return {owners[inode] for _, inode in tcp_sockets(port, LISTEN) if inode in owners}


def serving_pid(port: int, client_port: int, within: float = 10) -> int:
    """The process that holds the server side of the connection from `client_port`
    (once a process has accepted it)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        owners = socket_owners()
        for remote, inode in tcp_sockets(port, ESTABLISHED):
            if remote == client_port and inode in owners:
                return owners[inode]
        time.sleep(0.05)
    raise AssertionError(f"no process accepted the connection from port {client_port}")


def wait_for_listeners(
    port: int, count: int, not_in: frozenset[int] = frozenset(), within: float = 30
) -> set[int]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        pids = listening_pids(port)
        if len(pids) == count and not pids & not_in:
            return pids
        time.sleep(0.1)
    raise AssertionError(f"expected {count} processes listening on {port}, found {pids}")


@contextlib.contextmanager
def daemon_with_a_worker(
    tmp_path: Path,
) -> Iterator[tuple[subprocess.Popen[bytes], int, int]]:
    """The daemon with `server.workers: 2`, once both listen: (daemon, port, worker pid)."""
    port = free_port()
    with running_daemon(workers_config(tmp_path, port), port) as daemon:
        (worker,) = wait_for_listeners(port, 2) - {daemon.pid}
        yield daemon, port, worker


def gone(pid: int, within: float = 15) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def connection_to_each(port: int, processes: set[int]) -> dict[int, http.client.HTTPConnection]:
    """A kept-alive connection served by each of `processes` (the kernel picks a
    process per new connection: open them until each has one)."""
    held: dict[int, http.client.HTTPConnection] = {}
    for _ in range(64):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.connect()
        assert connection.sock is not None
        pid = serving_pid(port, connection.sock.getsockname()[1])
        if pid in held:
            connection.close()
        else:
            held[pid] = connection
        if set(held) == processes:
            return held
    raise AssertionError(f"64 connections did not reach all of {processes}")


def get_on(connection: http.client.HTTPConnection, path: str) -> tuple[int, Any]:
    connection.request("GET", path)
    response = connection.getresponse()
    return response.status, json.loads(response.read())


async def open_tail(session: aiohttp.ClientSession, base: str) -> tuple[Any, int]:
    """A tail on a connection of its own; (response, the connection's client port)."""
    response = await session.get(f"{base}/v1/tail")
    assert response.status == 200
    assert await response.content.readline() == b": tail open\n"
    assert await response.content.readline() == b"\n"
    assert response.connection is not None
    transport = response.connection.transport
    assert transport is not None
    return response, transport.get_extra_info("sockname")[1]


async def read_ids(response: Any, count: int, within: float = 30) -> list[str]:
    ids: list[str] = []
    async with asyncio.timeout(within):
        while len(ids) < count:
            line = (await response.content.readline()).decode()
            assert line, f"the tail ended after {len(ids)} of {count} events"
            if line.startswith("id: "):
                ids.append(line[4:].strip())
    return ids


async def test_every_process_serves_and_every_tail_sees_what_any_process_stored(
    tmp_path: Path, store_url: str
) -> None:
    """On SQLite the tails are woken by the store's file events, on PostgreSQL by
    their periodic read: both must deliver everything, in order."""
    port = free_port()
    config = workers_config(tmp_path, port, store_url=store_url)
    base = f"http://127.0.0.1:{port}"
    with running_daemon(config, port) as daemon:
        processes = wait_for_listeners(port, 2)
        assert daemon.pid in processes
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            # Connections are spread by the kernel: open tails until both processes hold one.
            tails: dict[int, Any] = {}
            for _ in range(64):
                response, client_port = await open_tail(session, base)
                pid = serving_pid(port, client_port)
                if pid in tails:
                    response.close()
                else:
                    tails[pid] = response
                if len(tails) == 2:
                    break
            assert set(tails) == processes
            # Posted through short connections (either process), and captured by the daemon.
            posted = 20
            for n in range(posted):
                async with aiohttp.ClientSession() as poster:
                    body = {"entity": "note", "entity_id": str(n), "event_type": "CREATE",
                            "actor": {"id": "ops"}}
                    async with poster.post(f"{base}/v1/events", json=body) as answer:
                        assert answer.status == 201, await answer.text()
            await asyncio.to_thread(simulate, tmp_path / "billing.db", 30)
            # Capture is asynchronous: the simulator returns once its changes are
            # committed, and the daemon stores them a moment later.
            deadline = time.monotonic() + 20
            while True:
                stored = get_json(f"{base}/v1/events?order=asc&limit=1000")["events"]
                if len(stored) >= posted + 30 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            expected = [event["id"] for event in stored]
            assert len(expected) >= posted + 30
            for pid, response in tails.items():
                assert await read_ids(response, len(expected)) == expected, f"tail on {pid}"
                response.close()
        # Every process shows the daemon's capture status (a worker's is up to a second old).
        for pid, connection in connection_to_each(port, processes).items():
            deadline = time.monotonic() + 10
            while True:
                status, body = get_on(connection, "/v1/streams")
                (billing,) = [s for s in body["streams"] if s["name"] == "billing"]
                if billing["last_capture_at"] is not None or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            assert billing["capturing"] is True, json.dumps([pid, daemon.pid, billing])
            assert billing["last_capture_at"] is not None, json.dumps([pid, billing])
            status, body = get_on(connection, "/readyz")
            assert (status, body["checks"]["capture"]) == (200, "ok"), (pid, body)
            connection.close()


def test_a_worker_that_dies_is_replaced_and_every_process_stops_with_the_daemon(
    tmp_path: Path,
) -> None:
    with daemon_with_a_worker(tmp_path) as (daemon, port, worker):
        os.kill(worker, signal.SIGKILL)
        assert gone(worker)
        (replacement,) = wait_for_listeners(port, 2, not_in=frozenset({worker})) - {daemon.pid}
        for _ in range(20):  # new connections, spread over both processes
            assert get_json(f"http://127.0.0.1:{port}/ping")["message"] == "pong"
        log = (tmp_path / "daemon.log").read_text()
        assert f"(pid {worker}) exited with code -9; starting it again" in log
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0
        assert gone(replacement)
        assert listening_pids(port) == set()


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    found: set[int] = set()
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.add(child)
        todo.extend(children.get(child, []))
    return found


def test_workers_stop_by_themselves_when_the_daemon_is_killed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    temp = tmp_path / "tmp"  # where the daemon makes the folder of its status file
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    with daemon_with_a_worker(tmp_path) as (daemon, _port, worker):
        under = descendants(daemon.pid)
        assert worker in under and len(under) == 2  # the worker and the starter that forked it
        assert [p.name for p in temp.glob("auditor-*/capture.json")] == ["capture.json"]
        daemon.kill()
        daemon.wait(timeout=10)
        for pid in under:
            assert gone(pid), f"process {pid} outlived its daemon"
    # The starter removed what the killed daemon could not.
    assert list(temp.iterdir()) == []


def test_the_status_file_round_trips_and_goes_stale(tmp_path: Path) -> None:
    status = StatusFile(tmp_path / "capture.json")
    assert status.read() == {}
    assert status.stale() == "no capture status from the daemon"
    seen = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    report = {"billing": {"running": True, "backlog": 3, "lag_seconds": 0.5,
                          "last_capture_at": seen, "untranslatable": 0}}
    status.write(report)
    assert status.read() == report
    assert status.stale() is None
    old = time.time() - STALE_AFTER - 10
    os.utime(status.path, (old, old))
    assert status.stale() == f"no capture status from the daemon for {STALE_AFTER + 10:.0f} s"


def test_when_the_starter_is_killed_its_worker_stops_and_the_daemon_serves_on(
    tmp_path: Path,
) -> None:
    with daemon_with_a_worker(tmp_path) as (daemon, port, worker):
        (starter,) = descendants(daemon.pid) - {worker}
        os.kill(starter, signal.SIGKILL)
        assert gone(worker), "the worker outlived the starter that forked it"
        assert wait_for_listeners(port, 1) == {daemon.pid}
        deadline = time.monotonic() + 10
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5).close()
            except urllib.error.HTTPError as error:
                assert json.loads(error.read())["errors"] == [
                    {"field": "workers", "message": "0 of 1 API workers running"}]
                break
            assert time.monotonic() < deadline, "/readyz did not report the missing worker"
            time.sleep(0.2)
        assert "the API workers' starter process is gone" in (tmp_path / "daemon.log").read_text()


def test_workers_cannot_share_an_in_memory_store(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "store": {"url": "sqlite:///:memory:"},
        "server": {"host": "127.0.0.1", "port": free_port(), "workers": 2},
    }))
    result = run_cli(config=config)
    assert result.returncode == 2
    assert "server.workers: 2 processes cannot share an in-memory store" in result.stderr
