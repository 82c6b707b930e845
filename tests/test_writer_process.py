"""The API's store writer process (`storage.writer_process`): a real app and a real
daemon on a SQLite file store, posting through a real child process."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml
from aiohttp.test_utils import TestClient, TestServer

from config import load_config
from storage.store import AuditStore
from storage.writer import GroupCommitWriter, Submitted
from storage.writer_process import ProcessWriter, runs_apart, writer_for
from tests.daemon import ROOT, free_port, run_cli, wait_for_ping
from tests.test_workers import descendants
from web.app import create_app
from web.event_routes import PARSE_APART_MAX
from web.keys import WRITER

EVENT = {
    "entity": "charge",
    "entity_id": "ch_1",
    "event_type": "CREATE",
    "actor": {"id": "073", "name": "SUBIN JEONG", "ip": "125.22.33.22"},
    "properties": ["amount"],
    "after": {"amount": 1200, "currency": "EUR"},
}


def process_writer(client: TestClient[Any, Any]) -> ProcessWriter:
    assert client.app is not None
    writer = client.app[WRITER]
    assert isinstance(writer, ProcessWriter)
    return writer


async def first_post(client: TestClient[Any, Any]) -> tuple[ProcessWriter, int]:
    """Post one event (which starts the writer process); the writer and its child's pid."""
    writer = process_writer(client)
    assert (await client.post("/v1/events", json=EVENT)).status == 201
    pid = writer.pid
    assert pid is not None and pid != os.getpid()
    return writer, pid


async def until(check: Callable[[], bool]) -> None:
    """Poll `check` (the writer's own state, which nothing signals) for up to 20 s."""
    async with asyncio.timeout(20):
        while not check():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


def exited(pid: int, timeout: float = 20) -> bool:
    """Whether `pid` has exited within `timeout` s (a zombie counts: its parent may be gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":  # exited; its parent has not reaped it yet
            return True
        time.sleep(0.05)
    return False


@pytest_asyncio.fixture
async def sqlite_api(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump({"store": {"url": url}}))
    store = AuditStore.open(url, shared=True)
    server = TestServer(create_app(load_config(config_path, environ={}), store), host="127.0.0.1")
    async with TestClient(server) as client:
        yield client
    store.close()


def test_only_sqlite_files_of_a_lone_daemon_get_a_writer_process(tmp_path: Path) -> None:
    assert runs_apart(f"sqlite:///{tmp_path / 'audit.db'}")
    assert not runs_apart("sqlite://")
    assert not runs_apart("sqlite:///:memory:")
    assert not runs_apart(f"sqlite:///file:{tmp_path / 'a.db'}?mode=rwc&uri=true")
    assert not runs_apart("postgresql+psycopg://postgres@127.0.0.1:5432/test")
    store = AuditStore.open("sqlite://")
    try:
        url = f"sqlite:///{tmp_path / 'audit.db'}"
        assert isinstance(writer_for(store, url, alone=True), ProcessWriter)
        assert isinstance(writer_for(store, url, alone=False), GroupCommitWriter)
        assert isinstance(writer_for(store, "sqlite://", alone=True), GroupCommitWriter)
    finally:
        store.close()


async def test_posts_held_together_share_one_commit_and_answer_as_stored(
    sqlite_api: TestClient[Any, Any],
) -> None:
    writer, pid = await first_post(sqlite_api)
    # Stopped, the child cannot read: every post below waits in its socket, and
    # once it runs again it takes them all into one transaction.
    os.kill(pid, signal.SIGSTOP)
    commits = writer.commits
    bodies = [
        {
            **EVENT,
            "entity_id": f"ch_{i}",
            # Microseconds and an offset: the store keeps UTC milliseconds, and the
            # answer must say what the child stored.
            "occurred_at": f"2026-11-28T13:00:00.{i:03d}987+02:00",
        }
        for i in range(20)
    ]
    posts = [asyncio.create_task(sqlite_api.post("/v1/events", json=b)) for b in bodies]
    await until(lambda: writer.in_flight == len(bodies))
    os.kill(pid, signal.SIGCONT)
    responses = await asyncio.gather(*posts)
    assert writer.commits == commits + 1
    answered = [await r.json() for r in responses]
    assert [r.status for r in responses] == [201] * len(bodies)
    assert sorted(a["seq"] for a in answered) == list(range(2, 2 + len(bodies)))
    assert {a["occurred_at"] for a in answered} == {
        f"2026-11-28T11:00:00.{i:03d}Z" for i in range(len(bodies))
    }
    for event in answered:
        stored = await sqlite_api.get(f"/v1/events/{event['id']}")
        assert await stored.json() == event
    verify = await sqlite_api.get("/v1/verify", params={"stream": answered[0]["stream"]})
    assert (await verify.json())["ok"] is True
    assert (await verify.json())["checked"] == 1 + len(bodies)


async def test_an_id_posted_again_answers_the_stored_event(
    sqlite_api: TestClient[Any, Any],
) -> None:
    body = {**EVENT, "id": "0193c1c4-5a1e-7c3b-9f4e-2b8d1c0a9e77"}
    first = await sqlite_api.post("/v1/events", json=body)
    again = await sqlite_api.post("/v1/events", json=body)
    assert (first.status, again.status) == (201, 200)
    assert await again.json() == await first.json()
    both = await sqlite_api.post("/v1/events", json={"events": [body, body]})
    assert both.status == 200
    assert [e["seq"] for e in (await both.json())["events"]] == [1, 1]


async def test_small_posts_are_parsed_in_the_writer_process_and_large_ones_on_the_loop(
    sqlite_api: TestClient[Any, Any],
) -> None:
    writer, pid = await first_post(sqlite_api)
    os.kill(pid, signal.SIGSTOP)
    try:
        # A small post goes to the stopped child unparsed: even its refusal waits.
        small = asyncio.create_task(sqlite_api.post("/v1/events", json={"entity": "charge"}))
        await until(lambda: writer.in_flight == 1)
        # A large batch is parsed on the loop: refused while the child is still stopped.
        events = [{**EVENT, "entity_id": f"ch_{i}"} for i in range(200)] + [{"entity": "c"}]
        assert len(json.dumps({"events": events})) > PARSE_APART_MAX
        large = await sqlite_api.post("/v1/events", json={"events": events})
        assert large.status == 422
        assert (await large.json())["errors"] == [
            {"field": "events[200].event_type", "message": "is required"}
        ]
        assert not small.done()
    finally:
        os.kill(pid, signal.SIGCONT)
    refused = await small
    assert refused.status == 422
    assert refused.content_type == "application/problem+json"
    assert await refused.json() == {
        "type": "about:blank",
        "status": 422,
        "title": "Unprocessable Entity",
        "detail": "invalid event",
        "errors": [{"field": "event_type", "message": "is required"}],
    }
    listed = await (await sqlite_api.get("/v1/events")).json()
    assert len(listed["events"]) == 1  # the first post only: nothing refused was stored


async def test_a_failing_codec_is_an_error_of_its_request_alone(
    sqlite_api: TestClient[Any, Any],
) -> None:
    writer, pid = await first_post(sqlite_api)
    with pytest.raises(RuntimeError, match=r"tests\.no_such_codec failed: ModuleNotFoundError"):
        await writer.submit(Submitted("tests.no_such_codec", b""))
    assert writer.pid == pid  # the child goes on
    assert (await sqlite_api.post("/v1/events", json=EVENT)).status == 201


async def test_a_writer_that_dies_mid_commit_fails_its_requests_and_is_started_again(
    sqlite_api: TestClient[Any, Any],
) -> None:
    writer, pid = await first_post(sqlite_api)
    os.kill(pid, signal.SIGSTOP)
    post = asyncio.create_task(sqlite_api.post("/v1/events", json=EVENT))
    await until(lambda: writer.in_flight == 1)
    os.kill(pid, signal.SIGKILL)
    lost = await post
    assert lost.status == 503
    assert "may or may not be stored" in (await lost.json())["detail"]
    again = await sqlite_api.post("/v1/events", json=EVENT)
    assert again.status == 201
    assert (await again.json())["seq"] == 2  # the stopped child had not read the lost one
    assert writer.pid not in (None, pid)


async def test_a_store_the_writer_cannot_open_is_a_503_until_it_can(
    sqlite_api: TestClient[Any, Any], tmp_path: Path
) -> None:
    writer, pid = await first_post(sqlite_api)
    os.kill(pid, signal.SIGKILL)
    await until(lambda: writer.pid is None)
    database = tmp_path / "audit.db"
    database.rename(tmp_path / "aside.db")
    database.mkdir()  # a folder where the store file was: the new child cannot open it
    refused = await sqlite_api.post("/v1/events", json=EVENT)
    assert refused.status == 503
    assert (await refused.json())["detail"] == "the audit store is unavailable; nothing was stored"
    database.rmdir()
    (tmp_path / "aside.db").rename(database)
    stored = await sqlite_api.post("/v1/events", json=EVENT)
    assert stored.status == 201
    assert (await stored.json())["seq"] == 2


def post(port: int, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/events",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        answer: dict[str, Any] = json.loads(response.read())
        return answer


def start_daemon(tmp_path: Path) -> tuple[subprocess.Popen[bytes], int, Path]:
    """The real daemon in a process group of its own (as a terminal would start it)."""
    port = free_port()
    config = tmp_path / "config.yaml"
    store = tmp_path / "secret-store-name.db"
    config.write_text(
        yaml.safe_dump(
            {"store": {"url": f"sqlite:///{store}"}, "server": {"host": "127.0.0.1", "port": port}}
        )
    )
    log_path = tmp_path / "daemon.log"
    with log_path.open("ab") as log:
        daemon = subprocess.Popen(
            [sys.executable, str(ROOT / "run_daemon.py"), "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )
    wait_for_ping(port, daemon, log_path)
    return daemon, port, config


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_whole_group_lets_the_posts_under_way_commit(
    tmp_path: Path, signum: int
) -> None:
    daemon, port, config = start_daemon(tmp_path)
    statuses: list[int] = []

    def keep_posting() -> None:
        while True:
            try:
                post(port, EVENT)
                statuses.append(201)
            except urllib.error.HTTPError as exc:
                statuses.append(exc.code)
            except OSError:  # the daemon has stopped listening
                return

    posters = [threading.Thread(target=keep_posting) for _ in range(8)]
    try:
        for poster in posters:
            poster.start()
        time.sleep(1)
        (child,) = descendants(daemon.pid)
        os.killpg(daemon.pid, signum)  # the writer gets it too, as from a Ctrl-C
        assert daemon.wait(timeout=60) == 0
        assert exited(child)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        for poster in posters:
            poster.join(timeout=60)
    log = (tmp_path / "daemon.log").read_text()
    assert "stopped cleanly" in log and "Traceback" not in log
    # Every post the daemon took in was committed before it stopped.
    assert statuses and set(statuses) == {201}
    verified = run_cli("verify", config=config)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    found = re.search(r"intact \((\d+) events", verified.stdout)
    assert found is not None and int(found[1]) >= len(statuses)


def test_the_writer_starts_with_the_first_post_never_shows_the_url_and_dies_with_the_daemon(
    tmp_path: Path,
) -> None:
    daemon, port, _config = start_daemon(tmp_path)
    try:
        time.sleep(0.5)
        assert descendants(daemon.pid) == set()  # started by the first post, not before
        assert post(port, EVENT)["seq"] == 1
        (child,) = descendants(daemon.pid)
        command_line = Path(f"/proc/{child}/cmdline").read_bytes()
        assert b"storage.writer_process" in command_line
        assert b"secret-store-name" not in command_line
        daemon.kill()
        daemon.wait(timeout=10)
        assert exited(child), "the writer process outlived its daemon"
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
