"""The canonical byte encoding of an event, which its Merkle leaf hash covers.

The encoding is documented byte for byte in the README ("Proving the audit
trail is intact"): a JSON object with sorted keys, no insignificant white space,
UTF-8 (no ASCII escaping), integers as integers, times as RFC 3339 UTC strings
with milliseconds. It covers every field of the event but `recorded_at` and
`hash`; the payload (`before`, `after`, `metadata`) enters only through
`payload_digest`, the SHA-256 of its own canonical encoding, so a redaction
can erase the payload while the leaf still verifies.
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


def canonical_event(event: NewEvent, seq: int, digest: str) -> bytes:
    """The bytes a leaf hash covers, for `event` stored as number `seq` of its stream."""
    fields: dict[str, Any] = {
        "action": event.action,
        "actor": {"id": event.actor.id, "ip": event.actor.ip, "name": event.actor.name},
        "entity": event.entity,
        "entity_id": event.entity_id,
        "event_type": event.event_type.value,
        "id": event.id,
        "occurred_at": format_time(event.occurred_at),
        "payload_digest": digest,
        "properties": list(event.properties),
        "seq": seq,
        "stream": event.stream,
    }
    return canonical_json(fields)
