"""Recompute every stream from its stored events and check everything stored about it.

One pass per stream in `seq` order, a page of rows at a time, inside one read
transaction (a consistent snapshot: REPEATABLE READ on PostgreSQL, one read
transaction on SQLite), with memory bounded by the page size plus O(log n).
With `jobs` > 1 a long stream's events are checked in chunks by worker
processes instead (`storage.verify_chunks`); the checks and their order are the
same. For each event (`storage.verify_scan`, the hot loop):

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
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from hashlib import sha256
from typing import Any

from sqlalchemy import Connection, Engine, select

from storage import merkle
from storage.checkpoints import Checkpoint, stream_checkpoints
from storage.events import format_time
from storage.schema import checkpoints, events, streams
from storage.signing import PublicKey
from storage.store import AuditStore
from storage.verify_chunks import CHUNK_LEVEL, Chunk, ChunkPool, can_fork, export_snapshot
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
    node_problem,
    payload_problem,
    position_problem,
)
from storage.verify_scan import EventScan, Progress

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

PAGE = 20_000


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
    jobs: int = 1,
    chunk_level: int = CHUNK_LEVEL,
) -> list[StreamResult]:
    """Check `stream` (default: every stream) against its events, tree and checkpoints.

    `keys` maps key ids to the public keys whose checkpoints are trusted; None
    means no key is at hand (`NoVerificationKey` if a checkpoint needs one).
    With `jobs` > 1, a stream of at least two chunks of 2**`chunk_level` events
    is checked by `jobs` forked worker processes (`storage.verify_chunks`), with
    the same findings; the caller must be able to fork (a command, not a server).
    """
    with snapshot(store.engines.read) as conn, ExitStack() as cleanup:
        names = [stream] if stream is not None else stream_names(conn)
        if extra is not None and extra.stream not in names and stream is None:
            names.append(extra.stream)
        chunking = None
        if jobs > 1 and can_fork(store.engines.read):
            chunking = _Chunking(store.engines.read, conn, jobs, chunk_level, cleanup)
        results = []
        for name in sorted(names):
            extras = [_Pending(extra, extra_label)] if extra and extra.stream == name else []
            check = _StreamCheck(conn, name, keys, extras, page, progress, chunking)
            try:
                results.append(check.run())
            except (TypeError, ValueError, OverflowError) as exc:
                # Only a store edited by hand holds values of the wrong type (SQLite
                # columns take any type); that is tampering too, not a crash.
                problem = Finding(ALTERED, f"a stored value has an impossible type or form: {exc}")
                results.append(StreamResult(name, 0, check.checkpoints, problem))
        return results


class _Chunking:
    """How streams are cut into chunks, and the worker processes, started at the
    first stream long enough to need them."""

    def __init__(
        self, engine: Engine, conn: Connection, jobs: int, level: int, cleanup: ExitStack
    ) -> None:
        self.level = level
        self._engine, self._conn, self._jobs, self._cleanup = engine, conn, jobs, cleanup
        self._pool: ChunkPool | None = None

    @property
    def pool(self) -> ChunkPool:
        if self._pool is None:
            self._pool = ChunkPool(self._engine, self._jobs, export_snapshot(self._conn))
            self._cleanup.callback(self._pool.close)
        return self._pool


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
        chunks: _Chunking | None = None,
    ) -> None:
        self.conn = conn
        self.stream = stream
        self.keys = keys
        self.page = page
        self.progress = progress
        self.chunking = chunks
        self.extras = extras
        stored = (_Pending(cp, "the stored checkpoint") for cp in stream_checkpoints(conn, stream))
        self.pending: Iterator[_Pending] = heapq.merge(
            stored, sorted(extras, key=lambda p: p.checkpoint.size), key=lambda p: p.checkpoint.size
        )
        self.upcoming: _Pending | None = None
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
        nodes = StoredNodes(self.conn, self.stream, self.page)
        self.upcoming = next(self.pending, None)
        problem, next_size = self.reach(0, [])
        if problem:
            return self.result(0, problem)
        chunking = self.chunking
        if chunking is not None and head_seq is not None and head_seq >= 2 << chunking.level:
            return self.run_chunks(chunking, head, head_seq, nodes)
        scan = EventScan(self.conn, self.stream, self.page, head_seq)
        problem = scan.run(
            nodes,
            after_seq=None,
            last_seq=None,
            next_stop=next_size,
            at_stop=self.reach,
            progress=self.progress,
        )
        if problem:
            return self.result(scan.size, problem)
        end = self.check_end(scan.size, scan.frontier, head, scan.redacted, nodes)
        return self.result(scan.size, end)

    def reach(self, size: int, frontier: list[bytes]) -> tuple[Finding | None, int]:
        """Check every checkpoint of `size` (the first `size` events folded into
        `frontier`); return a problem, and the next checkpoint's size (-1: none)."""
        root = None
        upcoming = self.upcoming
        while upcoming is not None and upcoming.checkpoint.size == size:
            if root is None:
                root = merkle.root_from_subtrees(frontier)
            problem = self.check_checkpoint(upcoming, root)
            if problem:
                return problem, -1
            upcoming = self.upcoming = next(self.pending, None)
        return None, upcoming.checkpoint.size if upcoming is not None else -1

    def run_chunks(
        self, chunking: _Chunking, head: Row, head_seq: int, nodes: StoredNodes
    ) -> StreamResult:
        """`run`, the events checked by `chunking`'s workers a chunk each (see
        `storage.verify_chunks`): here the chunk roots are folded, the nodes above
        the chunk level and the checkpoints checked, in seq order."""
        level = chunking.level
        outer: list[bytes] = []
        """The perfect subtrees of whole chunks, largest first."""
        frontier: list[bytes] = []
        redacted: dict[str, tuple[int, str]] = {}
        size = 0
        for chunk, found in chunking.pool.check(self.chunks(level, head_seq)):
            for stop, inner in found.stops:
                problem, _ = self.reach(stop, outer + inner)
                if problem:
                    return self.result(stop, problem)
            for target in found.targets:
                redacted.pop(target, None)
            redacted.update(found.redacted)
            if self.progress is not None and found.size > chunk.first:
                self.progress(found.size - chunk.first)
            if found.problem is not None:
                return self.result(found.size, found.problem)
            size = found.size
            if size < chunk.last:
                # Events are missing: the row after them, read below, says which.
                frontier = outer + found.frontier
                break
            if size - chunk.first == 1 << level:
                problem = self.fold_chunk(
                    outer, found.frontier[0], chunk.first >> level, level, nodes
                )
                if problem:
                    return self.result(size - 1, problem)
                frontier = outer
            else:
                frontier = outer + found.frontier
            problem, _ = self.reach(size, frontier)
            if problem:
                return self.result(size, problem)
        following = DriverQuery(
            self.conn,
            events_sql(
                self.conn.dialect.name, "stream = :stream AND seq > :seq ORDER BY seq, pk LIMIT 1"
            ),
        ).rows({"stream": self.stream, "seq": size})
        if following:
            return self.result(
                size, position_problem(EventRow._make(following[0]), size + 1, head_seq)
            )
        problem = self.settle_redactions(redacted)
        if problem:
            return self.result(problem.seq - 1 if problem.seq else size, problem)
        return self.result(size, self.check_end(size, frontier, head, redacted, nodes))

    def chunks(self, level: int, head_seq: int) -> Iterator[Chunk]:
        span = 1 << level
        for first in range(0, head_seq, span):
            last = min(first + span, head_seq)
            yield Chunk(
                self.stream, first, last, level, head_seq, self.stop_sizes(first, last), self.page
            )

    def stop_sizes(self, after: int, before: int) -> tuple[int, ...]:
        """The checkpoint sizes strictly between `after` and `before`, stored or extra."""
        stored = self.conn.execute(
            select(checkpoints.c.size)
            .where(
                checkpoints.c.stream == self.stream,
                checkpoints.c.size > after,
                checkpoints.c.size < before,
            )
            .distinct()
        ).scalars()
        sizes = {int(size) for size in stored}
        sizes.update(p.checkpoint.size for p in self.extras if after < p.checkpoint.size < before)
        return tuple(sorted(sizes))

    def fold_chunk(
        self, outer: list[bytes], root: bytes, index: int, level: int, nodes: StoredNodes
    ) -> Finding | None:
        """Fold a whole chunk's root (node `index` of `level`) into `outer`, as
        `EventScan` folds a leaf, comparing each node it completes with the stored one."""
        position, current = index, root
        while position & 1:
            current = sha256(b"\x01" + outer.pop() + current).digest()
            position >>= 1
            level += 1
            buffer = nodes.buffers[level] or nodes.refill(level)
            stored = buffer.popleft() if buffer else None
            if stored is None or stored[0] != position or stored[1] != current:
                return node_problem(self.conn, self.stream, level, position, stored)
        outer.append(current)
        return None

    def settle_redactions(self, redacted: dict[str, tuple[int, str]]) -> Finding | None:
        """Drop the erased events a worker saw that are not erased in this snapshot
        (SQLite: a redaction committed after it began), once their payload is checked."""
        for event_id, (seq, _) in sorted(redacted.items(), key=lambda item: item[1]):
            row = event_at(self.conn, self.stream, seq)
            if row is None or row.id != event_id or row.payload is None:
                continue
            if sha256(row.payload).hexdigest() != row.payload_digest:
                return payload_problem(row)
            del redacted[event_id]
        return None

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
        nodes: StoredNodes,
    ) -> Finding | None:
        upcoming = self.upcoming
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
