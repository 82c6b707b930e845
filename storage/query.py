"""Event queries: the filters of `GET /v1/events` and their keyset cursor.

A cursor is an opaque token that names the last event of a page (its `pk`),
the order, and a digest of the filters it was issued for, so it cannot be
replayed against a different query. It is a position, not an offset: new
events never shift a page.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass, replace
from typing import Literal

import orjson

Order = Literal["asc", "desc"]
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100

_ONE_INDEX = (
    (),
    ("actor",),
    ("entity",),
    ("entity", "entity_id"),
    ("event_type",),
    ("action",),
    ("stream",),
)
"""The filter sets an index of `storage.schema` answers in `pk` order on its own: the
index's key ends in `pk`, so a page is one range of it, read in order."""


class CursorError(ValueError):
    """The cursor is not one this server issued for this query."""


@dataclass(frozen=True, slots=True)
class EventQuery:
    actor: str | None = None
    entity: str | None = None
    entity_id: str | None = None
    event_types: tuple[str, ...] = ()
    action: str | None = None
    stream: str | None = None
    property: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    order: Order = "desc"
    limit: int = DEFAULT_LIMIT
    after_pk: int | None = None

    def one_index_range(self) -> bool:
        """Whether a page of this query is one range of one index, read in its order:
        at most `limit + 1` index entries, whatever the size of the store (no scan
        that skips non-matching rows, no sort)."""
        if self.property is not None or self.since_ms is not None or self.until_ms is not None:
            return False
        if len(self.event_types) > 1:
            return False
        given = (
            ("actor", self.actor),
            ("entity", self.entity),
            ("entity_id", self.entity_id),
            ("event_type", self.event_types[0] if self.event_types else None),
            ("action", self.action),
            ("stream", self.stream),
        )
        return tuple(name for name, value in given if value is not None) in _ONE_INDEX

    def filters_digest(self) -> str:
        """What a cursor is bound to: every filter and the order, not the position or limit."""
        key = replace(self, limit=0, after_pk=None)
        raw = orjson.dumps(
            [
                key.actor,
                key.entity,
                key.entity_id,
                sorted(key.event_types),
                key.action,
                key.stream,
                key.property,
                key.since_ms,
                key.until_ms,
                key.order,
            ]
        )
        return hashlib.sha256(raw).hexdigest()[:16]


def encode_cursor(query: EventQuery, last_pk: int) -> str:
    raw = orjson.dumps({"v": 1, "k": last_pk, "f": query.filters_digest()})
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(query: EventQuery, cursor: str) -> int:
    """The pk the cursor points after; `CursorError` unless it was issued for `query`."""
    if not cursor or len(cursor) > 200 or not cursor.isascii():
        raise CursorError("malformed cursor")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = orjson.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise CursorError("malformed cursor") from exc
    if not isinstance(data, dict) or data.get("v") != 1:
        raise CursorError("malformed cursor")
    last_pk = data.get("k")
    if type(last_pk) is not int or last_pk < 0:
        raise CursorError("malformed cursor")
    if data.get("f") != query.filters_digest():
        raise CursorError("cursor was issued for different filters or order")
    return last_pk
