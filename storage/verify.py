"""Recompute every stream from its stored events and check everything stored about it.

One pass per stream in `seq` order, a page of rows at a time, inside one read
transaction (a consistent snapshot: REPEATABLE READ on PostgreSQL, one read
transaction on SQLite), with memory bounded by the page size plus O(log n).
For each event:

1. `seq` continues 1, 2, 3…: a gap is a *removed* event, a repeated seq or one
   past the stream's head an *inserted* one;
2. the SHA-256 of the stored payload document equals `payload_digest` (the
   document is hashed as stored, never re-encoded); an erased payload needs the
   `redacted` flag and a redaction event (`audit_event.redacted`) naming it
   later in the stream;
3. SHA-256(0x00 || canonical bytes recomputed from the stored columns) equals
   the stored `hash`. When it does not, the hash is tried against the same
   event at every other seq: if it fits one, the event was moved (*reordered*,
   or events before it *removed*/*inserted* and the rest renumbered); if none,
   the event was *altered*;
4. the leaves are folded as `merkle.Frontier` does, and every perfect node this
   completes is compared with its `merkle_nodes` row: all of them, not a
   sample, because proofs and the roots the checkpointer signs are read from
   those rows;
5. at each checkpoint's size the root is compared with the checkpoint's root,
   after its Ed25519 signature is checked with our key (*bad signature*).

At the end: the stream's head row (seq and hash), and no checkpoint, head or
Merkle node may reach past the last stored event (*truncated*). The first
problem of a stream stops its check. An extra checkpoint (`--checkpoint FILE`,
saved earlier elsewhere) joins the stored ones: it catches a truncated or
rewritten store even when the stored checkpoints were deleted along with it.

Limits, by design: events appended after the newest checkpoint are only as
trustworthy as the database until the next checkpoint signs them, and someone
who can write the database and also holds the key file can rewrite anything.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from hashlib import sha256
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, select

from storage import merkle
from storage.canonical import canonical_fields
from storage.checkpoints import Checkpoint, stream_checkpoints
from storage.events import format_time, second_text
from storage.schema import checkpoints, events, streams
from storage.signing import PublicKey
from storage.store import AuditStore
from storage.verify_rows import (
    ALTERED,
    BAD_SIGNATURE,
    INSERTED,
    REMOVED,
    REORDERED,
    TRUNCATED,
    DriverQuery,
    EventRow,
    Finding,
    Row,
    StoredNodes,
    event_at,
    events_sql,
    mismatch_problem,
    node_problem,
    payload_problem,
    position_problem,
)

__all__ = [
    "ALTERED",
    "BAD_SIGNATURE",
    "INSERTED",
    "REMOVED",
    "REORDERED",
    "TRUNCATED",
    "Finding",
    "NoVerificationKey",
    "StreamResult",
    "snapshot",
    "stream_names",
    "stream_sizes",
    "verify_store",
]

REDACTION_ACTION = "audit_event.redacted"
REDACTION_ENTITY = "audit_event"
PAGE = 20_000

Progress = Callable[[int], None]


class NoVerificationKey(Exception):
    """A checkpoint must be checked but no public key was given."""


@dataclass(frozen=True, slots=True)
class StreamResult:
    stream: str
    checked: int
    """Events read and found intact before the first problem (all of them when ok)."""
    checkpoints: int
    """Checkpoints whose signature and root were checked."""
    problem: Finding | None

    @property
    def ok(self) -> bool:
        return self.problem is None

    def describe(self) -> str:
        """One line for people: the stream, and the problem with its seq and id."""
        if self.problem is None:
            return (
                f"stream {self.stream}: intact ({self.checked} events, "
                f"{self.checkpoints} signed checkpoints)"
            )
        where = ""
        if self.problem.seq is not None:
            where += f" seq {self.problem.seq}"
        if self.problem.event_id is not None:
            where += f" (id {self.problem.event_id})"
        where = f" at{where}" if where else ""
        return (
            f"stream {self.stream}: NOT intact{where}: {self.problem.kind}: {self.problem.reason}"
        )

    def to_json(self) -> dict[str, Any]:
        problem = self.problem
        return {
            "stream": self.stream,
            "ok": problem is None,
            "checked": self.checked,
            "checkpoints": self.checkpoints,
            "first_bad_seq": problem.seq if problem else None,
            "event_id": problem.event_id if problem else None,
            "kind": problem.kind if problem else None,
            "reason": problem.reason if problem else None,
        }


@dataclass(frozen=True, slots=True)
class _Pending:
    """A checkpoint to check, and how to name it in a message."""

    checkpoint: Checkpoint
    label: str


def verify_store(
    store: AuditStore,
    keys: Mapping[str, PublicKey] | None,
    *,
    stream: str | None = None,
    extra: Checkpoint | None = None,
    extra_label: str = "the saved checkpoint",
    page: int = PAGE,
    progress: Progress | None = None,
) -> list[StreamResult]:
    """Check `stream` (default: every stream) against its events, tree and checkpoints.

    `keys` maps key ids to the public keys whose checkpoints are trusted; None
    means no key is at hand (`NoVerificationKey` if a checkpoint needs one).
    """
    with snapshot(store.engines.read) as conn:
        names = [stream] if stream is not None else stream_names(conn)
        if extra is not None and extra.stream not in names and stream is None:
            names.append(extra.stream)
        results = []
        for name in sorted(names):
            extras = [_Pending(extra, extra_label)] if extra and extra.stream == name else []
            check = _StreamCheck(conn, name, keys, extras, page, progress)
            try:
                results.append(check.run())
            except (TypeError, ValueError, OverflowError) as exc:
                # Only a store edited by hand holds values of the wrong type (SQLite
                # columns take any type); that is tampering too, not a crash.
                problem = Finding(ALTERED, f"a stored value has an impossible type or form: {exc}")
                results.append(StreamResult(name, 0, check.checkpoints, problem))
        return results


def stream_names(conn: Connection) -> list[str]:
    """Every stream with a head row, an event or a checkpoint."""
    names: set[str] = set(conn.execute(select(streams.c.name)).scalars())
    names.update(conn.execute(select(events.c.stream).distinct()).scalars())
    names.update(conn.execute(select(checkpoints.c.stream).distinct()).scalars())
    return sorted(names)


def stream_sizes(store: AuditStore) -> dict[str, int]:
    """Each stream's head seq: the work `verify_store` has ahead (for a progress bar)."""
    with store.engines.read.begin() as conn:
        return {
            name: int(seq) for name, seq in conn.execute(select(streams.c.name, streams.c.head_seq))
        }


@contextmanager
def snapshot(engine: Engine) -> Iterator[Connection]:
    """A read transaction that sees one state of the store throughout."""
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        with conn.begin():
            yield conn


class _StreamCheck:
    def __init__(
        self,
        conn: Connection,
        stream: str,
        keys: Mapping[str, PublicKey] | None,
        extras: list[_Pending],
        page: int,
        progress: Progress | None,
    ) -> None:
        self.conn = conn
        self.stream = stream
        self.keys = keys
        self.page = page
        self.progress = progress
        stored = (_Pending(cp, "the stored checkpoint") for cp in stream_checkpoints(conn, stream))
        self.pending: Iterator[_Pending] = heapq.merge(
            stored, sorted(extras, key=lambda p: p.checkpoint.size), key=lambda p: p.checkpoint.size
        )
        self.checkpoints = 0
        self.good_size = 0
        """The size of the newest checkpoint whose root matched."""

    def result(self, checked: int, problem: Finding | None) -> StreamResult:
        return StreamResult(self.stream, checked, self.checkpoints, problem)

    def run(self) -> StreamResult:
        head = self.conn.execute(
            select(streams.c.head_seq, streams.c.head_hash).where(streams.c.name == self.stream)
        ).first()
        head_seq = int(head.head_seq) if head is not None else None
        stream, conn, page = self.stream, self.conn, self.page
        events_from = DriverQuery(
            conn,
            events_sql(
                conn.dialect.name, "stream = :stream AND seq >= :seq ORDER BY seq, pk LIMIT :limit"
            ),
        )
        nodes = StoredNodes(conn, stream, page)
        frontier: list[bytes] = []
        size = 0
        redacted: dict[str, tuple[int, str]] = {}
        upcoming = next(self.pending, None)
        while upcoming is not None and upcoming.checkpoint.size == 0:
            problem = self.check_checkpoint(upcoming, merkle.EMPTY_ROOT)
            if problem:
                return self.result(size, problem)
            upcoming = next(self.pending, None)
        buffers = nodes.buffers
        next_size = upcoming.checkpoint.size if upcoming is not None else -1
        last_seq, last_pk = 0, -1
        last_second, text = None, ""
        while True:
            rows = events_from.rows({"stream": stream, "seq": last_seq, "limit": page})
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
                if seq == last_seq and pk <= last_pk:
                    continue
                fresh += 1
                last_seq, last_pk = seq, pk
                if seq != size + 1 or (head_seq is not None and seq > head_seq):
                    return self.result(
                        size, position_problem(EventRow._make(row), size + 1, head_seq)
                    )
                if payload is not None:
                    if sha256(payload).hexdigest() != digest:
                        return self.result(size, payload_problem(EventRow._make(row)))
                elif is_redacted:
                    redacted[event_id] = (seq, event_id)
                else:
                    return self.result(size, payload_problem(EventRow._make(row)))
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
                    return self.result(
                        size, Finding(ALTERED, "its stored values are malformed", seq, event_id)
                    )
                leaf = sha256(b"\x00" + canonical).digest()
                if leaf.hex() != stored_hash:
                    return self.result(
                        size, mismatch_problem(conn, stream, EventRow._make(row), head_seq)
                    )
                if action == REDACTION_ACTION and entity == REDACTION_ENTITY:
                    redacted.pop(entity_id, None)
                # The fold of merkle.Frontier.append, inline: each node it completes
                # is compared with the stored one.
                position = size
                current = leaf
                level = 0
                while position & 1:
                    current = sha256(b"\x01" + frontier.pop() + current).digest()
                    position >>= 1
                    level += 1
                    buffer = buffers[level] or nodes.refill(level)
                    stored = buffer.popleft() if buffer else None
                    if stored is None or stored[0] != position or stored[1] != current:
                        return self.result(
                            size, node_problem(conn, stream, level, position, stored)
                        )
                frontier.append(current)
                size += 1
                while size == next_size:
                    assert upcoming is not None
                    problem = self.check_checkpoint(upcoming, merkle.root_from_subtrees(frontier))
                    if problem:
                        return self.result(size, problem)
                    upcoming = next(self.pending, None)
                    next_size = upcoming.checkpoint.size if upcoming is not None else -1
            if self.progress is not None and fresh:
                self.progress(fresh)
            if len(rows) < page or not fresh:
                break
        return self.result(size, self.check_end(size, frontier, head, redacted, upcoming, nodes))

    def signature_problem(self, pending: _Pending) -> Finding | None:
        """None when the checkpoint is signed by a trusted key over exactly its values."""
        checkpoint = pending.checkpoint
        named = self.named(pending)
        if self.keys is None:
            raise NoVerificationKey(f"stream {self.stream}: {named} needs the public key")
        key = self.keys.get(checkpoint.key_id)
        if key is None:
            return Finding(
                BAD_SIGNATURE, f"{named} is signed by an unknown key {checkpoint.key_id}"
            )
        try:
            valid = key.verify(checkpoint.message(), checkpoint.signature)
        except ValueError:
            valid = False
        if not valid:
            return Finding(BAD_SIGNATURE, f"the signature of {named} is not valid")
        return None

    @staticmethod
    def named(pending: _Pending) -> str:
        checkpoint = pending.checkpoint
        return (
            f"{pending.label} of {checkpoint.size} events signed at "
            f"{format_time(checkpoint.signed_at)}"
        )

    def check_checkpoint(self, pending: _Pending, root: bytes) -> Finding | None:
        problem = self.signature_problem(pending)
        if problem is not None:
            return problem
        checkpoint, named = pending.checkpoint, self.named(pending)
        self.checkpoints += 1
        if root.hex() != checkpoint.root:
            first = self.good_size + 1
            event = event_at(self.conn, self.stream, first)
            return Finding(
                ALTERED,
                f"the first {checkpoint.size} events no longer have the root of {named}: "
                f"an event from seq {first} to {checkpoint.size} was altered, removed, inserted "
                "or reordered and the tree recomputed to hide it",
                first,
                event.id if event is not None else None,
            )
        self.good_size = checkpoint.size
        return None

    def check_end(
        self,
        size: int,
        frontier: list[bytes],
        head: Row | None,
        redacted: dict[str, tuple[int, str]],
        upcoming: _Pending | None,
        nodes: StoredNodes,
    ) -> Finding | None:
        if redacted:
            seq, event_id = min(redacted.values())
            return Finding(
                ALTERED,
                "its payload was erased and it is marked redacted, but no redaction event "
                "records it",
                seq,
                event_id,
            )
        if upcoming is not None:
            problem = self.signature_problem(upcoming)
            if problem is not None:
                return problem
            checkpoint, named = upcoming.checkpoint, self.named(upcoming)
            return Finding(
                TRUNCATED,
                f"{named} covers seqs up to {checkpoint.size} but the stream ends at seq {size}: "
                "events were removed from its end",
                size + 1,
            )
        if head is None:
            if size:
                return Finding(ALTERED, "the stream's head row is missing")
            return None
        if int(head.head_seq) > size:
            return Finding(
                TRUNCATED,
                f"the stream's head says {head.head_seq} events but it ends at seq {size}: "
                "events were removed from its end",
                size + 1,
            )
        beyond = nodes.beyond(size)
        if beyond is not None:
            level, index = beyond
            return Finding(
                TRUNCATED,
                f"a stored Merkle node (level {level}, index {index}) covers seqs past the last "
                f"stored event (seq {size}): events were removed from the end",
                size + 1,
            )
        if size and head.head_hash != merkle.root_from_subtrees(frontier).hex():
            return Finding(ALTERED, "the stream's head hash is not the root of its events")
        return None
