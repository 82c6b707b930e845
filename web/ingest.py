"""Posted bodies of `POST /v1/events` into events, and stored events into the answer.

Pure functions of bytes, with no request object, so that they run where it is
cheapest: on the daemon's event loop, or (for small bodies, where an SQLite file
store has a store writer process) in that process, as the codec of a
`storage.writer.Submitted` (`prepare` and `answer` below). Under one-event posts
the daemon's loop is the bottleneck and parsing, validating and serializing were
a fifth of its time; a large batch is still parsed on the loop, so that it
overlaps with the commit of the one before.

Accepted: one event, `{"events": [...]}` (all or nothing), NDJSON, and
CloudEvents (structured and batch).
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence
from typing import Any, NamedTuple

from storage.events import NewEvent
from storage.store import Appended, AppendRequest
from web.errors import Problem
from web.serialize import dumps, event_json, parse_json
from web.validation import MAX_BATCH, FieldError, ValidationFailed, parse_event

JSON_TYPES = frozenset({"application/json", "text/json", ""})
NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson", "application/jsonl"})
CLOUDEVENT = "application/cloudevents+json"
CLOUDEVENTS_BATCH = "application/cloudevents-batch+json"
_CLOUDEVENTS_NAMESPACE = uuid.UUID("6f1b4b3e-7a52-4e5c-9d2a-6b0c8f1d2e3a")


class Posted(NamedTuple):
    """The answer to a post whose events are committed."""

    status: int
    body: bytes
    location: str | None
    stored: tuple[tuple[str, str, int], ...] = ()
    """(stream, event type, count) of the events this post created, where nothing
    else counts them (`answer`: the store writer process's posts)."""


class Refusal(NamedTuple):
    """A `Problem` as it crosses from the store writer process (exceptions with their
    own constructor do not pickle)."""

    status: int
    detail: str
    errors: list[FieldError]
    title: str

    @classmethod
    def of(cls, problem: Problem) -> Refusal:
        return cls(problem.status, problem.detail, problem.errors, problem.title)

    def problem(self) -> Problem:
        return Problem(self.status, self.detail, self.errors, self.title)


def answer_posted(appended: Sequence[Appended], single: bool) -> Posted:
    """201 when any event was created (200 when every one was stored before, under
    its client id); one event or `{"events": [...]}` as it was posted."""
    status = 201 if any(a.created for a in appended) else 200
    if single:
        event = appended[0].event
        return Posted(status, dumps(event_json(event)), f"/v1/events/{event.id}")
    return Posted(status, dumps({"events": [event_json(a.event) for a in appended]}), None)


# -- the store writer process's codec (`storage.writer.Submitted`) --------------


def prepare(payload: tuple[bytes, str]) -> tuple[AppendRequest | None, Any]:
    """(body, content type) -> the request to commit and whether one event was posted,
    or (None, `Refusal`)."""
    raw, content_type = payload
    try:
        events, single = parse_posted(raw, content_type)
    except Problem as problem:
        return None, Refusal.of(problem)
    return AppendRequest(events), single


def answer(single: bool, appended: list[Appended]) -> Posted:
    """The answer, and the events created for the daemon's metrics: the commit
    listeners there never see these events."""
    tally = Counter((a.event.stream, a.event.event_type.value) for a in appended if a.created)
    stored = tuple((stream, kind, count) for (stream, kind), count in tally.items())
    return answer_posted(appended, single)._replace(stored=stored)


# -- parsing -----------------------------------------------------------------------


def parse_posted(raw: bytes, content_type: str) -> tuple[list[NewEvent], bool]:
    if content_type in NDJSON_TYPES:
        return _parse_ndjson(raw), False
    if content_type == CLOUDEVENT:
        body = parse_json(raw)
        return _collect([lambda: _parse_cloudevent(body, "")]), True
    if content_type == CLOUDEVENTS_BATCH:
        body = parse_json(raw)
        if not isinstance(body, list) or not body:
            raise Problem(400, "a CloudEvents batch must be a non-empty JSON array")
        _check_batch_size(len(body))
        return _collect(
            [
                lambda i=i, item=item: _parse_cloudevent(item, f"[{i}].")
                for i, item in enumerate(body)
            ]
        ), False
    if content_type not in JSON_TYPES:
        raise Problem(415, f"unsupported content type {content_type[:100]!r}")
    body = parse_json(raw)
    if isinstance(body, dict) and "events" in body and "entity" not in body:
        items = body["events"]
        if len(body) > 1:
            raise Problem(422, "invalid batch", [FieldError("body", "only 'events' is allowed")])
        if not isinstance(items, list) or not items:
            raise Problem(422, "invalid batch", [FieldError("events", "must be a non-empty list")])
        _check_batch_size(len(items))
        return _collect(
            [
                lambda i=i, item=item: parse_event(item, prefix=f"events[{i}].")
                for i, item in enumerate(items)
            ]
        ), False
    return _collect([lambda: parse_event(body)]), True


def _parse_ndjson(raw: bytes) -> list[NewEvent]:
    lines = [line for line in raw.split(b"\n") if line.strip()]
    if not lines:
        raise Problem(400, "the NDJSON body has no events")
    _check_batch_size(len(lines))
    return _collect(
        [
            lambda n=n, line=line: parse_event(parse_json(line, f"line {n}"), prefix=f"[{n}].")
            for n, line in enumerate(lines, start=1)
        ]
    )


def _parse_cloudevent(body: Any, prefix: str) -> NewEvent:
    """A CloudEvent whose `data` is an Auditor event; its attributes fill what `data` leaves out."""
    if not isinstance(body, dict):
        raise ValidationFailed([FieldError(prefix.rstrip(".") or "body", "must be a JSON object")])
    errors = [
        FieldError(f"{prefix}{key}", "is required")
        for key in ("specversion", "id", "source", "type")
        if not isinstance(body.get(key), str) or not body.get(key)
    ]
    data = body.get("data")
    if not isinstance(data, dict):
        errors.append(FieldError(f"{prefix}data", "must be a JSON object (an Auditor event)"))
    if errors:
        raise ValidationFailed(errors)
    assert isinstance(data, dict)
    merged = dict(data)
    merged.setdefault("action", body["type"])
    if body.get("subject") is not None:
        merged.setdefault("entity_id", body["subject"])
    if body.get("time") is not None:
        merged.setdefault("occurred_at", body["time"])
    merged.setdefault("id", _cloudevent_id(body["source"], body["id"]))
    given = merged.get("metadata")
    metadata: dict[str, Any] = given if isinstance(given, dict) else {}
    merged["metadata"] = {**metadata, "cloudevents": {"source": body["source"], "id": body["id"]}}
    return parse_event(merged, prefix=f"{prefix}data.")


def _cloudevent_id(source: str, event_id: str) -> str:
    """CloudEvents are unique by (source, id): the same pair always maps to the same event id."""
    try:
        return str(uuid.UUID(event_id))
    except ValueError:
        return str(uuid.uuid5(_CLOUDEVENTS_NAMESPACE, f"{source}\n{event_id}"))


def _check_batch_size(count: int) -> None:
    if count > MAX_BATCH:
        raise Problem(413, f"a batch may hold at most {MAX_BATCH} events, this one has {count}")


def _collect(parsers: list[Any]) -> list[NewEvent]:
    """Run every parser; report every invalid event at once (all or nothing)."""
    events: list[NewEvent] = []
    errors: list[FieldError] = []
    for parse in parsers:
        try:
            events.append(parse())
        except ValidationFailed as exc:
            errors.extend(exc.errors)
        except Problem as exc:
            errors.append(FieldError("body", exc.detail))
    if errors:
        raise Problem(422, "invalid event" if len(parsers) == 1 else "invalid events", errors[:100])
    return events
