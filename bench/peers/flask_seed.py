"""The peer of `POST /v1/events`: the seed's `POST /create_log/<user_id>` as a
Flask + sqlite3 app, the usual way (one connection per worker, one INSERT and
one COMMIT per request), served by gunicorn's sync workers:

    AUDIT_DB=/tmp/peer.db gunicorn -w 4 -b 127.0.0.1:PORT bench.peers.flask_seed:app

The database gets the same durability as Auditor's store (WAL, synchronous=FULL),
so both answer only once the event is durably committed.
"""

from __future__ import annotations

import json
import os
import sqlite3
import uuid
from datetime import UTC, datetime
from typing import Any

from flask import Flask, g, request

app = Flask(__name__)
DATABASE = os.environ.get("AUDIT_DB", "audit_peer.db")
SCHEMA = """CREATE TABLE IF NOT EXISTS audit_log (
    id INTEGER PRIMARY KEY, event_uuid TEXT UNIQUE NOT NULL, user_id TEXT NOT NULL,
    entity TEXT NOT NULL, event_type TEXT NOT NULL, datetime TEXT NOT NULL,
    property TEXT, name TEXT, ip TEXT, before TEXT, after TEXT)"""


def db() -> sqlite3.Connection:
    if "db" not in g:
        conn = sqlite3.connect(DATABASE, timeout=30)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute(SCHEMA)
        g.db = conn
    return g.db  # type: ignore[no-any-return]


@app.teardown_appcontext
def close(_exc: Any) -> None:
    conn = g.pop("db", None)
    if conn is not None:
        conn.close()


@app.post("/create_log/<user_id>")
def create_log(user_id: str) -> Any:
    try:
        body = json.loads(request.get_data())
    except ValueError:
        return {"result": "failed", "reason": "invalid JSON"}, 400
    if not isinstance(body, dict) or "entity" not in body or "event_type" not in body:
        return {"result": "failed", "reason": "entity and event_type are required"}, 400
    event_uuid = str(uuid.uuid4())
    when = body.get("datetime") or datetime.now(UTC).isoformat()
    prop = body.get("property") or []
    conn = db()
    with conn:
        conn.execute(
            "INSERT INTO audit_log (event_uuid, user_id, entity, event_type, datetime, property,"
            " name, ip, before, after) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (event_uuid, user_id, body["entity"], body["event_type"], when, json.dumps(prop),
             body.get("name"), body.get("ip"), json.dumps(body.get("before")),
             json.dumps(body.get("after"))),
        )
    return {
        "result": "success", "entity": body["entity"], "property": prop,
        "event_uuid": event_uuid, "event_type": body["event_type"], "datetime": when,
        "customer": f"{user_id} {body.get('name') or ''} ,{body.get('ip') or ''}",
    }, 201
