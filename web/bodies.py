"""Reading request bodies safely: size-limited, UTF-8 JSON, never read whole when too big."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from web.errors import Problem
from web.serialize import parse_json

MAX_BODY = 10 * 1024 * 1024


async def read_body(request: web.Request) -> bytes:
    """The raw body; 413 as soon as it is known to exceed 10 MiB (the header, or
    aiohttp's `client_max_size` while streaming), without buffering all of it."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise Problem(413, "request body is larger than 10 MiB")
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise Problem(413, "request body is larger than 10 MiB") from exc


async def read_json(request: web.Request) -> Any:
    """A JSON body whatever the Content-Type says (the seed's curl lines send form encoding)."""
    return parse_json(await read_body(request))
