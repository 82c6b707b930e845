"""`GET /v1/entities/{entity}/{entity_id}/history`: one record's events and its state.

The events come oldest first: by `occurred_at`, and in the order they were
stored where two share a time. `state` is the record as of `as_of` (default
now), folded from the events that occurred at or before it:

- CREATE, READ and UPDATE set the state to their `after`; one without an
  `after` (a posted event may leave it out) keeps the last known state;
- DELETE sets it to null;
- a redacted event's payload is gone, so it cannot say what the record became:
  from a redacted CREATE/READ/UPDATE on, the state is unknown (`state` null,
  `state_redacted` true) until a later event with an `after`, or a DELETE,
  makes it known again. Showing the state from before the redacted change
  would present values that the change had replaced as current.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiohttp import web

from storage.events import AuditEvent, EventType, format_time, truncate_to_millis, utc_now
from storage.query import EventQuery
from web.event_routes import json_response
from web.keys import STORE
from web.problems import Problem
from web.serialize import event_json
from web.validation import FieldError, parse_time

routes = web.RouteTableDef()

HISTORY_PARAMS = frozenset({"as_of"})


@dataclass(frozen=True, slots=True)
class RecordState:
    """What the events say a record was at some time; `known` is False after a redaction."""

    value: dict[str, Any] | None
    known: bool = True


def fold_state(events: list[AuditEvent], as_of: datetime) -> RecordState:
    """The record as of `as_of`, from its events oldest first (see the module docstring)."""
    state = RecordState(None)
    for event in events:
        if event.occurred_at > as_of:
            break
        if event.event_type is EventType.DELETE:
            state = RecordState(None)
        elif event.redacted:
            state = RecordState(None, known=False)
        elif event.after is not None:
            state = RecordState(event.after)
    return state


@routes.get("/v1/entities/{entity}/{entity_id}/history")
async def record_history(request: web.Request) -> web.Response:
    entity = _name(request, "entity")
    entity_id = _name(request, "entity_id")
    as_of = _as_of(request)
    query = EventQuery(entity=entity, entity_id=entity_id, order="asc")
    store = request.app[STORE]
    events = await asyncio.to_thread(lambda: list(store.iter_events(query)))
    if not events:
        raise Problem(404, f"no events for {entity} {entity_id}")
    # Stable: events that share a time stay in the order they were stored.
    events.sort(key=lambda event: event.occurred_at)
    state = fold_state(events, as_of)
    return json_response(
        {
            "entity": entity,
            "entity_id": entity_id,
            "events": [event_json(e) for e in events],
            "state": state.value,
            "state_redacted": not state.known,
            "as_of": format_time(as_of),
        }
    )


def _name(request: web.Request, key: str) -> str:
    value = request.match_info[key]
    if len(value) > 200 or "\x00" in value:
        raise Problem(400, "invalid path", [FieldError(key, "must be 1 to 200 characters")])
    return value


def _as_of(request: web.Request) -> datetime:
    errors = [
        FieldError(key[:50], "unknown query parameter")
        for key in request.query
        if key not in HISTORY_PARAMS
    ]
    if len(request.query.getall("as_of", [])) > 1:
        errors.append(FieldError("as_of", "may be given only once"))
    as_of = utc_now()
    if not errors and "as_of" in request.query:
        try:
            as_of = parse_time(request.query["as_of"])
        except ValueError as exc:
            errors.append(FieldError("as_of", str(exc)))
    if errors:
        raise Problem(400, "invalid query parameters", errors)
    return truncate_to_millis(as_of)
