"""The read side of the capture-latency ceiling: a bare aiohttp app on one event loop
answering `GET /v1/events` from a raw store (`bench.raw`) with plain sqlite3.

    python -m bench.peers.raw_events_api STORE_DB PORT

Beside `bench.raw_capture` (plain sqlite3 polling the shadow table every
millisecond and committing what it reads with the store's fsync) it is the least
a capture pipeline can do between a billing commit and the event being visible
over HTTP on this machine: no translation, hashing or SQLAlchemy, and capture
and API in processes of their own, so neither waits for the other's GIL.
It answers the newest `limit` events of `stream` (every captured row is a
charge, so it needs no entity filter), each with its columns and the entity id
as Auditor gives it (the shadow row's key without its JSON brackets).
"""

from __future__ import annotations

import sqlite3
import sys

import orjson
from aiohttp import web

from storage.store import EVENT_COLUMNS

_SELECT = f"SELECT {', '.join(EVENT_COLUMNS)} FROM events WHERE stream = ? ORDER BY pk DESC LIMIT ?"
_ENTITY_ID = EVENT_COLUMNS.index("entity_id")


def app(store: str) -> web.Application:
    conn = sqlite3.connect(store, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 5000")

    async def events(request: web.Request) -> web.Response:
        stream = request.query.get("stream", "billing")
        limit = int(request.query.get("limit", "50"))
        rows = conn.execute(_SELECT, (stream, limit)).fetchall()
        out = []
        for row in rows:
            event = dict(zip(EVENT_COLUMNS, row, strict=True))
            key = row[_ENTITY_ID]
            if isinstance(key, str) and key.startswith("[") and key.endswith("]"):
                event["entity_id"] = key[1:-1]
            out.append(event)
        return web.Response(body=orjson.dumps({"events": out}), content_type="application/json")

    async def ping(request: web.Request) -> web.Response:
        return web.json_response({"result": "success", "message": "pong"})

    async def close(_: web.Application) -> None:
        conn.close()

    application = web.Application()
    application.router.add_get("/v1/events", events)
    application.router.add_get("/ping", ping)
    application.on_cleanup.append(close)
    return application


def main() -> None:
    store, port = sys.argv[1], int(sys.argv[2])
    web.run_app(app(store), host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main()
