"""The audit event: one typed value shared by capture, storage and the API.

`NewEvent` is what a producer (the capture poller, an HTTP client) hands to the
store; the store numbers it within its stream, hashes it and returns an
`AuditEvent`. The HTTP layer only converts these to and from JSON.
"""

from __future__ import annotations

import enum
import operator
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, TypeVar

import uuid_utils

JSONValue = Any
"""A value that `orjson` can serialise (dict, list, str, int, float, bool, None)."""


T = TypeVar("T")


def by_position(cls: type[T]) -> type[T]:
    """Pickle a frozen dataclass as its class and field values, in order: the default
    for slotted dataclasses goes through `dataclasses.fields` for every instance.
    Events cross to the store writer process this way (`storage.writer_process`)."""
    values: Callable[[Any], tuple[Any, ...]] = operator.attrgetter(
        *(f.name for f in fields(cls))  # type: ignore[arg-type]
    )

    def __reduce__(self: T) -> tuple[type[T], tuple[Any, ...]]:
        return cls, values(self)

    cls.__reduce__ = __reduce__  # type: ignore[assignment,method-assign]
    return cls


class EventType(enum.StrEnum):
    CREATE = "CREATE"
    READ = "READ"
    UPDATE = "UPDATE"
    DELETE = "DELETE"


@by_position
@dataclass(frozen=True, slots=True)
class Actor:
    """Who made the change: an id, and where known a name and an IP address."""

    id: str
    name: str | None = None
    ip: str | None = None


SYSTEM_ACTOR = Actor(id="system")


@by_position
@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event before it is stored: no stream position, hash or record time yet."""

    stream: str
    entity: str
    event_type: EventType
    actor: Actor
    occurred_at: datetime
    entity_id: str | None = None
    action: str | None = None
    properties: tuple[str, ...] = ()
    before: dict[str, JSONValue] | None = None
    after: dict[str, JSONValue] | None = None
    metadata: dict[str, JSONValue] = field(default_factory=dict)
    id: str = field(default_factory=lambda: new_event_id())
    client_id: bool = False
    """The id came from a client: posting it again returns the stored event.
    Ids made by Auditor (and by capture, whose position makes it exactly-once)
    are new by construction, so the store does not look them up."""


@by_position
@dataclass(frozen=True, slots=True)
class AuditEvent:
    """A stored event, numbered `seq` within its `stream`; `hash` is its Merkle leaf hash."""

    id: str
    stream: str
    seq: int
    entity: str
    entity_id: str | None
    event_type: EventType
    action: str | None
    properties: tuple[str, ...]
    before: dict[str, JSONValue] | None
    after: dict[str, JSONValue] | None
    actor: Actor
    occurred_at: datetime
    recorded_at: datetime
    metadata: dict[str, JSONValue]
    hash: str
    redacted: bool = False


def new_event_id() -> str:
    """A time-ordered UUID (version 7) as its canonical string."""
    return str(uuid_utils.uuid7())


def utc_now() -> datetime:
    return datetime.now(UTC)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def to_ms(value: datetime) -> int:
    """Milliseconds since the epoch (floored), as the store keeps times."""
    return (value - _EPOCH) // _MS


def from_ms(value: int) -> datetime:
    return _EPOCH + value * _MS


def format_time(value: datetime) -> str:
    """RFC 3339 UTC with milliseconds: ``2026-11-28T12:00:00.123Z``.

    Through `format_ms` (2.4 -> 0.9 µs a call): two of these for every event a
    POST answers with."""
    if value.tzinfo is None:
        value = value.astimezone(UTC)
    return format_ms(to_ms(value))


@lru_cache(maxsize=4096)
def second_text(second: int) -> str:
    """`format_time` of a whole second since the epoch, without its milliseconds and Z."""
    value = _EPOCH + timedelta(seconds=second)
    # Not strftime: its %Y gives "999", not "0999", for years before 1000 on glibc,
    # and this string is part of the canonical bytes a leaf hash covers.
    return (
        f"{value.year:04d}-{value.month:02d}-{value.day:02d}T"
        f"{value.hour:02d}:{value.minute:02d}:{value.second:02d}."
    )


_MS_SUFFIX = tuple(f"{ms:03d}Z" for ms in range(1000))


def format_ms(ms: int) -> str:
    """`format_time` of milliseconds since the epoch, several times faster for
    times in the same second (a batch of events usually is). The millisecond's
    text comes from a table: formatting it was 0.5 of the 0.8 µs a call took,
    twice for every event of a `GET /v1/events` page."""
    return second_text(ms // 1000) + _MS_SUFFIX[ms % 1000]


def truncate_to_millis(value: datetime) -> datetime:
    """Times are kept to the millisecond, the precision of every format we emit."""
    value = value.astimezone(UTC)
    return value.replace(microsecond=value.microsecond - value.microsecond % 1000)
