"""Integrity routes: signed checkpoints, Merkle proofs, verification, redaction with a reason.

The checkpointer is a task the app owns (`run_checkpointer`, a cleanup
context registered before the group-commit writer's, so that on shutdown it
runs after the writer has drained): it signs every `integrity.checkpoint_interval`
seconds for each stream whose head moved, and once more on the way out. A
plain loop rather than an APScheduler job: one periodic job that must also
run once at shutdown, after a given other task, is what `cleanup_ctx` orders.

An inclusion proof is always against the latest checkpoint of the event's
stream; when the event is newer than that checkpoint, the route signs a fresh
one first, so a client never has to come back later for its proof.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError

from storage.checkpoints import BadSizes, Checkpointer
from storage.events import Actor
from storage.proofs import TreeError
from storage.signing import ALGORITHM
from storage.store import StorageError
from storage.verify import snapshot as read_snapshot
from storage.verify import stream_names, verify_store
from web.bodies import read_json
from web.event_routes import canonical_uuid, json_response
from web.keys import CONFIG, STORE
from web.problems import Problem
from web.seed_routes import redaction_event
from web.serialize import event_json
from web.validation import FieldError

log = logging.getLogger(__name__)

CHECKPOINTER = web.AppKey("checkpointer", Checkpointer)
MAX_REASON = 1000
_MAX_SIZE = 2**63 - 1

routes = web.RouteTableDef()


async def run_checkpointer(app: web.Application) -> AsyncIterator[None]:
    """Sign checkpoints while the app runs, and once more after the writer has drained."""
    checkpointer = app[CHECKPOINTER]
    interval = app[CONFIG].integrity.checkpoint_interval
    task = asyncio.create_task(_sign_periodically(checkpointer, interval), name="checkpointer")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await _sign_once(checkpointer, logging.INFO)


async def _sign_periodically(checkpointer: Checkpointer, interval: float) -> None:
    while True:
        await _sign_once(checkpointer)
        await asyncio.sleep(interval)


async def _sign_once(checkpointer: Checkpointer, level: int = logging.DEBUG) -> None:
    try:
        signed = await asyncio.to_thread(checkpointer.sign_moved)
    except (SQLAlchemyError, StorageError, TreeError):
        log.exception("signing checkpoints failed; trying again at the next interval")
        return
    for checkpoint in signed:
        log.log(
            level, "signed checkpoint of stream %s at size %d", checkpoint.stream, checkpoint.size
        )


def _query(request: web.Request, allowed: frozenset[str]) -> None:
    errors = [
        FieldError(key[:50], "unknown query parameter")
        for key in request.query
        if key not in allowed
    ]
    errors += [
        FieldError(key, "may be given only once")
        for key in allowed
        if len(request.query.getall(key, [])) > 1
    ]
    if errors:
        raise Problem(400, "invalid query parameters", errors)


def _stream(request: web.Request) -> str:
    value = request.query.get("stream")
    if value is None:
        raise Problem(400, "invalid query parameters", [FieldError("stream", "is required")])
    if not 1 <= len(value) <= 64 or "\x00" in value or "\n" in value:
        raise Problem(
            400, "invalid query parameters", [FieldError("stream", "must be 1 to 64 characters")]
        )
    return value


def _size(request: web.Request, name: str, errors: list[FieldError]) -> int:
    value = request.query.get(name)
    if value is None:
        errors.append(FieldError(name, "is required"))
    elif not (value.isascii() and value.isdigit() and len(value) <= 19) or int(value) > _MAX_SIZE:
        errors.append(FieldError(name, "must be a whole number >= 0"))
    else:
        return int(value)
    return 0


@routes.get("/v1/checkpoints/latest")
async def latest_checkpoint(request: web.Request) -> web.Response:
    _query(request, frozenset({"stream"}))
    stream = _stream(request)
    checkpoint = await asyncio.to_thread(request.app[CHECKPOINTER].latest, stream)
    if checkpoint is None:
        raise Problem(404, f"stream {stream!r} has no signed checkpoint yet")
    return json_response(checkpoint.to_json())


@routes.get("/v1/checkpoints/public-key")
async def public_key(request: web.Request) -> web.Response:
    _query(request, frozenset())
    key = request.app[CHECKPOINTER].public_key
    return json_response(
        {"key_id": key.key_id, "algorithm": ALGORITHM, "public_key": key.raw.hex(), "pem": key.pem}
    )


@routes.get("/v1/events/{event_id}/proof")
async def inclusion_proof(request: web.Request) -> web.Response:
    _query(request, frozenset())
    event_id = canonical_uuid(request.match_info["event_id"])
    if event_id is None:
        raise Problem(404, "no event with this id")
    try:
        proof = await asyncio.to_thread(request.app[CHECKPOINTER].inclusion_proof, event_id)
    except TreeError as exc:
        log.error("cannot build an inclusion proof: %s", exc)
        raise Problem(500, "the stored Merkle tree is damaged; run `run_daemon.py verify`") from exc
    if proof is None:
        raise Problem(404, "no event with this id")
    return json_response(proof.to_json())


@routes.get("/v1/checkpoints/consistency")
async def consistency_proof(request: web.Request) -> web.Response:
    _query(request, frozenset({"stream", "first", "second"}))
    stream = _stream(request)
    errors: list[FieldError] = []
    first, second = _size(request, "first", errors), _size(request, "second", errors)
    if errors:
        raise Problem(400, "invalid query parameters", errors)
    try:
        found = await asyncio.to_thread(
            request.app[CHECKPOINTER].consistency_proof, stream, first, second
        )
    except BadSizes as exc:
        raise Problem(400, "invalid sizes", [FieldError(exc.field, exc.message)]) from exc
    except TreeError as exc:
        log.error("cannot build a consistency proof: %s", exc)
        raise Problem(500, "the stored Merkle tree is damaged; run `run_daemon.py verify`") from exc
    if found is None:
        raise Problem(404, f"no stream named {stream!r}")
    first_root, second_root, path = found
    return json_response(
        {
            "stream": stream,
            "first": first,
            "second": second,
            "first_root": first_root.hex(),
            "second_root": second_root.hex(),
            "proof": [value.hex() for value in path],
        }
    )


@routes.get("/v1/verify")
async def verify(request: web.Request) -> web.Response:
    _query(request, frozenset({"stream"}))
    stream = _stream(request)
    result = await asyncio.to_thread(_verify_stream, request.app, stream)
    if result is None:
        raise Problem(404, f"no stream named {stream!r}")
    return json_response(result)


def _verify_stream(app: web.Application, stream: str) -> dict[str, Any] | None:
    store = app[STORE]
    with read_snapshot(store.engines.read) as conn:
        if stream not in stream_names(conn):
            return None
    key = app[CHECKPOINTER].public_key
    result = verify_store(store, {key.key_id: key}, stream=stream)[0]
    body = result.to_json()
    if result.problem is not None:
        body["reason"] = f"{result.problem.kind}: {result.problem.reason}"
    return body


@routes.post("/v1/events/{event_id}/redact")
async def redact(request: web.Request) -> web.Response:
    event_id = canonical_uuid(request.match_info["event_id"])
    body = await read_json(request)
    reason = _reason(body)
    store = request.app[STORE]
    original = await asyncio.to_thread(store.get, event_id) if event_id else None
    if original is None:
        raise Problem(404, "no event with this id")
    if original.redacted:
        raise Problem(409, "this event is already redacted")
    redaction = redaction_event(original, Actor("api"), reason=reason)
    result = await asyncio.to_thread(store.redact, original.id, redaction)
    if result is None:
        raise Problem(404, "no event with this id")
    redacted, recorded = result
    return json_response({"event": event_json(redacted), "redaction": event_json(recorded)})


def _reason(body: Any) -> str:
    if not isinstance(body, dict):
        raise Problem(422, "invalid redaction", [FieldError("body", "must be a JSON object")])
    errors = [FieldError(key[:50], "unknown field") for key in body if key != "reason"]
    reason = body.get("reason")
    if reason is None:
        errors.append(FieldError("reason", "is required"))
    elif not isinstance(reason, str):
        errors.append(FieldError("reason", "must be a string"))
    elif not 1 <= len(reason) <= MAX_REASON or not reason.strip():
        errors.append(FieldError("reason", f"must be 1 to {MAX_REASON} characters"))
    elif "\x00" in reason:
        errors.append(FieldError("reason", "must not contain NUL characters"))
    if errors:
        raise Problem(422, "invalid redaction", errors)
    assert isinstance(reason, str)
    return reason
