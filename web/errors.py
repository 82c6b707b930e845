"""`Problem`, the error a handler raises to answer 4xx or 5xx with a reason.

Apart from `web.problems`, which turns it into a response, so that code that
runs outside the server (the store writer process's `web.ingest`) can raise it
without importing aiohttp (12 MB of that process's memory).
"""

from __future__ import annotations

from collections.abc import Sequence
from http import HTTPStatus

from web.validation import FieldError


class Problem(Exception):
    """Raise from a handler to answer with this status, detail and field errors."""

    def __init__(
        self, status: int, detail: str, errors: Sequence[FieldError] = (), title: str | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = list(errors)
        self.title = title or HTTPStatus(status).phrase
