"""`GET /openapi.json`: the OpenAPI 3.1 document of every route.

Written by hand from SPEC.md, next to the code it describes, and kept honest
by tests: every registered route must be documented and every documented
route served (tests/test_openapi.py), and schemathesis checks live responses
against it. The document is built once per process (`document()`).
"""

from __future__ import annotations

import functools
from typing import Any

from aiohttp import web

from web.event_routes import FILTER_NAMES
from web.serialize import EVENT_FIELDS, dumps

routes = web.RouteTableDef()

Schema = dict[str, Any]

PROBLEM = "application/problem+json"
JSON = "application/json"
NDJSON = "application/x-ndjson"
EVENT_TYPES = ["CREATE", "READ", "UPDATE", "DELETE"]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: Schema) -> Schema:
    return {"oneOf": [schema, {"type": "null"}]}


def _json(schema: Schema, description: str) -> Schema:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _problem(description: str) -> Schema:
    return {"$ref": f"#/components/responses/{description}"}


def _seed_failure(description: str) -> Schema:
    return _json(_ref("SeedFailure"), description)


NAME: Schema = {
    "type": "string",
    "minLength": 1,
    "maxLength": 200,
    "pattern": "^[^\\u0000]*[^\\s\\u0000][^\\u0000]*$",
    "description": "1 to 200 characters, not all blank, no NUL",
}
TEXT: Schema = {
    "type": "string",
    "minLength": 1,
    "maxLength": 200,
    "pattern": "^[^\\u0000]*$",
    "description": "1 to 200 characters, no NUL",
}
IP: Schema = {"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]}
TIME: Schema = {"type": "string", "format": "date-time"}
TIME_OR_DATE: Schema = {
    "type": "string",
    "anyOf": [{"format": "date-time"}, {"format": "date"}],
    "minLength": 10,
    "maxLength": 40,
    "description": "an RFC 3339 time (UTC when it has no offset) or a date (YYYY-MM-DD)",
    "examples": ["2026-11-28T12:00:00.123Z", "2026-11-28"],
}
PAYLOAD: Schema = {"type": "object", "description": "any JSON object, at most 32 levels deep"}
HEX64: Schema = {"type": "string", "pattern": "^[0-9a-f]{64}$"}

SCHEMAS: dict[str, Schema] = {
    "Actor": {
        "type": "object",
        "required": ["id", "name", "ip"],
        "properties": {
            "id": {"type": "string"},
            "name": {"type": ["string", "null"]},
            "ip": {"type": ["string", "null"]},
        },
    },
    "Event": {
        "type": "object",
        "description": "A stored audit event.",
        "required": list(EVENT_FIELDS),
        "properties": {
            "id": {"type": "string", "format": "uuid", "description": "time-ordered (v7)"},
            "stream": {"type": "string", "description": "source name, or 'api'"},
            "seq": {"type": "integer", "minimum": 1, "description": "1, 2, 3… in the stream"},
            "entity": {"type": "string"},
            "entity_id": {"type": ["string", "null"]},
            "event_type": {"type": "string", "enum": EVENT_TYPES},
            "action": {"type": ["string", "null"]},
            "properties": {"type": "array", "items": {"type": "string"}},
            "before": {"type": ["object", "null"]},
            "after": {"type": ["object", "null"]},
            "actor": _ref("Actor"),
            "occurred_at": TIME,
            "recorded_at": TIME,
            "metadata": {"type": "object"},
            "hash": {"type": "string", "pattern": "^[0-9a-f]{64}$", "description": "leaf hash"},
            "redacted": {"type": "boolean", "const": True, "description": "only when redacted"},
        },
    },
    "EventInput": {
        "type": "object",
        "description": "A posted event; stored in stream 'api'.",
        "required": ["entity", "event_type"],
        "additionalProperties": False,
        "properties": {
            "id": {"type": "string", "format": "uuid", "description": "makes the post idempotent"},
            "entity": NAME,
            "entity_id": {"oneOf": [NAME, {"type": "integer"}, {"type": "null"}]},
            "event_type": {
                "type": "string",
                "enum": [*EVENT_TYPES, *(t.lower() for t in EVENT_TYPES)],
            },
            "action": {"oneOf": [NAME, {"type": "null"}]},
            "actor": {
                "description": "an id, or {id, name, ip}; default 'anonymous'",
                "oneOf": [
                    NAME,
                    {
                        "type": "object",
                        "required": ["id"],
                        "additionalProperties": False,
                        "properties": {
                            "id": NAME,
                            "name": {"oneOf": [NAME, {"type": "null"}]},
                            "ip": {"oneOf": [IP, {"type": "null"}]},
                        },
                    },
                    {"type": "null"},
                ],
            },
            "occurred_at": TIME_OR_DATE,
            "datetime": {**TIME_OR_DATE, "description": "the seed's name for occurred_at"},
            "properties": {"type": "array", "maxItems": 1000, "items": NAME},
            "property": {
                "description": "the seed's name for properties",
                "oneOf": [NAME, {"type": "array", "maxItems": 1000, "items": NAME}],
            },
            "before": {"oneOf": [PAYLOAD, {"type": "null"}]},
            "after": {"oneOf": [PAYLOAD, {"type": "null"}]},
            "metadata": {"oneOf": [PAYLOAD, {"type": "null"}]},
        },
    },
    "EventBatchInput": {
        "type": "object",
        "required": ["events"],
        "additionalProperties": False,
        "properties": {
            "events": {
                "type": "array",
                "minItems": 1,
                "maxItems": 10000,
                "items": _ref("EventInput"),
            }
        },
    },
    "CloudEvent": {
        "type": "object",
        "description": "A CloudEvent (structured mode) whose data is an Auditor event.",
        "required": ["specversion", "id", "source", "type", "data"],
        "properties": {
            "specversion": {"type": "string", "const": "1.0"},
            "id": NAME,
            "source": NAME,
            "type": NAME,
            "subject": NAME,
            "time": TIME_OR_DATE,
            "data": _ref("EventInput"),
        },
    },
    "EventList": {
        "type": "object",
        "required": ["events"],
        "properties": {"events": {"type": "array", "items": _ref("Event")}},
    },
    "EventPage": {
        "type": "object",
        "required": ["events", "next_cursor"],
        "properties": {
            "events": {"type": "array", "items": _ref("Event")},
            "next_cursor": {"type": ["string", "null"]},
        },
    },
    "FieldError": {
        "type": "object",
        "required": ["field", "message"],
        "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
    },
    "Problem": {
        "type": "object",
        "description": "RFC 9457 problem details; `errors` names each bad input field.",
        "required": ["type", "status", "title", "detail"],
        "properties": {
            "type": {"type": "string"},
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "title": {"type": "string"},
            "detail": {"type": "string"},
            "errors": {"type": "array", "items": _ref("FieldError")},
        },
    },
    "SeedEvent": {
        "type": "object",
        "required": [
            "result",
            "entity",
            "property",
            "event_uuid",
            "event_type",
            "datetime",
            "customer",
        ],
        "properties": {
            "result": {"const": "success"},
            "entity": {"type": "string"},
            "property": {"type": "array", "items": {"type": "string"}},
            "event_uuid": {"type": "string", "format": "uuid"},
            "event_type": {"type": "string", "enum": EVENT_TYPES},
            "datetime": TIME,
            "customer": {"type": "string", "description": "'<id> <name> ,<ip>'"},
        },
    },
    "SeedEventList": {
        "type": "object",
        "required": ["result", "events"],
        "properties": {
            "result": {"const": "success"},
            "events": {"type": "array", "items": _ref("SeedEvent")},
        },
    },
    "SeedFailure": {
        "type": "object",
        "required": ["result", "reason"],
        "properties": {"result": {"const": "failed"}, "reason": {"type": "string"}},
    },
    "SeedCreate": {
        "type": "object",
        "description": "Read as JSON whatever the Content-Type says.",
        "required": ["entity", "event_type"],
        "properties": {
            "entity": NAME,
            "event_type": {"type": "string", "enum": EVENT_TYPES},
            "datetime": TIME_OR_DATE,
            "property": {"oneOf": [NAME, {"type": "array", "items": NAME}]},
            "name": NAME,
            "ip": IP,
            "before": PAYLOAD,
            "after": PAYLOAD,
        },
    },
    "SeedUpdate": {
        "type": "object",
        "description": "Fields that override the original's in the correction event.",
        "properties": {
            "entity": NAME,
            "event_type": {"type": "string", "enum": EVENT_TYPES},
            "datetime": TIME_OR_DATE,
            "property": {"oneOf": [NAME, {"type": "array", "items": NAME}]},
            "name": NAME,
            "ip": IP,
            "before": PAYLOAD,
            "after": PAYLOAD,
        },
    },
    "History": {
        "type": "object",
        "required": ["events", "state"],
        "properties": {
            "entity": {"type": "string"},
            "entity_id": {"type": "string"},
            "events": {"type": "array", "items": _ref("Event"), "description": "oldest first"},
            "state": {"type": ["object", "null"], "description": "the record as of as_of"},
            "state_redacted": {"type": "boolean"},
            "as_of": TIME,
        },
    },
    "Stream": {
        "type": "object",
        "required": ["name", "head_seq", "head_hash"],
        "properties": {
            "name": {"type": "string"},
            "head_seq": {"type": "integer", "minimum": 0},
            "head_hash": {"type": ["string", "null"]},
            "updated_at": {"oneOf": [TIME, {"type": "null"}]},
            "backlog": {"type": ["integer", "null"], "description": "capture sources only"},
            "last_capture_at": {"oneOf": [TIME, {"type": "null"}]},
            "lag_seconds": {"type": "number", "description": "capture sources only"},
            "untranslatable": {
                "type": "integer",
                "description": "shadow rows kept because they could not be translated",
            },
            "capturing": {"type": "boolean", "description": "capture sources only"},
        },
    },
    "Verification": {
        "type": "object",
        "required": ["ok", "checked", "first_bad_seq", "reason"],
        "properties": {
            "stream": {"type": "string"},
            "ok": {"type": "boolean"},
            "checked": {"type": "integer", "minimum": 0},
            "checkpoints": {"type": "integer", "minimum": 0},
            "first_bad_seq": {"type": ["integer", "null"]},
            "event_id": {"type": ["string", "null"]},
            "kind": {"type": ["string", "null"]},
            "reason": {"type": ["string", "null"]},
        },
    },
    "Checkpoint": {
        "type": "object",
        "description": "A signed (stream, size, root, time).",
        "required": ["stream", "size", "root", "signed_at", "key_id", "signature"],
        "properties": {
            "stream": {"type": "string"},
            "size": {"type": "integer", "minimum": 0},
            "root": HEX64,
            "signed_at": TIME,
            "key_id": HEX64,
            "signature": {"type": "string"},
        },
    },
    "InclusionProof": {
        "type": "object",
        "description": "The audit path (RFC 9162) from the event's leaf to a checkpoint's root.",
        "required": ["event_id", "stream", "seq", "leaf_hash", "tree_size", "root", "proof"],
        "properties": {
            "event_id": {"type": "string", "format": "uuid"},
            "stream": {"type": "string"},
            "seq": {"type": "integer", "minimum": 1},
            "leaf_index": {"type": "integer", "minimum": 0},
            "leaf_hash": HEX64,
            "payload_digest": {"type": "string"},
            "tree_size": {"type": "integer", "minimum": 1},
            "root": HEX64,
            "checkpoint": _ref("Checkpoint"),
            "proof": {"type": "array", "items": HEX64},
        },
    },
    "ConsistencyProof": {
        "type": "object",
        "description": "The consistency proof (RFC 9162) between two sizes of a stream.",
        "required": ["stream", "first", "second", "first_root", "second_root", "proof"],
        "properties": {
            "stream": {"type": "string"},
            "first": {"type": "integer", "minimum": 0},
            "second": {"type": "integer", "minimum": 0},
            "first_root": HEX64,
            "second_root": HEX64,
            "proof": {"type": "array", "items": HEX64},
        },
    },
    "PublicKey": {
        "type": "object",
        "required": ["key_id", "algorithm", "public_key"],
        "properties": {
            "key_id": HEX64,
            "algorithm": {"type": "string"},
            "public_key": {"type": "string", "description": "raw key, hex"},
            "pem": {"type": "string"},
        },
    },
    "Redaction": {
        "type": "object",
        "required": ["event", "redaction"],
        "properties": {
            "event": _ref("Event"),
            "redaction": {**_ref("Event"), "description": "the event that records it"},
        },
    },
}

RESPONSES: dict[str, Schema] = {
    name: {"description": description, "content": {PROBLEM: {"schema": _ref("Problem")}}}
    for name, description in {
        "BadRequest": "invalid query, path or body",
        "Unauthorized": "no valid bearer token (when tokens are configured)",
        "Forbidden": "the token lacks the scope",
        "NotFound": "no such resource",
        "TooLarge": "body over 10 MiB, or a batch over 10,000 events",
        "Unsupported": "unsupported content type",
        "Unprocessable": "an invalid event (nothing was stored)",
        "Unavailable": "the store is unavailable (nothing was stored)",
        "NotReady": "a readiness check failed; `errors` names each",
        "Conflict": "the event is already redacted",
    }.items()
}

PARAMETERS: dict[str, Schema] = {
    **{
        name: {"name": name, "in": "query", "required": False, "schema": TEXT}
        for name in ("actor", "entity", "entity_id", "action", "stream", "property")
    },
    "event_type": {
        "name": "event_type",
        "in": "query",
        "required": False,
        "style": "form",
        "explode": True,
        "schema": {"type": "array", "items": {"type": "string", "enum": EVENT_TYPES}},
    },
    "since": {
        "name": "since",
        "in": "query",
        "required": False,
        "schema": TIME_OR_DATE,
        "description": "inclusive",
    },
    "until": {
        "name": "until",
        "in": "query",
        "required": False,
        "schema": TIME_OR_DATE,
        "description": "exclusive",
    },
    "order": {
        "name": "order",
        "in": "query",
        "required": False,
        "schema": {"type": "string", "enum": ["desc", "asc"], "default": "desc"},
    },
    "limit": {
        "name": "limit",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
    },
    "cursor": {
        "name": "cursor",
        "in": "query",
        "required": False,
        "schema": {"type": "string"},
        "description": "next_cursor of the previous page; only with the same filters",
    },
    "stream": {"name": "stream", "in": "query", "required": False, "schema": TEXT},
    "requiredStream": {
        "name": "stream",
        "in": "query",
        "required": True,
        "schema": {"type": "string", "minLength": 1, "maxLength": 64},
    },
    "eventId": {
        "name": "event_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "format": "uuid"},
    },
    "eventUuid": {
        "name": "event_uuid",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "format": "uuid"},
    },
    "userId": {"name": "user_id", "in": "path", "required": True, "schema": TEXT},
}

FILTERS = [{"$ref": f"#/components/parameters/{name}"} for name in FILTER_NAMES]


def _params(*names: str) -> list[Schema]:
    return [{"$ref": f"#/components/parameters/{name}"} for name in names]


def _operation(
    summary: str,
    responses: dict[str, Schema],
    *,
    tag: str,
    parameters: list[Schema] | None = None,
    body: Schema | None = None,
    public: bool = False,
) -> Schema:
    operation: Schema = {"summary": summary, "tags": [tag], "responses": dict(responses)}
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = body
    if public:
        operation["security"] = []
    else:
        auth_errors = {"401": _problem("Unauthorized"), "403": _problem("Forbidden")}
        if tag == "seed":
            auth_errors = {
                "401": _seed_failure("no valid bearer token"),
                "403": _seed_failure("the token lacks the scope"),
            }
        operation["responses"].update(auth_errors)
    return operation


def _seed_paths() -> dict[str, Schema]:
    seed_event = _json(_ref("SeedEvent"), "the event")
    return {
        "/ping": {
            "get": _operation(
                "Liveness of the seed service",
                {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["result", "message"],
                            "properties": {
                                "result": {"const": "success"},
                                "message": {"const": "pong"},
                            },
                        },
                        "pong",
                    )
                },
                tag="seed",
                public=True,
            )
        },
        "/get_log/customer/{user_id}": {
            "get": _operation(
                "Events whose actor id is user_id, newest first",
                {
                    "200": _json(_ref("SeedEventList"), "the actor's events"),
                    "400": _seed_failure("invalid user_id"),
                },
                tag="seed",
                parameters=_params("userId"),
            )
        },
        "/get_log/event/{event_uuid}": {
            "get": _operation(
                "One event",
                {"200": seed_event, "404": _seed_failure("does not exist")},
                tag="seed",
                parameters=_params("eventUuid"),
            )
        },
        "/create_log/{user_id}": {
            "post": _operation(
                "Record an event for actor user_id",
                {
                    "200": seed_event,
                    "400": _seed_failure("invalid body"),
                    "413": _seed_failure("body over 10 MiB"),
                    "503": _seed_failure("the store is unavailable"),
                },
                tag="seed",
                parameters=_params("userId"),
                body={"required": True, "content": {JSON: {"schema": _ref("SeedCreate")}}},
            )
        },
        "/update_log/{event_uuid}": {
            "put": _operation(
                "Amend an event: append a correction (metadata.amends); the original stays",
                {
                    "200": _json(_ref("SeedEvent"), "the correction event"),
                    "400": _seed_failure("invalid body"),
                    "404": _seed_failure("does not exist"),
                    "413": _seed_failure("body over 10 MiB"),
                    "503": _seed_failure("the store is unavailable"),
                },
                tag="seed",
                parameters=_params("eventUuid"),
                body={"required": True, "content": {JSON: {"schema": _ref("SeedUpdate")}}},
            )
        },
        "/delete_log/{event_uuid}": {
            "delete": _operation(
                "Redact an event (erase before, after, metadata) and record the redaction",
                {
                    "200": _json(_ref("SeedEvent"), "the redacted event"),
                    "404": _seed_failure("does not exist"),
                },
                tag="seed",
                parameters=_params("eventUuid"),
            )
        },
    }


def _event_paths() -> dict[str, Schema]:
    one_event = _json(_ref("Event"), "the event")
    posted = {
        "description": "stored (201), or every event's id was already stored (200)",
        "content": {JSON: {"schema": {"oneOf": [_ref("Event"), _ref("EventList")]}}},
    }
    return {
        "/v1/events": {
            "get": _operation(
                "Query events (keyset pagination)",
                {"200": _json(_ref("EventPage"), "a page"), "400": _problem("BadRequest")},
                tag="events",
                parameters=[*FILTERS, *_params("order", "limit", "cursor")],
            ),
            "post": _operation(
                "Post one event, a batch (all or nothing), NDJSON or CloudEvents",
                {
                    "200": posted,
                    "201": posted,
                    "400": _problem("BadRequest"),
                    "413": _problem("TooLarge"),
                    "415": _problem("Unsupported"),
                    "422": _problem("Unprocessable"),
                    "503": _problem("Unavailable"),
                },
                tag="events",
                body={
                    "required": True,
                    "content": {
                        JSON: {"schema": {"oneOf": [_ref("EventInput"), _ref("EventBatchInput")]}},
                        NDJSON: {"schema": {"type": "string", "description": "one event a line"}},
                        "application/cloudevents+json": {"schema": _ref("CloudEvent")},
                        "application/cloudevents-batch+json": {
                            "schema": {"type": "array", "minItems": 1, "items": _ref("CloudEvent")}
                        },
                    },
                },
            ),
        },
        "/v1/events/{event_id}": {
            "get": _operation(
                "One event",
                {"200": one_event, "404": _problem("NotFound")},
                tag="events",
                parameters=_params("eventId"),
            )
        },
        "/v1/events/{event_id}/proof": {
            "get": _operation(
                "Inclusion proof of the event in a signed checkpoint",
                {
                    "200": _json(_ref("InclusionProof"), "the proof"),
                    "400": _problem("BadRequest"),
                    "404": _problem("NotFound"),
                },
                tag="integrity",
                parameters=_params("eventId"),
            )
        },
        "/v1/events/{event_id}/redact": {
            "post": _operation(
                "Redact an event with a reason (admin); like DELETE /delete_log/…",
                {
                    "200": _json(_ref("Redaction"), "the redacted event and the redaction"),
                    "400": _problem("BadRequest"),
                    "404": _problem("NotFound"),
                    "409": _problem("Conflict"),
                    "413": _problem("TooLarge"),
                    "422": _problem("Unprocessable"),
                },
                tag="integrity",
                parameters=_params("eventId"),
                body={
                    "required": True,
                    "content": {
                        JSON: {
                            "schema": {
                                "type": "object",
                                "required": ["reason"],
                                "additionalProperties": False,
                                "properties": {
                                    "reason": {"type": "string", "minLength": 1, "maxLength": 1000}
                                },
                            }
                        }
                    },
                },
            )
        },
        "/v1/entities/{entity}/{entity_id}/history": {
            "get": _operation(
                "Every event of one record, oldest first, and its state as of as_of",
                {
                    "200": _json(_ref("History"), "the record's history"),
                    "400": _problem("BadRequest"),
                    "404": _problem("NotFound"),
                },
                tag="events",
                parameters=[
                    {"name": "entity", "in": "path", "required": True, "schema": TEXT},
                    {"name": "entity_id", "in": "path", "required": True, "schema": TEXT},
                    {
                        "name": "as_of",
                        "in": "query",
                        "required": False,
                        "schema": TIME_OR_DATE,
                        "description": "default now",
                    },
                ],
            )
        },
        "/v1/export": {
            "get": _operation(
                "Every matching event, streamed as NDJSON or CSV (oldest first by default)",
                {
                    "200": {
                        "description": "the events",
                        "content": {
                            NDJSON: {"schema": {"type": "string"}},
                            "text/csv": {"schema": {"type": "string"}},
                        },
                    },
                    "400": _problem("BadRequest"),
                },
                tag="events",
                parameters=[
                    *FILTERS,
                    *_params("order"),
                    {
                        "name": "format",
                        "in": "query",
                        "required": False,
                        "schema": {
                            "type": "string",
                            "enum": ["ndjson", "csv"],
                            "default": "ndjson",
                        },
                    },
                ],
            )
        },
        "/v1/tail": {
            "get": _operation(
                "Server-sent events: new events as they are stored, with the query filters",
                {
                    "200": {
                        "description": (
                            "an endless event stream: `id: <event id>` and `data: <Event JSON>`"
                            " per event, `event: dropped` when the client fell 10,000 events"
                            " behind, a comment every 15 s"
                        ),
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    "400": _problem("BadRequest"),
                },
                tag="events",
                parameters=[
                    *FILTERS,
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "format": "uuid"},
                        "description": "resume after this event: replay, then live",
                    },
                ],
            )
        },
    }


def _integrity_paths() -> dict[str, Schema]:
    return {
        "/v1/streams": {
            "get": _operation(
                "Each stream's head seq and hash; for capture sources, backlog and last capture",
                {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["streams"],
                            "properties": {"streams": {"type": "array", "items": _ref("Stream")}},
                        },
                        "the streams",
                    )
                },
                tag="integrity",
            )
        },
        "/v1/verify": {
            "get": _operation(
                "Integrity check of a stream (admin)",
                {
                    "200": _json(_ref("Verification"), "the result"),
                    "400": _problem("BadRequest"),
                    "404": _problem("NotFound"),
                },
                tag="integrity",
                parameters=_params("requiredStream"),
            )
        },
        "/v1/checkpoints/latest": {
            "get": _operation(
                "The newest signed checkpoint of a stream",
                {
                    "200": _json(_ref("Checkpoint"), "the checkpoint"),
                    "400": _problem("BadRequest"),
                    "404": _problem("NotFound"),
                },
                tag="integrity",
                parameters=_params("requiredStream"),
            )
        },
        "/v1/checkpoints/public-key": {
            "get": _operation(
                "The Ed25519 public key that verifies checkpoints",
                {"200": _json(_ref("PublicKey"), "the key"), "400": _problem("BadRequest")},
                tag="integrity",
            )
        },
        "/v1/checkpoints/consistency": {
            "get": _operation(
                "Consistency proof of a stream between two sizes",
                {
                    "200": _json(_ref("ConsistencyProof"), "the proof"),
                    "400": _problem("BadRequest"),
                    "404": _problem("NotFound"),
                },
                tag="integrity",
                parameters=[
                    *_params("requiredStream"),
                    *(
                        {
                            "name": name,
                            "in": "query",
                            "required": True,
                            "schema": {"type": "integer", "minimum": 0},
                        }
                        for name in ("first", "second")
                    ),
                ],
            )
        },
    }


def _ops_paths() -> dict[str, Schema]:
    text = {"schema": {"type": "string"}}
    return {
        "/healthz": {
            "get": _operation(
                "Liveness",
                {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["status"],
                            "properties": {"status": {"const": "ok"}},
                        },
                        "alive",
                    )
                },
                tag="operations",
                public=True,
            )
        },
        "/readyz": {
            "get": _operation(
                "Readiness: the store answers and, where configured, capture runs",
                {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["status", "checks"],
                            "properties": {
                                "status": {"const": "ready"},
                                "checks": {
                                    "type": "object",
                                    "additionalProperties": {"const": "ok"},
                                },
                            },
                        },
                        "ready",
                    ),
                    "503": _problem("NotReady"),
                },
                tag="operations",
                public=True,
            )
        },
        "/metrics": {
            "get": _operation(
                "Prometheus metrics (text exposition format)",
                {"200": {"description": "the metrics", "content": {"text/plain": text}}},
                tag="operations",
            )
        },
        "/openapi.json": {
            "get": _operation(
                "This document",
                {"200": _json({"type": "object"}, "the OpenAPI 3.1 document")},
                tag="operations",
            )
        },
    }


@functools.cache
def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document (one per process; treat it as read-only)."""
    paths = {**_seed_paths(), **_event_paths(), **_integrity_paths(), **_ops_paths()}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Auditor",
            "version": "1",
            "description": (
                "The audit trail of a billing service: captured and posted audit events,"
                " stored tamper-evidently. Errors on /v1 and the operational routes are"
                " application/problem+json (RFC 9457); the seed routes keep"
                ' {"result": "failed", "reason"}.'
            ),
        },
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}],
        "tags": [
            {"name": "seed", "description": "the seed service's routes, kept exactly"},
            {"name": "events"},
            {"name": "integrity"},
            {"name": "operations"},
        ],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "responses": RESPONSES,
            "parameters": PARAMETERS,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "scope read for GET, write for posting, admin for PUT,"
                    " DELETE, redaction and verification; none configured: no auth"
                    " (loopback only)",
                }
            },
        },
    }


@routes.get("/openapi.json")
async def openapi_json(_request: web.Request) -> web.Response:
    return web.Response(body=_document_bytes(), content_type="application/json")


@functools.cache
def _document_bytes() -> bytes:
    return dumps(document())
