"""`/v1/events`: query with filters and keyset pagination, fetch one, post events.

Posting accepts what `web.ingest` parses: one event, `{"events": [...]}` (all or
nothing), NDJSON and CloudEvents (structured and batch). Every acknowledged event
is committed (through the app's group-commit writer) before the response is sent.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable
from dataclasses import replace
from typing import Any, TypeVar

from aiohttp import web

from storage.events import NewEvent, to_ms
from storage.query import MAX_LIMIT, CursorError, EventQuery, decode_cursor, encode_cursor
from storage.store import Appended, AppendRequest, AuditStore, StorageError
from storage.writer import Submitted
from storage.writer_process import ProcessWriter, WriterLost
from web import ingest
from web.bodies import read_body
from web.keys import STORE, WRITER, read_in_reader
from web.metrics import METRICS
from web.problems import Problem
from web.serialize import dumps, event_json, stored_event_json
from web.validation import FieldError, parse_time

T = TypeVar("T")
JSON = "application/json"
PARSE_APART_MAX = 32 * 1024
"""Bodies up to this size are parsed in the store writer process, where there is one
(`web.ingest`); larger ones on the loop, which parses a batch while the one before
commits."""

FILTER_NAMES = (
    "actor",
    "entity",
    "entity_id",
    "event_type",
    "action",
    "stream",
    "property",
    "since",
    "until",
)
"""The query filters shared by `/v1/events`, `/v1/export` and `/v1/tail`."""
QUERY_PARAMS = frozenset({*FILTER_NAMES, "order", "limit", "cursor"})

routes = web.RouteTableDef()


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=dumps(body), content_type=JSON)


def parse_query(params: Any, *, allowed: frozenset[str] = QUERY_PARAMS) -> EventQuery:
    """`GET /v1/events` parameters as an `EventQuery`; `Problem(400)` naming each bad one."""
    errors: list[FieldError] = []
    for key in params:
        if key not in allowed:
            errors.append(FieldError(key[:50], "unknown query parameter"))
        elif key != "event_type" and len(params.getall(key)) > 1:
            errors.append(FieldError(key, "may be given only once"))

    def text(key: str) -> str | None:
        value = params.get(key)
        if value is None:
            return None
        if not value or len(value) > 200 or "\x00" in value:
            errors.append(FieldError(key, "must be 1 to 200 characters"))
            return None
        return str(value)

    def time_ms(key: str) -> int | None:
        value = params.get(key)
        if value is None:
            return None
        try:
            return to_ms(parse_time(value))
        except ValueError as exc:
            errors.append(FieldError(key, str(exc)))
            return None

    event_types: list[str] = []
    for value in params.getall("event_type", []):
        if value.upper() in ("CREATE", "READ", "UPDATE", "DELETE"):
            event_types.append(value.upper())
        else:
            errors.append(FieldError("event_type", "must be one of CREATE, READ, UPDATE, DELETE"))
    order = params.get("order", "desc")
    if order not in ("asc", "desc"):
        errors.append(FieldError("order", "must be asc or desc"))
        order = "desc"
    limit = 100
    if "limit" in params:
        raw = params["limit"]
        if raw.isascii() and raw.isdigit() and 1 <= int(raw) <= MAX_LIMIT:
            limit = int(raw)
        else:
            errors.append(FieldError("limit", f"must be a whole number from 1 to {MAX_LIMIT}"))
    query = EventQuery(
        actor=text("actor"),
        entity=text("entity"),
        entity_id=text("entity_id"),
        event_types=tuple(dict.fromkeys(event_types)),
        action=text("action"),
        stream=text("stream"),
        property=text("property"),
        since_ms=time_ms("since"),
        until_ms=time_ms("until"),
        order=order,
        limit=limit,
    )
    if "cursor" in params and not errors:
        try:
            query = replace(query, after_pk=decode_cursor(query, params["cursor"]))
        except CursorError as exc:
            errors.append(FieldError("cursor", str(exc)))
    if errors:
        raise Problem(400, "invalid query parameters", errors)
    return query


@routes.get("/v1/events")
async def list_events(request: web.Request) -> web.Response:
    query = parse_query(request.query)
    store = request.app[STORE]
    if store.query_is_quick(query):
        # Bounded work (one index range, at most 100 events, no network): handing it to
        # the reader thread cost more than doing it here. wrk, 64 connections, 100,000
        # events, three alternating rounds: 815-916 req/s through the reader thread,
        # 1,323-1,484 here (p99 93-100 → 59-70 ms; one connection unchanged).
        body = _page_body(store, query)
    else:
        body = await read_in_reader(request, _page_body, store, query)
    return web.Response(body=body, content_type="application/json")


def _page_body(store: AuditStore, query: EventQuery) -> bytes:
    """Query and serialise a page. Off the event loop unless the query is quick:
    encoding a page costs more than its SQL, and the loop has requests to parse."""
    rows, last_pk = store.query_rows(query)
    cursor = encode_cursor(query, last_pk) if last_pk is not None else None
    return dumps({"events": [stored_event_json(row) for row in rows], "next_cursor": cursor})


@routes.get("/v1/events/{event_id}")
async def get_event(request: web.Request) -> web.Response:
    event_id = canonical_uuid(request.match_info["event_id"])
    event = await read_in_reader(request, request.app[STORE].get, event_id) if event_id else None
    if event is None:
        raise Problem(404, "no event with this id")
    return json_response(event_json(event))


def canonical_uuid(value: str) -> str | None:
    if len(value) > 64:
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


@routes.post("/v1/events")
async def post_events(request: web.Request) -> web.Response:
    raw = await read_body(request)
    content_type = request.content_type.lower() if request.headers.get("Content-Type") else ""
    writer = request.app[WRITER]
    if isinstance(writer, ProcessWriter) and len(raw) <= PARSE_APART_MAX:
        posted = await _post_apart(request, writer, raw, content_type)
    else:
        events, single = ingest.parse_posted(raw, content_type)
        posted = ingest.answer_posted(await append(request, events), single)
    response = web.Response(status=posted.status, body=posted.body, content_type=JSON)
    if posted.location is not None:
        response.headers["Location"] = posted.location
    return response


async def _post_apart(
    request: web.Request, writer: ProcessWriter, raw: bytes, content_type: str
) -> ingest.Posted:
    """Parsed, committed and answered in the store writer process (`web.ingest`)."""
    outcome = await _writing(writer.submit(Submitted(ingest.__name__, (raw, content_type))))
    if isinstance(outcome, ingest.Refusal):
        raise outcome.problem()
    assert isinstance(outcome, ingest.Posted)
    # The commit listeners heard of the commit but not of these events, which this
    # process never had: count them here (aiohttp does not cancel a handler whose
    # client went away, so the count follows the commit).
    request.app[METRICS].count_stored(outcome.stored)
    return outcome


async def append(request: web.Request, events: list[NewEvent]) -> list[Appended]:
    return await _writing(request.app[WRITER].append(AppendRequest(events)))


async def _writing(work: Awaitable[T]) -> T:
    try:
        return await work
    except WriterLost as exc:
        raise Problem(
            503,
            "the store writer stopped during this commit: these events may or may not be "
            "stored; post them again with their ids to store them exactly once",
        ) from exc
    except StorageError as exc:
        raise Problem(503, "the audit store is unavailable; nothing was stored") from exc
