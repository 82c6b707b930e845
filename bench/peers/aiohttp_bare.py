"""The physical limit of one-event POSTs here: a bare aiohttp app on one event loop
that parses the JSON body and answers 201, storing nothing.

    python -m bench.peers.aiohttp_bare PORT
"""

from __future__ import annotations

import sys
import uuid

import orjson
from aiohttp import web


async def post(request: web.Request) -> web.Response:
    body = orjson.loads(await request.read())
    body["id"] = str(uuid.uuid4())
    return web.Response(status=201, body=orjson.dumps(body), content_type="application/json")


async def ping(request: web.Request) -> web.Response:
    return web.json_response({"result": "success", "message": "pong"})


def main() -> None:
    app = web.Application()
    app.router.add_post("/v1/events", post)
    app.router.add_get("/ping", ping)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)


if __name__ == "__main__":
    main()
