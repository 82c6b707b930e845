"""Turning posted JSON into `NewEvent`s, or a list of `{field, message}` errors.

Hand-written rather than a schema library: it runs once per posted event on
the hot ingest path, and it must name the exact field (`events[3].actor.ip`)
of every problem at once. Everything a client sends is bounded here: string
lengths, nesting depth, list sizes, NUL characters, dates.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from storage.events import Actor, EventType, NewEvent, new_event_id, utc_now

API_STREAM = "api"
ANONYMOUS = Actor(id="anonymous")
MAX_BATCH = 10_000
MAX_NAME = 200
MAX_PROPERTIES = 1_000
MAX_DEPTH = 32
EVENT_FIELDS = frozenset(
    {
        "id",
        "entity",
        "entity_id",
        "event_type",
        "action",
        "actor",
        "occurred_at",
        "datetime",
        "properties",
        "property",
        "before",
        "after",
        "metadata",
    }
)


@dataclass(frozen=True, slots=True)
class FieldError:
    field: str
    message: str


class ValidationFailed(Exception):
    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))
        self.errors = errors


class _Collector:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.errors: list[FieldError] = []

    def add(self, field: str, message: str) -> None:
        self.errors.append(FieldError(f"{self.prefix}{field}", message))


def parse_event(
    body: Any,
    *,
    prefix: str = "",
    stream: str = API_STREAM,
    default_actor: Actor = ANONYMOUS,
    allow_unknown: bool = False,
) -> NewEvent:
    """Validate one posted event object; raise `ValidationFailed` naming every bad field."""
    out = _Collector(prefix)
    if not isinstance(body, dict):
        raise ValidationFailed([FieldError(prefix.rstrip(".") or "body", "must be a JSON object")])
    if not allow_unknown:
        for key in body:
            if key not in EVENT_FIELDS:
                out.add(_field_name(key), "unknown field")

    entity = _name(body, "entity", out, required=True)
    event_type = _event_type(body, out)
    entity_id = _identifier(body, "entity_id", out)
    action = _name(body, "action", out)
    actor = _actor(body.get("actor"), out) if body.get("actor") is not None else default_actor
    occurred = _occurred_at(body, out)
    properties = _properties(body, out)
    before = _object(body, "before", out)
    after = _object(body, "after", out)
    metadata = _object(body, "metadata", out) or {}
    event_id = _event_id(body, out)

    if out.errors:
        raise ValidationFailed(out.errors)
    assert entity is not None and event_type is not None
    return NewEvent(
        id=event_id or new_event_id(),
        client_id=event_id is not None,
        stream=stream,
        entity=entity,
        entity_id=entity_id,
        event_type=event_type,
        action=action,
        actor=actor,
        occurred_at=occurred or utc_now(),
        properties=properties,
        before=before,
        after=after,
        metadata=metadata,
    )


def parse_time(value: str) -> datetime:
    """RFC 3339 time, or a plain date (midnight UTC); a time without offset is UTC."""
    if not isinstance(value, str) or not 10 <= len(value) <= 40 or "\x00" in value:
        raise ValueError("must be an RFC 3339 time or a date (YYYY-MM-DD)")
    try:
        if len(value) == 10:
            parsed = datetime.combine(date.fromisoformat(value), datetime.min.time(), UTC)
        else:
            parsed = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError as exc:
        raise ValueError("must be an RFC 3339 time or a date (YYYY-MM-DD)") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError("is out of range") from exc


def _field_name(key: str) -> str:
    printable = "".join(c if c.isprintable() else "?" for c in key[:50])
    return printable or "?"


def _text(value: Any, field: str, out: _Collector, limit: int) -> str | None:
    if not isinstance(value, str):
        out.add(field, "must be a string")
        return None
    if not value.strip():
        out.add(field, "must not be empty")
        return None
    if len(value) > limit:
        out.add(field, f"must be at most {limit} characters")
        return None
    if "\x00" in value:
        out.add(field, "must not contain NUL characters")
        return None
    return value


def _name(body: Mapping[str, Any], key: str, out: _Collector, required: bool = False) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            out.add(key, "is required")
        return None
    return _text(value, key, out, MAX_NAME)


def _identifier(body: Mapping[str, Any], key: str, out: _Collector) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return _text(value, key, out, MAX_NAME)


def _event_type(body: Mapping[str, Any], out: _Collector) -> EventType | None:
    value = body.get("event_type")
    if value is None:
        out.add("event_type", "is required")
        return None
    if isinstance(value, str) and value.upper() in EventType.__members__:
        return EventType(value.upper())
    out.add("event_type", "must be one of CREATE, READ, UPDATE, DELETE")
    return None


def _actor(value: Any, out: _Collector) -> Actor:
    if isinstance(value, str | int) and not isinstance(value, bool):
        actor_id = _text(str(value), "actor", out, MAX_NAME)
        return Actor(actor_id or "?")
    if not isinstance(value, dict):
        out.add("actor", "must be a string or an object with id, name, ip")
        return ANONYMOUS
    for key in value:
        if key not in ("id", "name", "ip"):
            out.add(f"actor.{_field_name(key)}", "unknown field")
    raw_id = value.get("id")
    if isinstance(raw_id, int) and not isinstance(raw_id, bool):
        raw_id = str(raw_id)
    actor_id = _text(raw_id, "actor.id", out, MAX_NAME) if raw_id is not None else None
    if raw_id is None:
        out.add("actor.id", "is required")
    name = _text(value["name"], "actor.name", out, MAX_NAME) if value.get("name") else None
    ip = _ip(value.get("ip"), "actor.ip", out)
    return Actor(actor_id or "?", name, ip)


def _ip(value: Any, field: str, out: _Collector) -> str | None:
    """The address in its canonical form. `inet_pton` rather than `ipaddress`: same
    answers for plain addresses, at a tenth of the cost on the hot ingest path."""
    if value is None or value == "":
        return None
    if isinstance(value, str) and len(value) <= 45 and "\x00" not in value:
        for family in (socket.AF_INET, socket.AF_INET6):
            try:
                return socket.inet_ntop(family, socket.inet_pton(family, value))
            except OSError:
                continue
    out.add(field, "must be an IPv4 or IPv6 address")
    return None


def _occurred_at(body: Mapping[str, Any], out: _Collector) -> datetime | None:
    for key in ("occurred_at", "datetime"):
        value = body.get(key)
        if value is not None:
            try:
                return parse_time(value)
            except ValueError as exc:
                out.add(key, str(exc))
                return None
    return None


def _properties(body: Mapping[str, Any], out: _Collector) -> tuple[str, ...]:
    key = "properties" if "properties" in body else "property"
    value = body.get(key)
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        out.add(key, "must be a list of column names")
        return ()
    if len(value) > MAX_PROPERTIES:
        out.add(key, f"must have at most {MAX_PROPERTIES} items")
        return ()
    names: list[str] = []
    for i, item in enumerate(value):
        name = _text(item, f"{key}[{i}]", out, MAX_NAME)
        if name is not None:
            names.append(name)
    return tuple(dict.fromkeys(names))


def _object(body: Mapping[str, Any], key: str, out: _Collector) -> dict[str, Any] | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        out.add(key, "must be a JSON object or null")
        return None
    problem = _payload_problem(value, 1)
    if problem:
        out.add(key, problem)
        return None
    return value


def _payload_problem(value: Any, depth: int) -> str | None:
    if depth > MAX_DEPTH:
        return f"must not be nested deeper than {MAX_DEPTH} levels"
    if isinstance(value, str):
        return "must not contain NUL characters" if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            if "\x00" in key:
                return "must not contain NUL characters"
            problem = _payload_problem(item, depth + 1)
            if problem:
                return problem
    elif isinstance(value, list):
        for item in value:
            problem = _payload_problem(item, depth + 1)
            if problem:
                return problem
    return None


def _event_id(body: Mapping[str, Any], out: _Collector) -> str | None:
    value = body.get("id")
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 64:
        out.add("id", "must be a UUID")
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        out.add("id", "must be a UUID")
        return None
