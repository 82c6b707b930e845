"""Readiness: named checks that `GET /readyz` runs, each answering None when ready.

The app registers `store` (the store answers `ping`); the capture wiring
registers its own (capture is running) through `app[READINESS].add(...)`.
A check that raises or does not answer within its timeout (CHECK_TIMEOUT unless
it was registered with its own) counts as not ready.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

ReadinessCheck = Callable[[], Awaitable[str | None]]
"""Returns None when ready, else a short reason (shown to the caller of /readyz)."""

CHECK_TIMEOUT = 5.0


class Readiness:
    """A registry of named readiness checks."""

    def __init__(self, timeout: float = CHECK_TIMEOUT) -> None:
        self._checks: dict[str, tuple[ReadinessCheck, float]] = {}
        self._timeout = timeout

    def add(self, name: str, check: ReadinessCheck, timeout: float | None = None) -> None:
        """Register `check` under `name`, replacing any check of that name.

        `timeout` (seconds) bounds this check alone; by default the registry's.
        """
        self._checks[name] = (check, self._timeout if timeout is None else timeout)

    @property
    def names(self) -> list[str]:
        return list(self._checks)

    async def run(self) -> dict[str, str | None]:
        """Every check, concurrently: name -> None (ready) or the reason it is not."""
        names = list(self._checks)
        results = await asyncio.gather(*(self._run_one(name) for name in names))
        return dict(zip(names, results, strict=True))

    async def _run_one(self, name: str) -> str | None:
        check, timeout = self._checks[name]
        try:
            async with asyncio.timeout(timeout):
                return await check()
        except TimeoutError:
            return f"no answer within {timeout:g} s"
        except Exception as exc:
            log.warning("readiness check %r failed", name, exc_info=True)
            return f"check failed: {exc.__class__.__name__}"
