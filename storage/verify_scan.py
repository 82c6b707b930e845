"""The hot loop of `storage.verify`: check a run of one stream's events and fold their tree.

`EventScan.run` reads the events from a seq on, a page at a time, and for each
one checks its position, its payload digest and its hash, then folds its leaf
into the Merkle frontier and compares every node that completes with the
stored one. It runs over a whole stream in one process, or over one chunk of
it in a worker (`storage.verify_chunks`): a chunk starts at a multiple of
2**`top` events, so the nodes up to level `top` are all its own.
"""

from __future__ import annotations

from collections.abc import Callable
from hashlib import sha256
from typing import Any

import orjson
from sqlalchemy import Connection

from storage.canonical import canonical_fields
from storage.events import second_text
from storage.verify_rows import (
    ALTERED,
    DriverQuery,
    EventRow,
    Finding,
    StoredNodes,
    events_sql,
    mismatch_problem,
    node_problem,
    payload_problem,
    position_problem,
)

REDACTION_ACTION = "audit_event.redacted"
REDACTION_ENTITY = "audit_event"
TOP_LEVEL = 64
"""No stream has 2**64 events: a fold capped here is not capped."""

Stop = Callable[[int, list[bytes]], "tuple[Finding | None, int]"]
"""Called when `size` events are folded and `size` is the next stop: returns a
problem (or None) and the next stop (-1 for none)."""
Progress = Callable[[int], None]


class EventScan:
    """One pass over the events of `stream` after seq `after_seq` up to `last_seq`.

    `size` (events checked), `frontier` (the roots of the perfect subtrees
    folded so far, largest first, from level 0 up to `top`), `redacted`
    (erased events no redaction event has named yet) and `targets` (the ids
    every redaction event named, in order) are what the caller reads after
    `run`.
    """

    def __init__(
        self,
        conn: Connection,
        stream: str,
        page: int,
        head_seq: int | None,
        *,
        size: int = 0,
        top: int = TOP_LEVEL,
    ) -> None:
        self.conn = conn
        self.stream = stream
        self.page = page
        self.head_seq = head_seq
        self.size = size
        self.top = top
        self.frontier: list[bytes] = []
        self.redacted: dict[str, tuple[int, str]] = {}
        self.targets: list[str] = []

    def run(
        self,
        nodes: StoredNodes,
        *,
        after_seq: int | None,
        last_seq: int | None,
        next_stop: int,
        at_stop: Stop,
        progress: Progress | None = None,
    ) -> Finding | None:
        """The first problem from `size` on, or None once every event after `after_seq`
        (None: from the stream's start) up to `last_seq` (None: to its end) is checked."""
        conn, stream, page, head_seq, top = (
            self.conn,
            self.stream,
            self.page,
            self.head_seq,
            self.top,
        )
        # Unbounded, a row whose seq SQLite sorts past every number (text) is read too;
        # after an int, one SQLite stores between two (4.5) is read by the chunk after.
        bound = "" if last_seq is None else " AND seq <= :last"
        start = "seq >= :seq" if after_seq is None else "seq > :after"
        first_page, next_page = (
            DriverQuery(
                conn,
                events_sql(
                    conn.dialect.name,
                    f"stream = :stream AND {where}{bound} ORDER BY seq, pk LIMIT :limit",
                ),
            )
            for where in (start, "seq >= :seq")
        )
        params: dict[str, Any] = {
            "stream": stream,
            "after": after_seq,
            "last": last_seq,
            "limit": page,
        }
        frontier, redacted, targets = self.frontier, self.redacted, self.targets
        buffers = nodes.buffers
        size = self.size
        # Paging is by (seq, pk) so a second row with one seq is read, and reported.
        last_seq_read, last_pk = 0 if after_seq is None else after_seq, -1
        last_second, text = None, ""
        events_from = first_page
        while True:
            params["seq"] = last_seq_read
            rows = events_from.rows(params)
            events_from = next_page
            fresh = 0
            for row in rows:
                (
                    pk,
                    seq,
                    event_id,
                    entity,
                    entity_id,
                    event_type,
                    action,
                    properties,
                    actor_id,
                    actor_name,
                    actor_ip,
                    occurred_at,
                    payload,
                    digest,
                    stored_hash,
                    is_redacted,
                ) = row
                if seq == last_seq_read and pk <= last_pk:
                    continue
                fresh += 1
                last_seq_read, last_pk = seq, pk
                if seq != size + 1 or (head_seq is not None and seq > head_seq):
                    return self._stopped(
                        size, position_problem(EventRow._make(row), size + 1, head_seq)
                    )
                if payload is not None:
                    if sha256(payload).hexdigest() != digest:
                        return self._stopped(size, payload_problem(EventRow._make(row)))
                elif is_redacted:
                    redacted[event_id] = (seq, event_id)
                else:
                    return self._stopped(size, payload_problem(EventRow._make(row)))
                try:
                    second = occurred_at // 1000
                    if second != last_second:
                        text, last_second = second_text(second), second
                    canonical = canonical_fields(
                        event_id=event_id,
                        stream=stream,
                        seq=seq,
                        entity=entity,
                        entity_id=entity_id,
                        event_type=event_type,
                        action=action,
                        properties=orjson.loads(properties),
                        actor_id=actor_id,
                        actor_name=actor_name,
                        actor_ip=actor_ip,
                        occurred_at=f"{text}{occurred_at % 1000:03d}Z",
                        payload_digest=digest,
                    )
                except (ValueError, TypeError, OverflowError):
                    return self._stopped(
                        size, Finding(ALTERED, "its stored values are malformed", seq, event_id)
                    )
                leaf = sha256(b"\x00" + canonical).digest()
                if leaf.hex() != stored_hash:
                    return self._stopped(
                        size, mismatch_problem(conn, stream, EventRow._make(row), head_seq)
                    )
                if action == REDACTION_ACTION and entity == REDACTION_ENTITY:
                    redacted.pop(entity_id, None)
                    targets.append(entity_id)
                # The fold of merkle.Frontier.append, inline: each node it completes
                # is compared with the stored one.
                position = size
                current = leaf
                level = 0
                while position & 1 and level < top:
                    current = sha256(b"\x01" + frontier.pop() + current).digest()
                    position >>= 1
                    level += 1
                    buffer = buffers[level] or nodes.refill(level)
                    stored = buffer.popleft() if buffer else None
                    if stored is None or stored[0] != position or stored[1] != current:
                        return self._stopped(
                            size, node_problem(conn, stream, level, position, stored)
                        )
                frontier.append(current)
                size += 1
                while size == next_stop:
                    problem, next_stop = at_stop(size, frontier)
                    if problem:
                        return self._stopped(size, problem)
            self.size = size
            if progress is not None and fresh:
                progress(fresh)
            if len(rows) < page or not fresh:
                return None

    def _stopped(self, size: int, problem: Finding) -> Finding:
        self.size = size
        return problem
