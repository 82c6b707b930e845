"""`GET /v1/streams`: every stream's head (its last `seq`, Merkle root, last append)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from storage.events import format_time
from storage.store import StreamHead
from web.event_routes import json_response
from web.keys import CAPTURE_STATUS, STORE

routes = web.RouteTableDef()


def stream_json(head: StreamHead, capture: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One stream as the API shows it: the one place that decides its fields."""
    body: dict[str, Any] = {
        "name": head.name,
        "head_seq": head.head_seq,
        "head_hash": head.head_hash,
        "updated_at": format_time(head.updated_at),
    }
    if capture is not None:
        body.update(capture_json(capture))
    return body


def capture_json(capture: Mapping[str, Any]) -> dict[str, Any]:
    last = capture.get("last_capture_at")
    return {
        "backlog": capture.get("backlog"),
        "lag_seconds": capture.get("lag_seconds", 0.0),
        "last_capture_at": format_time(last) if last is not None else None,
        "untranslatable": capture.get("untranslatable", 0),
        "capturing": bool(capture.get("running")),
    }


@routes.get("/v1/streams")
async def list_streams(request: web.Request) -> web.Response:
    heads = await asyncio.to_thread(request.app[STORE].streams)
    provider = request.app.get(CAPTURE_STATUS)
    captured = dict(provider()) if provider is not None else {}
    streams = [stream_json(head, captured.pop(head.name, None)) for head in heads]
    # Capture sources that have stored nothing yet.
    for name, capture in sorted(captured.items()):
        streams.append(
            {"name": name, "head_seq": 0, "head_hash": None, "updated_at": None}
            | capture_json(capture)
        )
    return json_response({"streams": streams})
