"""Verify one stream in several processes: its events cut into chunks aligned to the tree.

A chunk is 2**`level` events starting at a multiple of 2**`level` (the last
one may be shorter), so every Merkle node up to that level covers events of
one chunk only. A worker process checks a chunk's events exactly as the
in-process pass does (`EventScan`, the fold capped at `level`) and sends back
only what the rest of the stream needs: how many events it found intact, its
part of the frontier (one root for a whole chunk), that part at each
checkpoint size inside it, its redaction bookkeeping, and its first problem.
The calling process (`storage.verify`) folds the chunk roots and checks the
nodes above `level`, the checkpoints and the stream's end, in seq order, so
the first problem reported is the one a single pass would report.

Pages are read by the workers, a few chunks ahead of the one being folded, so
memory stays bounded by the window, not by the stream.

**One snapshot.** On PostgreSQL the workers import the caller's snapshot
(`pg_export_snapshot`), so every process reads one state of the store. SQLite
cannot share a snapshot between connections: each worker's read transaction
begins after the caller's, so it sees the caller's events plus whatever was
committed since. Events up to the caller's head are never rewritten by
Auditor except by a redaction (payload erased, a redaction event appended
past that head), so the caller re-reads, in its own snapshot, every erased
event whose redaction the workers did not see (`storage.verify`).

Workers are forked: verify is a command-line pass, and a fork shares the
loaded code. Each worker gets fresh connections (`Engine.dispose(close=False)`,
as SQLAlchemy documents for forked processes) and never touches the caller's.
"""

from __future__ import annotations

import multiprocessing
import re
import signal
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import util
from typing import NamedTuple

from sqlalchemy import Connection, Engine, text

from storage.verify_rows import Finding, StoredNodes
from storage.verify_scan import EventScan

CHUNK_LEVEL = 14
"""Chunks of 16,384 events: about a tenth of a second of work each (at 125,000
events/s a process), so the processes stay busy to the end and a chunk's result
is small next to it."""
AHEAD = 3
"""Chunks handed out per worker beyond the one being folded."""

_SNAPSHOT_ID = re.compile(r"[0-9A-Fa-f]+(-[0-9A-Fa-f]+)+")


class Chunk(NamedTuple):
    stream: str
    first: int
    """Events before this chunk: a multiple of 2**level."""
    last: int
    """The seq of its last event."""
    level: int
    head_seq: int
    stops: tuple[int, ...]
    """Checkpoint sizes strictly inside (first, last): the frontier is wanted there."""
    page: int


class ChunkResult(NamedTuple):
    size: int
    """Events up to this seq were found intact."""
    frontier: list[bytes]
    """The chunk's part of the frontier at `size` (a whole chunk: its root)."""
    stops: list[tuple[int, list[bytes]]]
    """That part at each stop reached."""
    redacted: dict[str, tuple[int, str]]
    """Erased events of the chunk no later redaction event in it names."""
    targets: list[str]
    """The event ids its redaction events name."""
    problem: Finding | None


def can_fork(engine: Engine) -> bool:
    """Whether workers can open this store themselves (not an in-memory SQLite one)."""
    if engine.dialect.name != "sqlite":
        return True
    database = engine.url.database
    return bool(database) and database != ":memory:" and "mode=memory" not in str(engine.url)


def export_snapshot(conn: Connection) -> str | None:
    """The id other PostgreSQL sessions can read `conn`'s snapshot with (None on SQLite)."""
    if conn.dialect.name != "postgresql":
        return None
    return str(conn.execute(text("SELECT pg_export_snapshot()")).scalar_one())


class ChunkPool:
    """Worker processes that check chunks, each in one read transaction of its own.

    A `concurrent.futures` pool rather than `multiprocessing.Pool`: when a worker
    dies (killed, out of memory) the chunks it held fail with `BrokenProcessPool`
    instead of waiting forever.
    """

    def __init__(self, engine: Engine, jobs: int, snapshot_id: str | None) -> None:
        if snapshot_id is not None and not _SNAPSHOT_ID.fullmatch(snapshot_id):
            raise RuntimeError(f"unexpected snapshot id {snapshot_id!r}")
        self._jobs = jobs
        self._pool = ProcessPoolExecutor(
            jobs,
            mp_context=multiprocessing.get_context("fork"),
            initializer=_start_worker,
            initargs=(engine, snapshot_id),
        )
        self._done = True

    def check(self, chunks: Iterable[Chunk]) -> Iterator[tuple[Chunk, ChunkResult]]:
        """Each chunk with its result, in order; a few chunks are checked ahead."""
        window: deque[tuple[Chunk, Future[ChunkResult]]] = deque()
        self._done = False
        for chunk in chunks:
            window.append((chunk, self._pool.submit(_check_chunk, chunk)))
            if len(window) > self._jobs * AHEAD:
                chunk, pending = window.popleft()
                yield chunk, pending.result()
        while window:
            chunk, pending = window.popleft()
            yield chunk, pending.result()
        self._done = True

    def close(self) -> None:
        """Let the workers end their transactions and exit; chunks not started yet
        are dropped (a caller that stopped at a problem does not need them)."""
        self._pool.shutdown(wait=True, cancel_futures=not self._done)


_worker_conn: Connection | None = None


def _start_worker(engine: Engine, snapshot_id: str | None) -> None:
    global _worker_conn
    # A terminal's Ctrl-C reaches every process of the group: the caller stops the
    # workers (ChunkPool.close), and a worker does not print a traceback of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    engine.dispose(close=False)
    conn = engine.connect()
    if conn.dialect.name == "postgresql":
        conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
    conn.begin()
    if snapshot_id is not None:
        # Checked against _SNAPSHOT_ID by the caller; SET takes no bound parameters.
        conn.exec_driver_sql(f"SET TRANSACTION SNAPSHOT '{snapshot_id}'")
    _worker_conn = conn
    util.Finalize(None, conn.close, exitpriority=10)


def _check_chunk(chunk: Chunk) -> ChunkResult:
    assert _worker_conn is not None, "a chunk outside a worker"
    return check_chunk(_worker_conn, chunk)


def check_chunk(conn: Connection, chunk: Chunk) -> ChunkResult:
    """Check `chunk`'s events, and its nodes up to its level, in `conn`'s snapshot."""
    scan = EventScan(
        conn, chunk.stream, chunk.page, chunk.head_seq, size=chunk.first, top=chunk.level
    )
    nodes = StoredNodes(conn, chunk.stream, chunk.page, first_leaf=chunk.first)
    stops = iter(chunk.stops)
    reached: list[tuple[int, list[bytes]]] = []

    def at_stop(size: int, frontier: list[bytes]) -> tuple[Finding | None, int]:
        reached.append((size, list(frontier)))
        return None, next(stops, -1)

    problem = scan.run(
        nodes,
        # The first chunk reads from seq 0 as a single pass does (a forged seq 0 is found).
        after_seq=chunk.first or None,
        last_seq=chunk.last,
        next_stop=next(stops, -1),
        at_stop=at_stop,
    )
    return ChunkResult(scan.size, scan.frontier, reached, scan.redacted, scan.targets, problem)
