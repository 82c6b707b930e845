"""Export formats shared by `GET /v1/export` and `run_daemon.py export`.

NDJSON is one event per line, exactly as `GET /v1/events` shows it. CSV has a
header row and one row per event, columns in the event's field order (and
`redacted` last); `properties`, `before`, `after`, `actor` and `metadata` are
JSON text, and a null is an empty cell. Cells are written as stored, never
altered: an audit export must say exactly what was recorded (whoever opens it
in a spreadsheet should import it as text).

`export_chunks` reads the store a page at a time and yields one encoded chunk
per page, so memory stays flat whatever the export's size. This module does
not import aiohttp: the command line uses it without a server.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Generator, Iterable
from dataclasses import replace
from typing import Any, Literal

import orjson

from storage.events import AuditEvent
from storage.query import EventQuery
from storage.store import AuditStore
from web.serialize import EVENT_FIELDS, event_json

ExportFormat = Literal["ndjson", "csv"]
FORMATS: tuple[ExportFormat, ...] = ("ndjson", "csv")
CONTENT_TYPES: dict[ExportFormat, str] = {
    "ndjson": "application/x-ndjson",
    "csv": "text/csv; charset=utf-8",
}
PAGE_SIZE = 1000
CSV_COLUMNS = (*EVENT_FIELDS, "redacted")
_JSON_COLUMNS = frozenset({"properties", "before", "after", "actor", "metadata"})


def encode_events(events: Iterable[AuditEvent], fmt: ExportFormat) -> bytes:
    """The events in `fmt`, without the CSV header."""
    if fmt == "ndjson":
        newline = orjson.OPT_APPEND_NEWLINE
        return b"".join(orjson.dumps(event_json(e), option=newline) for e in events)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerows(csv_row(e) for e in events)
    return buffer.getvalue().encode("utf-8")


def csv_header() -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer).writerow(CSV_COLUMNS)
    return buffer.getvalue().encode("utf-8")


def csv_row(event: AuditEvent) -> list[str]:
    body = event_json(event)
    body["redacted"] = event.redacted
    return [_cell(column, body[column]) for column in CSV_COLUMNS]


def _cell(column: str, value: Any) -> str:
    if value is None:
        return ""
    if column in _JSON_COLUMNS:
        return orjson.dumps(value).decode("utf-8")
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def export_chunks(
    store: AuditStore, query: EventQuery, fmt: ExportFormat, page_size: int = PAGE_SIZE
) -> Generator[bytes, None, None]:
    """The whole export as chunks: the CSV header, then one chunk per store page.

    Each `next()` reads and encodes one page and holds no database connection
    in between, so callers may resume it from any thread."""
    if fmt == "csv":
        yield csv_header()
    position = query.after_pk
    while True:
        page = store.query(replace(query, limit=page_size, after_pk=position))
        if page.events:
            yield encode_events(page.events, fmt)
        if page.last_pk is None:
            return
        position = page.last_pk
