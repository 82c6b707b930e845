"""`GET /v1/export`: every event matching the `/v1/events` filters, streamed.

`format=ndjson` (default) or `format=csv` (see `web.export_format`). The order
is `asc` unless `order=desc` is given: an export reads like a log, oldest
first. `limit` and `cursor` are refused: an export is everything that matches.

The response is chunked and written a page (1000 events) at a time; each page
is read and encoded in a worker thread, and the next one is read only after
the client has taken the last (`write` waits while aiohttp's buffer is full),
so memory stays flat however large the export. Once the first chunk is sent
the status can no longer change: if the store fails half way, the connection
is closed without the final chunk, which every HTTP client reports as a
truncated body rather than a complete export.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import replace
from typing import Any

from aiohttp import web
from multidict import MultiDict

from storage.query import EventQuery
from web.event_routes import QUERY_PARAMS, parse_query
from web.export_format import CONTENT_TYPES, FORMATS, ExportFormat, export_chunks
from web.keys import STORE
from web.problems import Problem
from web.validation import FieldError

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

FILTER_PARAMS = QUERY_PARAMS - {"limit", "cursor"}


def parse_export_params(params: Any) -> tuple[EventQuery, ExportFormat]:
    """The query and format of an export; `Problem(400)` naming every bad parameter.
    `params` is a multidict (the request's query, or one the command line builds)."""
    errors: list[FieldError] = []
    for key in ("limit", "cursor"):
        if key in params:
            errors.append(FieldError(key, "not accepted by an export: it returns every match"))
    formats = params.getall("format", [])
    fmt: ExportFormat = "ndjson"
    if len(formats) > 1:
        errors.append(FieldError("format", "may be given only once"))
    elif formats and formats[0] not in FORMATS:
        errors.append(FieldError("format", "must be ndjson or csv"))
    elif formats:
        fmt = "csv" if formats[0] == "csv" else "ndjson"
    filters: MultiDict[str] = MultiDict(
        (key, value) for key, value in params.items() if key not in ("limit", "cursor", "format")
    )
    try:
        query = parse_query(filters, allowed=FILTER_PARAMS)
    except Problem as problem:
        errors.extend(problem.errors)
    if errors:
        raise Problem(400, "invalid query parameters", errors)
    if "order" not in params:
        query = replace(query, order="asc")
    return query, fmt


@routes.get("/v1/export")
async def export_events(request: web.Request) -> web.StreamResponse:
    query, fmt = parse_export_params(request.query)
    response = web.StreamResponse(
        headers={
            "Content-Type": CONTENT_TYPES[fmt],
            "Content-Disposition": f'attachment; filename="auditor-export.{fmt}"',
        }
    )
    response.enable_chunked_encoding()
    if request.method == "HEAD":
        # aiohttp sends whatever a StreamResponse writes, even to HEAD: write nothing.
        return response
    chunks = export_chunks(request.app[STORE], query, fmt)
    try:
        first = await asyncio.to_thread(next, chunks, None)
        # Read before the headers go out, so a store that fails at once still
        # gets the error middleware's answer instead of a truncated body.
        await response.prepare(request)
        chunk = first
        while chunk is not None:
            await response.write(chunk)
            chunk = await asyncio.to_thread(next, chunks, None)
    except ConnectionError:
        return response  # the client went away
    except Exception:
        if not response.prepared:
            raise
        log.exception("export failed part way; closing the connection")
        if request.transport is not None:
            request.transport.close()
        return response
    finally:
        # Cancelled while a worker thread is still inside the generator: it ends there.
        with contextlib.suppress(ValueError):
            chunks.close()
    await response.write_eof()
    return response
