"""`GET /v1/tail` (server-sent events) through a real aiohttp server on loopback."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
import pytest_asyncio
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from config import Config
from storage.bus import EventBus
from storage.store import AuditStore
from web import tail_routes
from web.app import create_app
from web.keys import EVENT_BUS

Client = TestClient[Any, Any]


@dataclass
class Message:
    id: str | None
    event: str | None
    data: Any


async def open_tail(api: Client, query: str = "", last_event_id: str | None = None) -> Any:
    """Open a tail and wait for its opening comment: from then on it is subscribed."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    response = await api.get(f"/v1/tail{query}", headers=headers)
    assert response.status == 200, await response.text()
    assert response.content_type == "text/event-stream"
    assert await response.content.readline() == b": tail open\n"
    assert await response.content.readline() == b"\n"
    return response


async def read_message(response: ClientResponse, within: float = 10) -> Message | str | None:
    """The next message, or a comment's text, or None at the end of the stream."""
    fields: dict[str, str] = {}
    comment: str | None = None
    async with asyncio.timeout(within):
        while True:
            line = await response.content.readline()
            if not line:
                return None
            text = line.decode().rstrip("\n")
            if text == "":
                if comment is not None and not fields:
                    return comment
                return Message(fields.get("id"), fields.get("event"), orjson.loads(fields["data"]))
            if text.startswith(":"):
                comment = text[1:].strip()
            else:
                key, _, value = text.partition(": ")
                fields[key] = value


async def read_events(response: ClientResponse, count: int, within: float = 20) -> list[Message]:
    messages: list[Message] = []
    async with asyncio.timeout(within):
        while len(messages) < count:
            message = await read_message(response, within)
            assert message is not None, f"stream ended after {len(messages)} of {count}"
            if isinstance(message, Message):
                messages.append(message)
    return messages


async def wait_until(condition: Callable[[], bool], within: float = 5) -> None:
    for _ in range(int(within / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the condition did not come true in time")


async def post(api: Client, body: Any) -> Any:
    response = await api.post("/v1/events", json=body)
    assert response.status == 201, await response.text()
    return await response.json()


async def test_live_events_arrive_with_the_query_filters(api: Client) -> None:
    tail = await open_tail(api, "?entity=charge&event_type=CREATE&event_type=delete")
    posted = await post(
        api,
        {
            "events": [
                {"entity": "charge", "event_type": "CREATE", "entity_id": "1"},
                {"entity": "customer", "event_type": "CREATE"},
                {"entity": "charge", "event_type": "UPDATE", "entity_id": "1"},
                {"entity": "charge", "event_type": "DELETE", "entity_id": "1"},
            ]
        },
    )
    one = await post(api, {"entity": "charge", "event_type": "create", "entity_id": "2"})
    messages = await read_events(tail, 3)
    expected = [posted["events"][0], posted["events"][3], one]
    assert [m.data for m in messages] == expected
    assert [m.id for m in messages] == [e["id"] for e in expected]
    assert all(m.event is None for m in messages)
    tail.close()


async def test_a_redaction_is_a_live_event(api: Client) -> None:
    tail = await open_tail(api, "?entity=audit_event")
    original = await post(api, {"entity": "customer", "event_type": "CREATE"})
    response = await api.delete(f"/delete_log/{original['id']}")
    assert response.status == 200
    [message] = await read_events(tail, 1)
    assert message.data["action"] == "audit_event.redacted"
    assert message.data["metadata"]["redacts"] == original["id"]
    tail.close()


async def test_resume_with_last_event_id_loses_and_repeats_nothing(api: Client) -> None:
    total = 300
    first_tail = await open_tail(api)

    async def keep_posting() -> None:
        for i in range(0, total, 10):
            batch = [
                {"entity": "charge", "event_type": "CREATE", "entity_id": str(i + j)}
                for j in range(10)
            ]
            await post(api, {"events": batch})
            await asyncio.sleep(0.005)

    producer = asyncio.create_task(keep_posting())
    received = await read_events(first_tail, 40)
    first_tail.close()  # disconnect while events keep arriving
    await asyncio.sleep(0.05)

    second_tail = await open_tail(api, last_event_id=received[-1].id)
    received += await read_events(second_tail, total - len(received))
    await producer
    second_tail.close()

    stored = await (await api.get("/v1/events?order=asc&limit=1000")).json()
    assert [m.id for m in received] == [e["id"] for e in stored["events"]]
    assert [m.data for m in received] == stored["events"]


async def test_resume_replays_only_matching_events(api: Client) -> None:
    first = await post(api, {"entity": "charge", "event_type": "CREATE"})
    await post(api, {"entity": "customer", "event_type": "CREATE"})
    later = await post(api, {"entity": "charge", "event_type": "UPDATE"})
    tail = await open_tail(api, "?entity=charge", last_event_id=first["id"])
    [replayed] = await read_events(tail, 1)
    assert replayed.data == later
    live = await post(api, {"entity": "charge", "event_type": "DELETE"})
    [message] = await read_events(tail, 1)
    assert message.data == live
    tail.close()


async def test_bad_tail_requests_are_problems(api: Client) -> None:
    for query, headers, field in [
        ("?limit=5", {}, "limit"),
        ("?cursor=abc", {}, "cursor"),
        ("?order=asc", {}, "order"),
        ("?event_type=EXPLODE", {}, "event_type"),
        ("?since=yesterday", {}, "since"),
        ("", {"Last-Event-ID": str(uuid.uuid4())}, "Last-Event-ID"),
        ("", {"Last-Event-ID": "not-a-uuid"}, "Last-Event-ID"),
    ]:
        response = await api.get(f"/v1/tail{query}", headers=headers)
        assert response.status == 400, query
        assert response.content_type == "application/problem+json"
        body = await response.json()
        assert field in [e["field"] for e in body["errors"]], (query, body)


async def test_head_answers_the_headers_only(api: Client) -> None:
    response = await api.head("/v1/tail?entity=charge")
    assert response.status == 200
    assert response.content_type == "text/event-stream"
    assert await response.read() == b""
    assert (await api.get("/healthz")).status == 200  # the connection is still sound
    assert (await api.head("/v1/tail?limit=3")).status == 400


async def test_idle_tail_gets_heartbeats(api: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tail_routes, "HEARTBEAT_SECONDS", 0.1)
    tail = await open_tail(api)
    assert await read_message(tail, within=5) == "keepalive"
    assert await read_message(tail, within=5) == "keepalive"
    tail.close()


async def test_open_tails_do_not_hold_up_shutdown(config: Config, store: AuditStore) -> None:
    server = TestServer(create_app(config, store), host="127.0.0.1")
    client: Client = TestClient(server)
    await client.start_server()
    tails = [await open_tail(client) for _ in range(3)]
    started = time.monotonic()
    async with asyncio.timeout(15):
        await server.close()
    assert time.monotonic() - started < 10
    for tail in tails:
        assert await read_message(tail, within=5) is None
    await client.close()


# -- a client that stops reading ------------------------------------------------

SMALL_QUEUE = 200


@pytest_asyncio.fixture
async def small_queue_server(config: Config, store: AuditStore) -> AsyncIterator[Client]:
    app = create_app(config, store)
    app[EVENT_BUS] = EventBus(max_queued=SMALL_QUEUE)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client


def stalled_tail(port: int) -> socket.socket:
    """A tail whose client never reads: a tiny receive window fills at once."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET /v1/tail HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
    return sock


async def stall_until_dropped(api: Client, sock: socket.socket) -> tuple[int, list[float]]:
    """Post batches while `sock` reads nothing, until the bus drops it (bounded);
    the number of events posted and how long each post took."""
    bus = api.app[EVENT_BUS]
    await wait_until(lambda: bus.subscriber_count == 1)
    payload = {"notes": "x" * 1500}
    durations: list[float] = []
    posted = 0
    # Enough to fill the socket buffers, then the queue; bounded in any case.
    for batch in range(40):
        events = [
            {
                "entity": "charge",
                "event_type": "CREATE",
                "entity_id": f"{batch}-{i}",
                "after": payload,
            }
            for i in range(500)
        ]
        started = time.monotonic()
        await post(api, {"events": events})
        durations.append(time.monotonic() - started)
        posted += len(events)
        if bus.dropped_total:
            break
    assert bus.dropped_total == 1, "the stalled client was never dropped"
    assert bus.subscriber_count == 0
    return posted, durations


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_a_client_that_does_not_read_is_dropped_and_ingest_goes_on(
    small_queue_server: Client,
) -> None:
    api = small_queue_server
    port = api.server.port
    assert port is not None
    sock = await asyncio.to_thread(stalled_tail, port)
    try:
        posted, durations = await stall_until_dropped(api, sock)
        # Ingest never waited for the stalled client (a generous bound: a batch of
        # 500 takes milliseconds; waiting for the client would take forever).
        assert max(durations) < 5
        more = await post(api, {"entity": "charge", "event_type": "CREATE"})
        assert more["seq"] == posted + 1

        # The client reads at last: what was sent, then why it ends.
        raw = await asyncio.to_thread(read_all, sock)
    finally:
        sock.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    text = dechunk(body).decode()
    blocks = [b for b in text.split("\n\n") if b]
    assert blocks[-1].startswith("event: dropped\ndata: ")
    notice = orjson.loads(blocks[-1].split("data: ", 1)[1])
    ids = [b.split("\n", 1)[0].removeprefix("id: ") for b in blocks if b.startswith("id: ")]
    assert 0 < len(ids) < posted
    assert notice["last_event_id"] == ids[-1]
    assert "Last-Event-ID" in notice["reason"]


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_a_dropped_client_that_never_reads_is_let_go(
    small_queue_server: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tail_routes, "DROP_GRACE_SECONDS", 0.2)
    api = small_queue_server
    port = api.server.port
    assert port is not None
    sock = await asyncio.to_thread(stalled_tail, port)
    try:
        await stall_until_dropped(api, sock)
        # Still not reading: past the grace period the server aborts the connection
        # (a reset), so a client that never reads holds no task and no socket.
        await wait_until(lambda: tcp_state(sock) != TCP_ESTABLISHED)
        assert tcp_state(sock) == TCP_CLOSE
    finally:
        sock.close()


TCP_ESTABLISHED = 1
TCP_CLOSE = 7  # after a reset


def tcp_state(sock: socket.socket) -> int:
    """The socket's TCP state (Linux `tcp_info.tcpi_state`), read without reading data."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_a_commit_larger_than_the_queue_reaches_a_reading_client(
    small_queue_server: Client,
) -> None:
    api = small_queue_server
    tail = await open_tail(api)
    events = [{"entity": "charge", "event_type": "CREATE"} for _ in range(SMALL_QUEUE * 3)]
    posted = await post(api, {"events": events})
    received = await read_events(tail, len(events))
    assert [m.id for m in received] == [e["id"] for e in posted["events"]]
    assert api.app[EVENT_BUS].dropped_total == 0
    tail.close()


def read_all(sock: socket.socket) -> bytes:
    """What the server sends up to the end of the chunked body (or EOF)."""
    sock.settimeout(10)
    data = bytearray()
    while not data.endswith(b"\r\n0\r\n\r\n"):
        chunk = sock.recv(1 << 16)
        if not chunk:
            break
        data += chunk
    return bytes(data)


def dechunk(body: bytes) -> bytes:
    out = bytearray()
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return bytes(out)


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_resume_over_a_backlog_larger_than_the_queue(small_queue_server: Client) -> None:
    api = small_queue_server
    first = await post(api, {"entity": "charge", "event_type": "CREATE"})
    backlog = [{"entity": "charge", "event_type": "UPDATE"} for _ in range(SMALL_QUEUE * 5)]
    await post(api, {"events": backlog})
    tail = await open_tail(api, last_event_id=first["id"])

    async def keep_posting() -> None:
        for _ in range(10):
            await post(api, {"events": [{"entity": "charge", "event_type": "READ"}] * 50})

    producer = asyncio.create_task(keep_posting())
    received = await read_events(tail, SMALL_QUEUE * 5 + 500)
    await producer
    tail.close()
    stored = await (await api.get("/v1/events?order=asc&limit=1000")).json()
    page2 = await (
        await api.get(f"/v1/events?order=asc&limit=1000&cursor={stored['next_cursor']}")
    ).json()
    assert [m.id for m in received] == [e["id"] for e in stored["events"] + page2["events"]][1:]
    assert api.app[EVENT_BUS].dropped_total == 0
