"""`GET /v1/tail`: server-sent events of new events as they are stored.

Filters are those of `GET /v1/events` (no `limit`, `cursor` or `order`: a
tail is always oldest first). Each message is `id: <event id>` and `data:
<event JSON>`. A client that reconnects with `Last-Event-ID` first gets every
matching event stored after that one, then the live ones, with nothing lost
and nothing twice:

1. replay the backlog from the store in insertion order (pk), without a
   subscription yet: its bounded buffer would fill while a long backlog is read;
2. subscribe to the bus, *then* replay again what was stored meanwhile, so
   nothing committed around the moment of subscribing slips between the two;
3. forward live events whose position is past the last one sent (both the
   backlog and the bus are in pk order, so one number dedupes them).

A client that falls `EventBus.max_queued` events behind is dropped: it gets
`event: dropped` (if it reads at all within a few seconds) and the stream
ends; it may reconnect with `Last-Event-ID` to catch up from the store.
A comment line every `HEARTBEAT_SECONDS` keeps idle connections open through
proxies and lets the server notice clients that have gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Sequence
from dataclasses import replace

from aiohttp import web

from storage.bus import Published, Subscription
from storage.events import AuditEvent
from storage.query import EventQuery
from web.event_routes import QUERY_PARAMS, canonical_uuid, parse_query
from web.keys import EVENT_BUS, STORE
from web.problems import Problem
from web.serialize import dumps, event_json
from web.validation import FieldError

TAIL_PARAMS = QUERY_PARAMS - {"limit", "cursor", "order"}
HEARTBEAT_SECONDS = 15.0
BACKLOG_PAGE = 500
DROP_GRACE_SECONDS = 5.0
RENDER_ON_LOOP = 200
"""Larger batches (one commit may hold 20,000 events) are serialised in a thread."""
EVENT_STREAM = "text/event-stream"
OPENING = b": tail open\n\n"

routes = web.RouteTableDef()


class _Ended(Exception):
    """The subscription ended: the client was dropped, or the server is stopping."""


@routes.get("/v1/tail")
async def tail(request: web.Request) -> web.StreamResponse:
    query = replace(parse_query(request.query, allowed=TAIL_PARAMS), order="asc")
    resume_from = await _resume_position(request)
    headers = {
        "Content-Type": f"{EVENT_STREAM}; charset=utf-8",
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
    }
    if request.method == "HEAD":
        # What a tail would start with, and no stream: a streamed body is not
        # held back for HEAD.
        return web.Response(headers=headers)
    response = web.StreamResponse(headers=headers)
    # A tail that ends (dropped, shutdown) ends its connection too: nothing else
    # would reuse it, and a client that stopped reading must not keep it alive.
    response.force_close()
    await response.prepare(request)
    stream = _EventStream(request, response)
    bus = request.app[EVENT_BUS]
    try:
        if resume_from is None:
            with bus.subscribe(query) as subscription:
                stream.subscription = subscription
                await stream.write(OPENING)  # from now on nothing is missed
                await _follow(stream, subscription, 0)
        else:
            await stream.write(OPENING)
            sent = await _replay(request, stream, query, resume_from)
            with bus.subscribe(query) as subscription:
                stream.subscription = subscription
                sent = await _replay(request, stream, query, sent)
                await _follow(stream, subscription, sent)
    except _Ended:
        await stream.finish()
    except ConnectionError:
        pass  # the client went away
    return response


async def _resume_position(request: web.Request) -> int | None:
    raw = request.headers.get("Last-Event-ID")
    if raw is None or not raw.strip():
        return None
    event_id = canonical_uuid(raw.strip())
    store = request.app[STORE]
    position = await asyncio.to_thread(store.position_of, event_id) if event_id else None
    if position is None:
        raise Problem(
            400,
            "cannot resume: Last-Event-ID names no stored event",
            [FieldError("Last-Event-ID", "must be the id of a stored event")],
        )
    return position


async def _replay(request: web.Request, stream: _EventStream, query: EventQuery, after: int) -> int:
    """Send every matching stored event after position `after`; the position of the last one."""
    store = request.app[STORE]
    position = after
    while True:
        page = await asyncio.to_thread(
            store.query, replace(query, limit=BACKLOG_PAGE, after_pk=position)
        )
        if not page.events:
            return position
        await stream.events(page.events)
        if page.last_pk is not None:
            position = page.last_pk
            continue
        last = await asyncio.to_thread(store.position_of, page.events[-1].id)
        assert last is not None  # events are never deleted
        return last


async def _follow(stream: _EventStream, subscription: Subscription, sent: int) -> None:
    while True:
        try:
            async with asyncio.timeout(HEARTBEAT_SECONDS):
                batch = await subscription.next_batch()
        except TimeoutError:
            await stream.write(b": keepalive\n\n")
            continue
        if subscription.ended.done():
            raise _Ended
        fresh: list[Published] = [item for item in batch if item.position > sent]
        if fresh:
            await stream.events([item.event for item in fresh])
            sent = fresh[-1].position


class _EventStream:
    """Writes SSE messages. A write stuck on a client that does not read gives way
    as soon as the subscription ends; it is never cancelled (cancelling an aiohttp
    write that waits for the socket breaks every later write on that response),
    the connection is aborted instead if the client still does not read."""

    def __init__(self, request: web.Request, response: web.StreamResponse) -> None:
        self._request = request
        self._response = response
        self.subscription: Subscription | None = None
        self._stuck: asyncio.Future[None] | None = None
        self.last_id: str | None = None

    async def events(self, events: Sequence[AuditEvent]) -> None:
        if len(events) > RENDER_ON_LOOP:
            data = await asyncio.to_thread(_render, events)
        else:
            data = _render(events)
        if events:
            # Before writing: a stuck write has already handed its data to the transport.
            self.last_id = events[-1].id
        await self.write(data)

    async def write(self, data: bytes) -> None:
        if self.subscription is None:  # catching up from the store: nothing to give way to
            await self._response.write(data)
            return
        writing = asyncio.ensure_future(self._response.write(data))
        ended = self.subscription.ended
        await asyncio.wait((writing, ended), return_when=asyncio.FIRST_COMPLETED)
        if not writing.done():
            self._stuck = writing
            raise _Ended
        writing.result()

    async def finish(self) -> None:
        """Say why the stream ends (if dropped), then end it; abort the connection if
        the client has not read all that within `DROP_GRACE_SECONDS`."""
        deadline = asyncio.get_running_loop().time() + DROP_GRACE_SECONDS
        if self._stuck is not None and not await self._before(deadline, self._stuck):
            return
        await self._before(deadline, asyncio.ensure_future(self._close()))

    async def _close(self) -> None:
        if self.subscription is not None and self.subscription.dropped:
            notice = {
                "reason": "the client fell too far behind and was dropped; "
                "reconnect with Last-Event-ID to resume",
                "last_event_id": self.last_id,
            }
            await self._response.write(b"event: dropped\ndata: " + dumps(notice) + b"\n\n")
        await self._response.write_eof()

    async def _before(self, deadline: float, task: asyncio.Future[None]) -> bool:
        """Whether `task` completes by `deadline`; if not, abort the connection (which
        ends the task) and say False."""
        timeout = max(0.0, deadline - asyncio.get_running_loop().time())
        done, _ = await asyncio.wait((task,), timeout=timeout)
        if done and task.exception() is None:
            return True
        if not done:
            _reset(self._request.transport)
        with contextlib.suppress(ConnectionError):
            await task
        return False


def _render(events: Sequence[AuditEvent]) -> bytes:
    return b"".join(
        b"id: " + event.id.encode() + b"\ndata: " + dumps(event_json(event)) + b"\n\n"
        for event in events
    )


def _reset(transport: asyncio.Transport | None) -> None:
    """Drop the connection at once, with what the kernel still holds for the client:
    a reset (SO_LINGER 0), not a FIN that would queue behind data never to be read."""
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
