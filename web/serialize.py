"""Converting stored events to the JSON shapes of the API (v1 and the seed routes)."""

from __future__ import annotations

from typing import Any

import orjson

from storage.events import AuditEvent, format_time

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
