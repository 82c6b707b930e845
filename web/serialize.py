"""The API's JSON: stored events in the shapes of the API (v1 and the seed routes), and
posted documents read (`parse_json`)."""

from __future__ import annotations

from typing import Any

import orjson

from storage.events import AuditEvent, format_ms, format_time
from web.errors import Problem

EVENT_FIELDS = (
    "id",
    "stream",
    "seq",
    "entity",
    "entity_id",
    "event_type",
    "action",
    "properties",
    "before",
    "after",
    "actor",
    "occurred_at",
    "recorded_at",
    "metadata",
    "hash",
)
"""The fields of every event the API serves, in order (`redacted` is added when true)."""


def event_json(event: AuditEvent) -> dict[str, Any]:
    """The event as SPEC's "The event" shows it."""
    body: dict[str, Any] = {
        "id": event.id,
        "stream": event.stream,
        "seq": event.seq,
        "entity": event.entity,
        "entity_id": event.entity_id,
        "event_type": event.event_type.value,
        "action": event.action,
        "properties": list(event.properties),
        "before": event.before,
        "after": event.after,
        "actor": {"id": event.actor.id, "name": event.actor.name, "ip": event.actor.ip},
        "occurred_at": format_time(event.occurred_at),
        "recorded_at": format_time(event.recorded_at),
        "metadata": event.metadata,
        "hash": event.hash,
    }
    if event.redacted:
        body["redacted"] = True
    return body


def stored_event_json(row: tuple[Any, ...]) -> dict[str, Any]:
    """`event_json(row_to_event(row))` straight from a stored row (`AuditStore.query_rows`).

    The hot path of `GET /v1/events`: no event model in between, times formatted
    with the per-second cache, the properties' stored JSON array parsed as is.
    tests/test_serialize.py holds it to `event_json(row_to_event(row))`.
    """
    (
        _pk, event_id, stream, seq, entity, entity_id, event_type, action, properties,
        actor_id, actor_name, actor_ip, occurred_at, recorded_at, document, _digest, leaf,
        redacted,
    ) = row
    payload = orjson.loads(document) if document is not None else None
    body: dict[str, Any] = {
        "id": event_id,
        "stream": stream,
        "seq": int(seq),
        "entity": entity,
        "entity_id": entity_id,
        "event_type": event_type,
        "action": action,
        "properties": orjson.loads(properties),
        "before": payload["before"] if payload else None,
        "after": payload["after"] if payload else None,
        "actor": {"id": actor_id, "name": actor_name, "ip": actor_ip},
        "occurred_at": format_ms(occurred_at),
        "recorded_at": format_ms(recorded_at),
        "metadata": payload["metadata"] if payload else {},
        "hash": leaf,
    }
    if redacted:
        body["redacted"] = True
    return body


def seed_event_json(event: AuditEvent) -> dict[str, Any]:
    """The seed service's success shape, kept exactly for its existing clients."""
    actor = event.actor
    return {
        "result": "success",
        "entity": event.entity,
        "property": list(event.properties),
        "event_uuid": event.id,
        "event_type": event.event_type.value,
        "datetime": format_time(event.occurred_at),
        "customer": f"{actor.id} {actor.name or ''} ,{actor.ip or ''}",
    }


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


def parse_json(raw: bytes, what: str = "body") -> Any:
    """A posted JSON document; `Problem(400)` saying what is wrong with it."""
    if not raw.strip():
        raise Problem(400, f"{what} is empty; a JSON document is expected")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Problem(400, f"{what} is not valid JSON: {_short(exc)}") from exc


def _short(exc: orjson.JSONDecodeError) -> str:
    message = str(exc.msg) if hasattr(exc, "msg") else str(exc)
    return message[:200]
