"""The canonical byte encoding of an event, which its Merkle leaf hash covers.

The encoding is documented byte for byte in the README ("Proving the audit
trail is intact"): a JSON object with sorted keys, no insignificant white space,
UTF-8 (no ASCII escaping), integers as integers, times as RFC 3339 UTC strings
with milliseconds. It covers every field of the event but `recorded_at` and
`hash`; the payload (`before`, `after`, `metadata`) enters only through
`payload_digest`, the SHA-256 of its own canonical encoding, so a redaction
can erase the payload while the leaf still verifies.

Everything is written by orjson (pinned in requirements.txt) with sorted keys;
tests/test_canonical.py pins the parts a re-implementation could get wrong:
key order is by Unicode code point (UTF-8 byte order, not JCS's UTF-16 order),
strings escape only `"`, `\\` and U+0000-U+001F, and floats take the shortest
digits that round-trip, in decimal notation when 1e-5 <= |x| < 1e16 (always
with a fractional part, `100.0`) and as `1.5e-7` / `1e+16` otherwise. NaN and
the infinities are written as `null` (so they are stored as null); integers
outside [-2**63, 2**64) and non-string keys cannot be encoded at all.
`storage.verify` never re-encodes a payload: it hashes the stored document,
so an orjson upgrade could not make an intact store look altered.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from storage.events import JSONValue, NewEvent, format_time

_DUMP_OPTIONS = orjson.OPT_SORT_KEYS


def canonical_json(value: JSONValue) -> bytes:
    """Sorted keys, compact, UTF-8: the same value always gives the same bytes."""
    return orjson.dumps(value, option=_DUMP_OPTIONS)


def payload_document(
    before: dict[str, JSONValue] | None,
    after: dict[str, JSONValue] | None,
    metadata: dict[str, JSONValue],
) -> bytes:
    return canonical_json({"after": after, "before": before, "metadata": metadata})


def payload_digest(document: bytes) -> str:
    return hashlib.sha256(document).hexdigest()


def canonical_event(
    event: NewEvent, seq: int, digest: str, occurred_at: str | None = None
) -> bytes:
    """The bytes a leaf hash covers, for `event` stored as number `seq` of its stream.

    `occurred_at`: the event's time already formatted (`format_time` of it to the
    millisecond), when the caller has it at hand.
    """
    return canonical_fields(
        event_id=event.id,
        stream=event.stream,
        seq=seq,
        entity=event.entity,
        entity_id=event.entity_id,
        event_type=event.event_type.value,
        action=event.action,
        properties=list(event.properties),
        actor_id=event.actor.id,
        actor_name=event.actor.name,
        actor_ip=event.actor.ip,
        occurred_at=occurred_at if occurred_at is not None else format_time(event.occurred_at),
        payload_digest=digest,
    )


def canonical_fields(
    *,
    event_id: str,
    stream: str,
    seq: int,
    entity: str,
    entity_id: str | None,
    event_type: str,
    action: str | None,
    properties: list[str],
    actor_id: str,
    actor_name: str | None,
    actor_ip: str | None,
    occurred_at: str,
    payload_digest: str,
) -> bytes:
    """The canonical bytes from the event's stored values (`occurred_at` already formatted).

    The one definition of the layout: the store uses it when it appends and
    `storage.verify` when it recomputes from stored rows.
    """
    fields: dict[str, Any] = {
        "action": action,
        "actor": {"id": actor_id, "ip": actor_ip, "name": actor_name},
        "entity": entity,
        "entity_id": entity_id,
        "event_type": event_type,
        "id": event_id,
        "occurred_at": occurred_at,
        "payload_digest": payload_digest,
        "properties": properties,
        "seq": seq,
        "stream": stream,
    }
    # The literal above is in sorted key order already (a test holds it to
    # `canonical_json`), which spares verify the cost of sorting every event.
    return orjson.dumps(fields)
