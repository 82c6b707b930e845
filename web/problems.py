"""One error shape per family of routes, enforced by one middleware.

`/v1` and the operational routes answer RFC 9457 `application/problem+json`
(`type`, `status`, `title`, `detail`, and `errors: [{field, message}]` for bad
input); the seed routes keep the seed's `{"result": "failed", "reason": …}`.
Unexpected exceptions become a 500 without internals in the body, and are
logged with their traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from web.errors import Problem
from web.serialize import dumps

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
SEED_PREFIXES = ("/ping", "/get_log/", "/create_log/", "/update_log/", "/delete_log/")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
__all__ = [
    "PROBLEM_JSON",
    "SEED_PREFIXES",
    "Problem",
    "error_middleware",
    "problem_response",
    "seed_failure",
]


def problem_response(problem: Problem) -> web.Response:
    body: dict[str, object] = {
        "type": "about:blank",
        "status": problem.status,
        "title": problem.title,
        "detail": problem.detail,
    }
    if problem.errors:
        body["errors"] = [{"field": e.field, "message": e.message} for e in problem.errors]
    return web.Response(status=problem.status, body=dumps(body), content_type=PROBLEM_JSON)


def seed_failure(status: int, reason: str) -> web.Response:
    return web.Response(
        status=status,
        body=dumps({"result": "failed", "reason": reason}),
        content_type="application/json",
    )


def _is_seed(path: str) -> bool:
    return path.startswith(SEED_PREFIXES)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    seed = _is_seed(request.path)
    try:
        return await handler(request)
    except Problem as problem:
        if seed:
            return seed_failure(problem.status, problem.detail)
        return problem_response(problem)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        detail = _http_detail(exc)
        if seed:
            return seed_failure(exc.status, detail)
        response = problem_response(Problem(exc.status, detail))
        if exc.status == 405 and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        if seed:
            return seed_failure(500, "internal error")
        return problem_response(Problem(500, "internal error"))


def _http_detail(exc: web.HTTPException) -> str:
    if exc.status == 404:
        return "no such route"
    if exc.status == 405:
        return "method not allowed on this route"
    if exc.status == 413:
        return "request body is larger than 10 MiB"
    return exc.reason
