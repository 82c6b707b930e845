"""Blocking billing-database work in a worker thread, finished before a cancellation.

`asyncio.to_thread` lets the awaiting task go on as soon as it is cancelled while
the thread keeps running. Capture's tasks then close the connection that thread
is still using (the poller's on shutdown; a reconciliation's or snapshot's in its
`finally`), and sqlite3 can crash the whole process on a connection closed under
a running statement: a daemon stopped in the middle of a prune died of a
segmentation fault. `run_blocking` waits for the thread before it lets the
cancellation through; the wait is one statement or one batch read.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


async def run_blocking(fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
    """`asyncio.to_thread(fn, ...)`, except that when the caller is cancelled the
    thread's work ends before the `CancelledError` reaches the caller."""
    work = asyncio.ensure_future(asyncio.to_thread(fn, *args, **kwargs))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        # The shield kept the work going: wait it out (through further cancellations
        # too), then let the cancellation through. Its result goes with the caller.
        while not work.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([work])
        if not work.cancelled():
            work.exception()  # retrieved, so asyncio does not report it as lost
        raise
