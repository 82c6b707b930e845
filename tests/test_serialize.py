"""`stored_event_json` (the GET /v1/events fast path) against the event model's path."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage.events import Actor, EventType, NewEvent
from storage.query import EventQuery
from storage.store import AppendRequest, AuditStore, row_to_event
from web.serialize import event_json, stored_event_json

_text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False) | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)
_events = st.builds(
    NewEvent,
    stream=st.sampled_from(["api", "billing"]),
    entity=_text.filter(bool),
    event_type=st.sampled_from(list(EventType)),
    actor=st.builds(Actor, id=_text.filter(bool), name=st.none() | _text, ip=st.none()),
    occurred_at=st.datetimes(
        min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31), timezones=st.just(UTC)
    ),
    entity_id=st.none() | _text,
    action=st.none() | _text,
    properties=st.lists(_text, max_size=3, unique=True).map(tuple),
    before=st.none() | st.dictionaries(_text, _json, max_size=3),
    after=st.none() | st.dictionaries(_text, _json, max_size=3),
    metadata=st.dictionaries(_text, _json, max_size=3),
)


def _rows_and_events(store: AuditStore) -> list[tuple[dict[str, object], dict[str, object]]]:
    rows, _ = store.query_rows(EventQuery(limit=1000))
    return [(stored_event_json(row), event_json(row_to_event(row))) for row in rows]


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(_events, min_size=1, max_size=5))
def test_stored_rows_serialise_as_their_events_do(store: AuditStore, batch: list[NewEvent]) -> None:
    store.append([AppendRequest(batch)])
    pairs = _rows_and_events(store)
    assert pairs
    for fast, modelled in pairs:
        assert fast == modelled


def test_a_redacted_row_serialises_as_its_event_does(store: AuditStore) -> None:
    [[appended]] = store.append(
        [
            AppendRequest(
                [
                    NewEvent(
                        stream="api",
                        entity="customer",
                        event_type=EventType.UPDATE,
                        actor=Actor("u1"),
                        occurred_at=datetime(2026, 11, 28, 12, 0, 0, 123000, tzinfo=UTC),
                        before={"email": "a@example.com"},
                        after={"email": "b@example.com"},
                        metadata={"ticket": 7},
                    )
                ]
            )
        ]
    )
    redaction = NewEvent(
        stream="api",
        entity="audit_event",
        entity_id=appended.event.id,
        event_type=EventType.DELETE,
        actor=Actor("admin"),
        occurred_at=datetime(2026, 11, 28, 12, 0, 1, tzinfo=UTC),
        action="audit_event.redacted",
    )
    assert store.redact(appended.event.id, redaction) is not None
    pairs = _rows_and_events(store)
    redacted = [fast for fast, _ in pairs if fast.get("redacted")]
    assert [r["id"] for r in redacted] == [appended.event.id]
    assert redacted[0]["before"] is None and redacted[0]["metadata"] == {}
    for fast, modelled in pairs:
        assert fast == modelled
