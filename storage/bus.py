"""Live delivery of committed events to in-process subscribers (the `/v1/tail` streams).

The store tells the bus of every transaction it commits (`AuditStore` commit
listener), on the committing thread, in commit order, whoever appended: the
group-commit writer, the capture poller, a redaction. The bus hops onto the
event loop with one `call_soon_threadsafe` per commit, and only while someone
listens, so ingest never waits for a subscriber.

Each subscriber has a bounded buffer. A subscriber that is already `max_queued`
events behind when another commit arrives is dropped (told so once, through
`Subscription.dropped`) rather than slowing ingest or growing memory without
bound.

Each event carries its `position` (the store's pk, the global insertion order),
so a subscriber that also reads a backlog from the store can skip what it has
already sent.

When other processes append to the same store (the API workers of
`server.workers`, or the daemon's store writer process, whose commits reach
this process's listeners in an order that need not be the store's), the bus
then *follows* the store instead (`follow`), reading every event after the
last position it delivered whenever it is woken (a commit here, `wake` from a
watch on the store's files, or every `FOLLOW_INTERVAL` seconds), and only
while someone listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy.exc import SQLAlchemyError

from storage.events import AuditEvent, to_ms
from storage.query import EventQuery
from storage.store import Appended, AuditStore, row_to_event

log = logging.getLogger(__name__)

DEFAULT_MAX_QUEUED = 10_000
FOLLOW_INTERVAL = 0.5
"""Seconds between reads of a followed store when nothing wakes the follower."""
FOLLOW_BATCH = 1000


@dataclass(frozen=True, slots=True)
class Published:
    position: int
    event: AuditEvent


def event_matches(query: EventQuery, event: AuditEvent) -> bool:
    """Whether `event` passes the filters of `query` (the same ones `AuditStore.query` applies)."""
    if query.actor is not None and event.actor.id != query.actor:
        return False
    if query.entity is not None and event.entity != query.entity:
        return False
    if query.entity_id is not None and event.entity_id != query.entity_id:
        return False
    if query.event_types and event.event_type.value not in query.event_types:
        return False
    if query.action is not None and event.action != query.action:
        return False
    if query.stream is not None and event.stream != query.stream:
        return False
    if query.property is not None and query.property not in event.properties:
        return False
    if query.since_ms is not None or query.until_ms is not None:
        occurred = to_ms(event.occurred_at)
        if query.since_ms is not None and occurred < query.since_ms:
            return False
        if query.until_ms is not None and occurred >= query.until_ms:
            return False
    return True


class Subscription:
    """One subscriber's buffer of matching events; read it with `next_batch`."""

    def __init__(self, query: EventQuery, max_queued: int) -> None:
        self.query = query
        self._max_queued = max_queued
        self._items: deque[Published] = deque()
        self._wake = asyncio.Event()
        self._ended = asyncio.get_running_loop().create_future()
        self.dropped = False
        """Set when the subscriber fell too far behind and stopped receiving events."""
        self.closed = False
        """Set when the bus shut down."""

    @property
    def ended(self) -> asyncio.Future[None]:
        """Done once the subscription receives nothing more (dropped or closed)."""
        return self._ended

    async def next_batch(self) -> list[Published]:
        """Every event buffered so far, waiting for one; [] once the subscription has ended."""
        while not self._items and not self._ended.done():
            self._wake.clear()
            await self._wake.wait()
        batch = list(self._items)
        self._items.clear()
        return batch

    def _offer(self, items: list[Published]) -> bool:
        """Buffer the matching ones; False when the subscriber is already `max_queued`
        events behind. One commit is never refused whole on arrival (it may hold up
        to `storage.writer.MAX_EVENTS_PER_COMMIT` events), so a subscriber that keeps
        up is never dropped, and the buffer holds at most `max_queued` plus one commit."""
        matching = [item for item in items if event_matches(self.query, item.event)]
        if not matching:
            return True
        if len(self._items) >= self._max_queued:
            return False
        self._items.extend(matching)
        self._wake.set()
        return True

    def _end(self, *, dropped: bool) -> None:
        if self._ended.done():
            return
        self.dropped = dropped
        self.closed = not dropped
        self._items.clear()
        self._ended.set_result(None)
        self._wake.set()


class EventBus:
    """Fans committed events out to subscribers on one event loop."""

    def __init__(self, max_queued: int = DEFAULT_MAX_QUEUED) -> None:
        self.max_queued = max_queued
        self._subscribers: set[Subscription] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._store: AuditStore | None = None
        self.dropped_total = 0
        self._followed: AuditStore | None = None
        self._follower: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._position = 0
        """Following: the last position delivered (or the head when the first
        subscriber arrived); meaningful only while someone listens."""

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def attach(self, store: AuditStore) -> None:
        """Start receiving `store`'s commits; call on the loop that subscribers use."""
        self._loop = asyncio.get_running_loop()
        self._store = store
        store.add_commit_listener(self._on_commit)

    def follow(self, store: AuditStore) -> None:
        """Deliver every event committed to `store` by any process, read back from it
        in position order; call on the loop that subscribers use."""
        self._loop = asyncio.get_running_loop()
        self._followed = store
        store.add_commit_listener(self._on_own_commit)
        self._follower = asyncio.create_task(self._follow(store))

    def wake(self) -> None:
        """Something may have been committed (on the loop): read the followed store."""
        self._wake.set()

    def close(self) -> None:
        """Stop listening and end every subscription (`closed`)."""
        if self._store is not None:
            self._store.remove_commit_listener(self._on_commit)
            self._store = None
        if self._followed is not None:
            self._followed.remove_commit_listener(self._on_own_commit)
            self._followed = None
        if self._follower is not None:
            self._follower.cancel()
            self._follower = None
        for subscription in list(self._subscribers):
            subscription._end(dropped=False)
        self._subscribers.clear()

    @contextlib.contextmanager
    def subscribe(self, query: EventQuery) -> Iterator[Subscription]:
        """Receive every event committed from now on that matches `query`."""
        subscription = Subscription(query, self.max_queued)
        if self._followed is not None and not self._subscribers:
            # Nobody listened, so nothing was read: start from the head. A tail
            # replays from the store after subscribing, which covers what is older.
            # Read here, on the loop, so that no commit falls between this and the
            # tail's replay (on PostgreSQL: one round trip, once per first subscriber).
            self._position = self._followed.last_position()
        self._subscribers.add(subscription)
        try:
            yield subscription
        finally:
            self._subscribers.discard(subscription)

    def _on_commit(self, appended: list[Appended]) -> None:
        # On the committing thread: never block, never touch subscribers here.
        loop = self._loop
        if not self._subscribers or loop is None or not appended:
            return
        items = [Published(a.position, a.event) for a in appended if a.position is not None]
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is listening
            loop.call_soon_threadsafe(self._deliver, items)

    def _on_own_commit(self, appended: list[Appended]) -> None:
        loop = self._loop
        if self._subscribers and loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed
                loop.call_soon_threadsafe(self._wake.set)

    async def _follow(self, store: AuditStore) -> None:
        while True:
            self._wake.clear()
            if self._subscribers:
                start = self._position
                try:
                    items, more = await asyncio.to_thread(_read_after, store, start)
                except SQLAlchemyError:  # a store outage must not end the tails' feed
                    log.warning("live tail: reading new events failed", exc_info=True)
                    items, more = [], False
                if self._position != start:  # a first subscriber re-anchored it meanwhile
                    continue
                if items:
                    self._position = items[-1].position
                    self._deliver(items)
                    if more:
                        continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), FOLLOW_INTERVAL)

    def _deliver(self, items: list[Published]) -> None:
        for subscription in list(self._subscribers):
            if not subscription._offer(items):
                self._subscribers.discard(subscription)
                subscription._end(dropped=True)
                self.dropped_total += 1
                log.warning(
                    "a live-tail subscriber fell %d events behind and was dropped",
                    self.max_queued,
                )


def _read_after(store: AuditStore, position: int) -> tuple[list[Published], bool]:
    """Up to `FOLLOW_BATCH` stored events after `position`, oldest first, and whether
    there are more."""
    rows, more = store.query_rows(EventQuery(order="asc", after_pk=position, limit=FOLLOW_BATCH))
    return [Published(int(row[0]), row_to_event(row)) for row in rows], more is not None
