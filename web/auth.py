"""Bearer-token auth: which scope each route needs, and the middleware that checks it.

Every route's scope is in `ROUTE_SCOPES`, one table, so a reader sees the whole
policy at once (a test walks every registered route against it). A route that
is missing from the table falls back to `read` for GET/HEAD and `admin` for
anything else: forgetting a route can only make it stricter.

Tokens are compared in constant time: the presented token's SHA-256 against
every configured token's SHA-256 with `hmac.compare_digest`, all of them every
time, so neither timing nor the order of the tokens tells which one matched or
how much of one did. Tokens are never logged. With no tokens configured the
middleware lets everything through; `run_daemon.py` then refuses to listen on
anything but a loopback address.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from config import AuthConfig, Scope
from web.problems import SEED_PREFIXES, Problem, problem_response, seed_failure

PUBLIC = None
"""The scope of a route that needs no token."""

# (method, path as registered; parameter names do not matter) -> scope.
# HEAD follows GET. Keep this in step with the routes: tests/test_auth.py fails
# for a route that is registered but not listed here.
ROUTE_SCOPES: Mapping[tuple[str, str], Scope | None] = {
    ("GET", "/ping"): PUBLIC,
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/metrics"): "read",
    ("GET", "/openapi.json"): "read",
    # seed routes
    ("GET", "/get_log/customer/{user_id}"): "read",
    ("GET", "/get_log/event/{event_uuid}"): "read",
    ("POST", "/create_log/{user_id}"): "write",
    ("PUT", "/update_log/{event_uuid}"): "admin",
    ("DELETE", "/delete_log/{event_uuid}"): "admin",
    # /v1
    ("GET", "/v1/events"): "read",
    ("POST", "/v1/events"): "write",
    ("GET", "/v1/events/{id}"): "read",
    ("POST", "/v1/events/{id}/redact"): "admin",
    ("GET", "/v1/events/{id}/proof"): "read",
    ("GET", "/v1/entities/{entity}/{entity_id}/history"): "read",
    ("GET", "/v1/streams"): "read",
    ("GET", "/v1/export"): "read",
    ("GET", "/v1/tail"): "read",
    ("GET", "/v1/verify"): "admin",
    ("GET", "/v1/checkpoints/latest"): "read",
    ("GET", "/v1/checkpoints/public-key"): "read",
    ("GET", "/v1/checkpoints/consistency"): "read",
}

_PARAMETER = re.compile(r"\{[^}]*\}")


def route_shape(path: str) -> str:
    """A registered path with its parameter names blanked: `/v1/events/{}`."""
    return _PARAMETER.sub("{}", path)


_SCOPES = {(method, route_shape(path)): scope for (method, path), scope in ROUTE_SCOPES.items()}


def is_listed(method: str, path: str) -> bool:
    """Whether `ROUTE_SCOPES` names this route (HEAD counts as GET)."""
    return (_method(method), route_shape(path)) in _SCOPES


def required_scope(method: str, path: str | None) -> Scope | None:
    """The scope a request needs; `path` is the matched route's registered path
    (None when no route matched). None means no token is needed."""
    method = _method(method)
    if path is not None:
        key = (method, route_shape(path))
        if key in _SCOPES:
            return _SCOPES[key]
    return "read" if method == "GET" else "admin"


def _method(method: str) -> str:
    method = method.upper()
    return "GET" if method == "HEAD" else method


@dataclass(frozen=True, slots=True)
class _Token:
    digest: bytes
    scopes: frozenset[str]


class TokenTable:
    """The configured tokens, kept only as SHA-256 digests."""

    def __init__(self, auth: AuthConfig) -> None:
        self._tokens = tuple(
            _Token(_digest(entry.token.get_secret_value()), frozenset(entry.scopes))
            for entry in auth.tokens
        )

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def scopes_of(self, presented: str) -> frozenset[str] | None:
        """The scopes of the presented token, or None when it is not a configured one."""
        digest = _digest(presented)
        # No early exit: every token is compared, whichever matches.
        matches = [hmac.compare_digest(digest, token.digest) for token in self._tokens]
        found: frozenset[str] | None = None
        for token, matched in zip(self._tokens, matches, strict=True):
            if matched:
                found = token.scopes
        return found


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, else None."""
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token


def auth_middlewares(auth: AuthConfig) -> list[Middleware]:
    """The middleware for these tokens, to install inside `error_middleware`; none
    without tokens (auth off), so that requests do not pass a layer that does nothing."""
    tokens = TokenTable(auth)
    if not tokens.enabled:
        return []

    @web.middleware
    async def check_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        scope = required_scope(request.method, resource.canonical if resource else None)
        if scope is PUBLIC:
            return await handler(request)
        presented = bearer_token(request.headers.get("Authorization"))
        granted = tokens.scopes_of(presented) if presented is not None else None
        if granted is None:
            error = ', error="invalid_token"' if presented is not None else ""
            return _refuse(request, 401, "a valid bearer token is required", error)
        if scope not in granted:
            return _refuse(
                request,
                403,
                f"this token lacks the {scope!r} scope",
                f', error="insufficient_scope", scope="{scope}"',
            )
        return await handler(request)

    return [check_token]


def _refuse(request: web.Request, status: int, detail: str, error: str) -> web.Response:
    # Answered here rather than raised: the error middleware's shapes carry no
    # headers, and RFC 6750 wants WWW-Authenticate on these answers.
    if request.path.startswith(SEED_PREFIXES):
        response = seed_failure(status, detail)
    else:
        response = problem_response(Problem(status, detail))
    response.headers["WWW-Authenticate"] = f'Bearer realm="auditor"{error}'
    return response
