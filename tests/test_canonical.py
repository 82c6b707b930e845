"""The canonical encoding, byte for byte as the README documents it.

These pin what a re-implementation (or an orjson upgrade) could get wrong:
key order, string escapes, the float format, the time format.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from storage import merkle, proof_verifier
from storage.canonical import (
    canonical_event,
    canonical_fields,
    canonical_json,
    payload_digest,
    payload_document,
)
from storage.events import Actor, EventType, NewEvent, format_ms, format_time, from_ms

README_EVENT = NewEvent(
    id="0193c1c4-5a1e-7c3b-9f4e-2b8d1c0a9e77",
    stream="billing",
    entity="customer",
    entity_id="73",
    event_type=EventType.UPDATE,
    action="customer.updated",
    properties=("name",),
    before={"id": 73, "name": "SUBIN"},
    after={"id": 73, "name": "SUBIN JEONG"},
    actor=Actor("073", "SUBIN JEONG", "125.22.33.22"),
    occurred_at=datetime(2026, 11, 28, 12, 0, 0, 123000, tzinfo=UTC),
    metadata={},
)


def test_the_readme_example_byte_for_byte() -> None:
    document = payload_document(README_EVENT.before, README_EVENT.after, README_EVENT.metadata)
    assert document == (
        b'{"after":{"id":73,"name":"SUBIN JEONG"},"before":{"id":73,"name":"SUBIN"},"metadata":{}}'
    )
    digest = payload_digest(document)
    assert digest == "0aaa4a81ed819ed5b6f89bfd0d09d59d060ab7503dd77c5cab53c152dd87736a"
    canonical = canonical_event(README_EVENT, 42, digest)
    assert canonical == (
        b'{"action":"customer.updated","actor":{"id":"073","ip":"125.22.33.22",'
        b'"name":"SUBIN JEONG"},"entity":"customer","entity_id":"73","event_type":"UPDATE",'
        b'"id":"0193c1c4-5a1e-7c3b-9f4e-2b8d1c0a9e77","occurred_at":"2026-11-28T12:00:00.123Z",'
        b'"payload_digest":"' + digest.encode() + b'","properties":["name"],"seq":42,'
        b'"stream":"billing"}'
    )
    leaf = "ef3b1c5bfa1e47ec7c2d254b138ce5192719644a66da197eeb75e957f972c99b"
    assert merkle.leaf_hash(canonical).hex() == proof_verifier.leaf_hash(canonical).hex() == leaf


def test_times_before_year_1000_keep_four_digits() -> None:
    # strftime's %Y wrote "999" here, which is not RFC 3339 and not what the README says.
    assert format_time(datetime(999, 1, 2, 3, 4, 5, 6000, tzinfo=UTC)) == "0999-01-02T03:04:05.006Z"
    assert format_time(datetime(1, 1, 1, tzinfo=UTC)) == "0001-01-01T00:00:00.000Z"


@given(st.integers(min_value=-62135596800000, max_value=253402300799999))
def test_verify_formats_times_as_the_store_does(ms: int) -> None:
    assert format_ms(ms) == format_time(from_ms(ms))


@given(
    st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.sampled_from(
            [UTC, timezone(timedelta(hours=-11)), timezone(timedelta(hours=5, minutes=30))]
        ),
    )
)
def test_times_are_rfc_3339_utc_to_the_millisecond(value: datetime) -> None:
    expected = value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert format_time(value) == expected


def documented_float(value: float) -> str:
    """The README's float rule, written independently of orjson."""
    if math.isnan(value) or math.isinf(value):
        return "null"
    if value == 0:
        return "-0.0" if math.copysign(1, value) < 0 else "0.0"
    sign, digits, exponent = Decimal(repr(value)).as_tuple()
    assert isinstance(exponent, int)
    text = "".join(map(str, digits)).rstrip("0")
    exponent += len(digits) - len(text)
    point = len(text) - 1 + exponent  # the power of ten of the first digit
    prefix = "-" if sign else ""
    if -5 <= point < 16:
        if exponent >= 0:
            return f"{prefix}{text}{'0' * exponent}.0"
        if point < 0:
            return f"{prefix}0.{'0' * (-point - 1)}{text}"
        return f"{prefix}{text[: point + 1]}.{text[point + 1 :]}"
    mantissa = text[0] + (f".{text[1:]}" if len(text) > 1 else "")
    return f"{prefix}{mantissa}e{'+' if point > 0 else '-'}{abs(point)}"


@given(st.floats())
def test_floats_follow_the_documented_rule(value: float) -> None:
    assert canonical_json(value).decode() == documented_float(value)


def test_float_format_examples() -> None:
    examples = {
        100.0: "100.0",
        0.1: "0.1",
        1e-05: "0.00001",
        9.9e-06: "9.9e-6",
        1.5e-07: "1.5e-7",
        9999999999999998.0: "9999999999999998.0",
        1e16: "1e+16",
        -1.5e300: "-1.5e+300",
        -0.0: "-0.0",
        float("nan"): "null",
    }
    for value, text in examples.items():
        assert canonical_json(value).decode() == text == documented_float(value)


def documented_string(value: str) -> str:
    short = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f"}
    short["\r"] = "\\r"
    out = []
    for char in value:
        if char in short:
            out.append(short[char])
        elif ord(char) < 0x20:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


@given(st.text())
def test_strings_escape_only_quote_backslash_and_controls(value: str) -> None:
    assert canonical_json(value) == documented_string(value).encode()


@given(st.dictionaries(st.text(), st.booleans(), max_size=8))
def test_keys_are_sorted_by_code_point(value: dict[str, bool]) -> None:
    assert list(orjson.loads(canonical_json(value))) == sorted(value)


texts = st.text(max_size=20)
maybe = st.none() | texts


@given(
    st.fixed_dictionaries(
        {
            "event_id": texts,
            "stream": texts,
            "seq": st.integers(min_value=1, max_value=2**63 - 1),
            "entity": texts,
            "entity_id": maybe,
            "event_type": texts,
            "action": maybe,
            "properties": st.lists(texts, max_size=3),
            "actor_id": texts,
            "actor_name": maybe,
            "actor_ip": maybe,
            "occurred_at": texts,
            "payload_digest": texts,
        }
    )
)
def test_canonical_fields_is_sorted_json_and_what_the_client_verifier_computes(
    fields: dict[str, Any],
) -> None:
    encoded = canonical_fields(**fields)
    assert encoded == canonical_json(orjson.loads(encoded))
    event = {
        "id": fields["event_id"],
        "stream": fields["stream"],
        "seq": fields["seq"],
        "entity": fields["entity"],
        "entity_id": fields["entity_id"],
        "event_type": fields["event_type"],
        "action": fields["action"],
        "properties": fields["properties"],
        "actor": {"id": fields["actor_id"], "name": fields["actor_name"], "ip": fields["actor_ip"]},
        "occurred_at": fields["occurred_at"],
    }
    assert proof_verifier.canonical_event(event, fields["payload_digest"]) == encoded


def test_integers_outside_64_bits_cannot_be_encoded() -> None:
    assert canonical_json([-(2**63), 2**64 - 1]) == b"[-9223372036854775808,18446744073709551615]"
    for value in (-(2**63) - 1, 2**64):
        try:
            canonical_json(value)
        except TypeError:
            continue
        raise AssertionError(f"{value} was encoded")
