"""The issue's prototypes, from which its POST and GET targets were set, measured in
the same run as Auditor (issue 6: "an aiohttp handler ... with a group commit
(handlers await a shared batch commit) 8,970 requests/s"; "a naive
actor=X&limit=50 handler: 1,650 requests/s").

- `POST /v1/events`: parse the JSON body, store it as one row (WAL,
  synchronous=FULL, as Auditor commits), the handlers of one moment sharing a
  commit made in one dedicated thread; answer 201 once committed. No validation,
  no hashing, no Merkle tree, no indexes but the rowid.
- `GET /v1/events?actor=X&limit=50`: the same SQL as Auditor's page on Auditor's
  store (read only), each row made a dict and the page written by `json.dumps`.

    python -m bench.peers.aiohttp_prototype PORT POST_DB [AUDIT_DB]
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor

import orjson
from aiohttp import web


class GroupCommit:
    """Every body queued while the previous commit ran goes into the next one."""

    def __init__(self, path: str) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = FULL")
        self.conn.execute("CREATE TABLE IF NOT EXISTS events (id TEXT, body TEXT)")
        self.queue: asyncio.Queue[tuple[tuple[str, str], asyncio.Future[None]]] = asyncio.Queue()
        self.thread = ThreadPoolExecutor(max_workers=1)

    def _commit(self, rows: list[tuple[str, str]]) -> None:
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.executemany("INSERT INTO events (id, body) VALUES (?, ?)", rows)
        self.conn.execute("COMMIT")

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            while not self.queue.empty():
                batch.append(self.queue.get_nowait())
            await loop.run_in_executor(self.thread, self._commit, [row for row, _ in batch])
            for _, done in batch:
                done.set_result(None)


WRITES = web.AppKey("writes", GroupCommit)
READS = web.AppKey("reads", sqlite3.Connection)


async def post(request: web.Request) -> web.Response:
    body = orjson.loads(await request.read())
    body["id"] = str(uuid.uuid4())
    encoded = orjson.dumps(body)
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    await request.app[WRITES].queue.put(((body["id"], encoded.decode()), done))
    await done
    return web.Response(status=201, body=encoded, content_type="application/json")


async def get(request: web.Request) -> web.Response:
    cursor = request.app[READS].execute(
        "SELECT * FROM events WHERE actor_id = ? ORDER BY pk DESC LIMIT ?",
        (request.query["actor"], int(request.query.get("limit", "50"))),
    )
    names = [column[0] for column in cursor.description]
    page = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    return web.Response(body=json.dumps({"events": page}), content_type="application/json")


async def ping(request: web.Request) -> web.Response:
    return web.json_response({"result": "success", "message": "pong"})


def main() -> None:
    port, post_db = int(sys.argv[1]), sys.argv[2]
    app = web.Application()
    writes = GroupCommit(post_db)
    app[WRITES] = writes

    async def committer(app: web.Application):  # type: ignore[no-untyped-def]
        task = asyncio.create_task(writes.run())
        yield
        task.cancel()

    app.cleanup_ctx.append(committer)
    app.router.add_post("/v1/events", post)
    app.router.add_get("/ping", ping)
    if len(sys.argv) > 3:
        app[READS] = sqlite3.connect(f"file:{sys.argv[3]}?mode=ro", uri=True)
        app.router.add_get("/v1/events", get)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main()
