"""Property-based tests of event validation and of the query cursor."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.events import EventType
from storage.query import CursorError, EventQuery, decode_cursor, encode_cursor
from web.validation import MAX_NAME, ValidationFailed, parse_event

names = st.text(min_size=1, max_size=MAX_NAME).filter(lambda s: s.strip() and "\x00" not in s)
json_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
valid_events = st.fixed_dictionaries(
    {
        "entity": names,
        "event_type": st.sampled_from(["CREATE", "READ", "UPDATE", "DELETE", "create", "Read"]),
    },
    optional={
        "entity_id": names | st.integers(0, 10**12),
        "action": names,
        "actor": names | st.fixed_dictionaries({"id": names}, optional={"name": names}),
        "occurred_at": st.datetimes(timezones=st.just(__import__("datetime").UTC)).map(
            lambda d: d.isoformat()
        ),
        "properties": st.lists(names, max_size=5),
        "before": st.dictionaries(st.text(), json_values, max_size=5),
        "after": st.dictionaries(st.text(), json_values, max_size=5),
        "metadata": st.dictionaries(st.text(), json_values, max_size=5),
    },
)


def has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(has_nul(k) or has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(has_nul(v) for v in value)
    return False


@given(valid_events)
@settings(max_examples=300)
def test_valid_events_parse_and_keep_their_content(body: dict[str, Any]) -> None:
    if has_nul(body):
        with pytest.raises(ValidationFailed):
            parse_event(body)
        return
    event = parse_event(orjson.loads(orjson.dumps(body)))
    assert event.entity == body["entity"]
    assert event.event_type == EventType(body["event_type"].upper())
    assert event.after == body.get("after")
    assert event.metadata == body.get("metadata", {})
    assert event.stream == "api"


@given(st.dictionaries(st.text(max_size=20), json_values, max_size=8) | json_values)
@settings(max_examples=500)
def test_arbitrary_json_either_parses_or_names_fields(body: Any) -> None:
    try:
        parse_event(body)
    except ValidationFailed as exc:
        assert exc.errors
        assert all(e.field and e.message for e in exc.errors)


queries = st.builds(
    EventQuery,
    actor=st.none() | names,
    entity=st.none() | names,
    event_types=st.lists(st.sampled_from(["CREATE", "READ"]), max_size=2).map(tuple),
    order=st.sampled_from(["asc", "desc"]),
    since_ms=st.none() | st.integers(0, 2**45),
)


@given(queries, st.integers(0, 2**62))
def test_cursor_round_trips(query: EventQuery, pk: int) -> None:
    assert decode_cursor(query, encode_cursor(query, pk)) == pk


@given(queries, queries, st.integers(0, 2**62))
def test_cursor_refuses_other_filters(first: EventQuery, second: EventQuery, pk: int) -> None:
    cursor = encode_cursor(first, pk)
    if first.filters_digest() == second.filters_digest():
        assert decode_cursor(second, cursor) == pk
    else:
        with pytest.raises(CursorError):
            decode_cursor(second, cursor)


@given(queries, st.text(max_size=300))
@settings(max_examples=500)
def test_garbage_cursor_is_a_cursor_error(query: EventQuery, garbage: str) -> None:
    try:
        decode_cursor(query, garbage)
    except CursorError:
        return
    raise AssertionError(f"garbage accepted: {garbage!r}")
