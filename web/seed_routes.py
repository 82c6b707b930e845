"""The seed service's routes, kept exactly for its existing clients.

`/create_log/<user_id>` records an event for that actor; `/update_log/<uuid>`
appends a correction that points at the original (`metadata.amends`), never
changing it; `/delete_log/<uuid>` redacts the payload and records the
redaction as an event of its own. Bodies are read as JSON whatever the
Content-Type says, because `curl -d` sends form encoding.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from aiohttp import web

from storage.events import Actor, AuditEvent, EventType, NewEvent, utc_now
from storage.query import EventQuery
from web.bodies import read_json
from web.event_routes import append, canonical_uuid, json_response
from web.keys import STORE, read_in_reader
from web.problems import Problem
from web.serialize import seed_event_json
from web.validation import ValidationFailed, parse_event

routes = web.RouteTableDef()
SEED_LIST_LIMIT = 1000
SEED_FIELDS = (
    "entity",
    "event_type",
    "datetime",
    "property",
    "before",
    "after",
    "entity_id",
    "action",
    "occurred_at",
    "properties",
    "metadata",
)


@routes.get("/ping")
async def ping(_request: web.Request) -> web.Response:
    return json_response({"result": "success", "message": "pong"})


@routes.get("/get_log/customer/{user_id}")
async def customer_log(request: web.Request) -> web.Response:
    user_id = _user_id(request)
    query = EventQuery(actor=user_id, order="desc", limit=SEED_LIST_LIMIT)
    page = await read_in_reader(request, request.app[STORE].query, query)
    return json_response({"result": "success", "events": [seed_event_json(e) for e in page.events]})


@routes.get("/get_log/event/{event_uuid}")
async def event_log(request: web.Request) -> web.Response:
    event = await _find(request)
    return json_response(seed_event_json(event))


@routes.post("/create_log/{user_id}")
async def create_log(request: web.Request) -> web.Response:
    body = await read_json(request)
    new = _parse_seed_body(body, _actor(request, body))
    stored = (await append(request, [new]))[0].event
    return json_response(seed_event_json(stored))


@routes.put("/update_log/{event_uuid}")
async def update_log(request: web.Request) -> web.Response:
    original = await _find(request)
    body = await read_json(request)
    if not isinstance(body, dict):
        raise Problem(400, "body must be a JSON object")
    merged: dict[str, Any] = {
        "entity": original.entity,
        "event_type": original.event_type.value,
        "entity_id": original.entity_id,
        "action": original.action,
        "datetime": None,
        "property": list(original.properties),
        "before": original.before,
        "after": original.after,
    }
    merged.update({k: v for k, v in body.items() if k in SEED_FIELDS})
    if merged["datetime"] is None and "occurred_at" not in body:
        merged["datetime"] = original.occurred_at.isoformat()
    actor = original.actor
    if body.get("name") is not None or body.get("ip") is not None:
        actor = _actor_from(actor.id, body)
    correction = _parse_seed_body(merged, actor, stream=original.stream)
    metadata = {**correction.metadata, "amends": original.id}
    stored = (await append(request, [replace(correction, metadata=metadata)]))[0].event
    return json_response(seed_event_json(stored))


@routes.delete("/delete_log/{event_uuid}")
async def delete_log(request: web.Request) -> web.Response:
    original = await _find(request)
    redaction = redaction_event(original, Actor("api"), reason=None)
    result = await asyncio.to_thread(request.app[STORE].redact, original.id, redaction)
    if result is None:
        raise Problem(404, "does not exist")
    return json_response(seed_event_json(result[0]))


def redaction_event(original: AuditEvent, actor: Actor, reason: str | None) -> NewEvent:
    """The event that records a redaction: who, when, why, and which event."""
    metadata: dict[str, Any] = {"redacts": original.id}
    if reason:
        metadata["reason"] = reason
    return NewEvent(
        stream=original.stream,
        entity="audit_event",
        entity_id=original.id,
        event_type=EventType.UPDATE,
        action="audit_event.redacted",
        actor=actor,
        occurred_at=utc_now(),
        properties=("before", "after", "metadata"),
        metadata=metadata,
    )


async def _find(request: web.Request) -> AuditEvent:
    event_id = canonical_uuid(request.match_info["event_uuid"])
    event = await read_in_reader(request, request.app[STORE].get, event_id) if event_id else None
    if event is None:
        raise Problem(404, "does not exist")
    return event


def _user_id(request: web.Request) -> str:
    user_id = request.match_info["user_id"]
    if not user_id or len(user_id) > 200 or "\x00" in user_id:
        raise Problem(400, "user_id must be 1 to 200 characters")
    return user_id


def _actor(request: web.Request, body: Any) -> Actor:
    user_id = _user_id(request)
    return _actor_from(user_id, body if isinstance(body, dict) else {})


def _actor_from(user_id: str, body: dict[str, Any]) -> Actor:
    actor_body: dict[str, Any] = {"id": user_id}
    for key in ("name", "ip"):
        if body.get(key) is not None:
            actor_body[key] = body[key]
    return Actor(user_id, actor_body.get("name"), actor_body.get("ip"))


def _parse_seed_body(body: Any, actor: Actor, stream: str = "api") -> NewEvent:
    if not isinstance(body, dict):
        raise Problem(400, "body must be a JSON object")
    fields = {k: v for k, v in body.items() if k in SEED_FIELDS and v is not None}
    fields["actor"] = {"id": actor.id, "name": actor.name, "ip": actor.ip}
    try:
        return parse_event(fields, stream=stream)
    except ValidationFailed as exc:
        raise Problem(400, str(exc)) from exc
