"""Group commit: many concurrent appends share one store transaction.

Why this shape (measured on this 2-core machine before Auditor existed): one
SQLite commit per POST reached 4,900 requests/s; handlers awaiting a shared
batch commit reached 8,970. The commit itself runs in ONE dedicated thread,
so the event loop keeps parsing requests while a batch commits, and the next
batch gathers in the meantime. A single thread also means the store sees one
writer at a time, which is what SQLite wants anyway.

If a shared transaction fails, each request in it is retried alone, so one
bad request never fails the others that happened to share its commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from storage.store import Appended, AppendRequest, AuditStore, StorageError

log = logging.getLogger(__name__)

MAX_EVENTS_PER_COMMIT = 20_000


class Submitted(NamedTuple):
    """Work for a store writer process that turns into an append there: the child
    imports `codec` (a module path), runs `codec.prepare(payload)`, which returns
    `(AppendRequest, state)` or `(None, answer)`, commits the request with the
    others that arrived, and answers with `codec.answer(state, appended)`, which
    must pickle and be neither a `str` nor an exception (those say the work
    failed). Parsing a small POST where it is committed keeps it off the daemon's
    event loop (`web.ingest`)."""

    codec: str
    payload: Any


class Writer(Protocol):
    """What appends through a writer see: `GroupCommitWriter` here, or the process
    writer of `storage.writer_process`."""

    commits: int

    async def start(self) -> None: ...

    async def stop(self) -> None:
        """Commit what was handed over, then stop."""

    async def append(self, request: AppendRequest) -> list[Appended]:
        """Store `request` (in a transaction it may share); return once committed."""


@dataclass
class _Pending:
    request: AppendRequest
    future: asyncio.Future[list[Appended]]


class GroupCommitWriter:
    """Owns the store's write thread; `append` returns once the events are committed."""

    def __init__(self, store: AuditStore, max_events: int = MAX_EVENTS_PER_COMMIT) -> None:
        self._store = store
        self._max_events = max_events
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-writer")
        self._task: asyncio.Task[None] | None = None
        self.commits = 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="group-commit-writer")

    async def stop(self) -> None:
        """Commit what is queued, then stop the thread."""
        if self._task is not None:
            await self._queue.join()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._thread.shutdown(wait=True)

    async def append(self, request: AppendRequest) -> list[Appended]:
        if self._task is None:
            raise StorageError("the writer is not running")
        future: asyncio.Future[list[Appended]] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(request, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            size = len(batch[0].request.events)
            while size < self._max_events and not self._queue.empty():
                item = self._queue.get_nowait()
                batch.append(item)
                size += len(item.request.events)
            try:
                await self._commit(loop, batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _commit(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending]) -> None:
        requests = [p.request for p in batch]
        try:
            results = await loop.run_in_executor(self._thread, self._store.append, requests)
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0], exc=exc)
                return
            log.warning("group commit of %d requests failed; retrying one by one", len(batch))
            for pending in batch:
                await self._commit(loop, [pending])
            return
        self.commits += 1
        for pending, result in zip(batch, results, strict=True):
            _settle(pending, result=result)


def _settle(
    pending: _Pending,
    result: Sequence[Appended] | None = None,
    exc: BaseException | None = None,
) -> None:
    if pending.future.done():
        return
    if exc is not None:
        pending.future.set_exception(exc)
    else:
        pending.future.set_result(list(result or []))
