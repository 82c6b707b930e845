"""Engines for the audit store: SQLite (WAL) by default, PostgreSQL through psycopg 3.

SQLite gets two engines on the same file: writes start with `BEGIN IMMEDIATE`
(they take the write lock up front instead of failing to upgrade a read lock
half way through), reads with a plain deferred `BEGIN`, so a long read never
blocks the writer under WAL; when other processes append to the same file, every
write transaction is taken under `Engines.exclusive()` (`WriteLock`). PostgreSQL
uses one pooled engine for both.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import ConnectionPoolEntry

SQLITE_BUSY_TIMEOUT_MS = 10_000
WAL_CHECKPOINT_PAGES = 16_384
"""Pages a SQLite store's WAL may hold before a commit folds it back into the file
(`wal_autocheckpoint`; SQLite's default is 1,000). A checkpoint writes each page
once, however many commits changed it in between, and the pages of the store's
indexes are changed by nearly every commit: plain sqlite3 writing 1,000-event
transactions with the keys of the batch-ingest benchmark into a 300,000-event
store, three alternating rounds, did 13,604 / 15,226 / 15,905 events/s at 1,000
pages, 21,778 / 21,418 / 20,429 at 10,000 and 23,788-26,913 at 20,000 (40,000
no better). 16,384 pages of 4 KiB is a WAL of about 64 MiB."""
WAL_SIZE_LIMIT = 96 * 1024 * 1024
"""Bytes a WAL is cut back to when it starts over (`journal_size_limit`): a long
read can hold a checkpoint back and let the WAL grow past its usual size."""


class StatementReader:
    """Single-statement reads of a SQLite file on plain sqlite3 connections, one per
    thread, in autocommit: a lone SELECT runs in a snapshot of its own, so it needs
    no transaction around it.

    For `AuditStore.query_rows` (the pages of `GET /v1/events`, on the event loop or
    the reader thread): SQLAlchemy's pool checkout, `BEGIN` and `COMMIT` around the
    query cost about 110 µs of a 50-event page's 550 (the query itself ~230 µs).
    """

    def __init__(self, database: str) -> None:
        self._database = database
        self._local = threading.local()
        self._lock = threading.Lock()
        self._opened: list[sqlite3.Connection] = []
        self._closed = False

    def rows(self, sql: str, params: Sequence[Any]) -> list[Any]:
        """The rows of `sql` (sqlite3's `?` marks); a driver error is raised as
        `DBAPIError`, as `driver_rows` does, without the parameters."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        try:
            if conn is None:
                conn = self._open()
            return conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise DBAPIError.instance(sql, None, exc, sqlite3.Error) from exc

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._database, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA query_only = 1")
        with self._lock:
            if self._closed:
                conn.close()
                raise sqlite3.ProgrammingError("the store is closed")
            self._opened.append(conn)
        self._local.conn = conn
        return conn

    def close(self) -> None:
        """Close every thread's connection; later reads fail."""
        with self._lock:
            self._closed = True
            opened, self._opened = self._opened, []
        for conn in opened:
            conn.close()


class WriteLock:
    """One write transaction at a time on a SQLite store file, across the threads of
    this process and across the processes that open the store `shared` (the daemon
    and API workers of `server.workers`, and commands run with that config), handed
    over by the kernel the moment it is released.

    SQLite serialises writers by itself, but a writer that finds the file locked
    sleeps in its busy handler (1, 2, 5, 10, … ms) and tries again: two processes
    posting to one store had POST p99 of 370-380 ms that way, against 24-31 ms
    with this lock taken first (wrk, 64 connections, two daemons on one port).
    A `flock` on `<store>-lock` beside the file: held by an open file, so a process
    that dies drops it, and a thread lock in front of it, because a `flock` does not
    exclude two threads sharing one descriptor.

    Only for stores opened `shared` (the daemon and workers of `server.workers`):
    each `flock` call gives up the GIL, and in a daemon whose event loop keeps it
    busy the writer thread then waits to get it back, twice an append. One process
    alone, POST one event per request, 64 connections, without and with the lock
    alternating: 3,634 / 3,305 / 3,419 / 3,206 against 3,423 / 2,932 / 3,150 / 3,075
    req/s. Processes that do not take it (a command, a daemon without workers)
    still write safely: SQLite serialises them, with its busy sleeps.
    """

    def __init__(self, database: str) -> None:
        self.path = f"{database}-lock"
        self._thread_lock = threading.Lock()
        self._fd: int | None = None

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        with self._thread_lock:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX)  # blocks without the GIL
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        with self._thread_lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


@dataclass(frozen=True)
class Engines:
    write: Engine
    read: Engine
    statements: StatementReader | None = None
    """SQLite files only: plain per-thread connections for single-statement reads."""
    write_lock: WriteLock | None = None
    """SQLite files opened `shared` only: taken around every write transaction."""

    def exclusive(self) -> contextlib.AbstractContextManager[None]:
        """Hold around a write transaction: the store file's `WriteLock` (SQLite
        files), nothing otherwise (PostgreSQL locks the rows a transaction writes)."""
        return self.write_lock.hold() if self.write_lock is not None else contextlib.nullcontext()

    @property
    def dialect(self) -> str:
        return self.write.dialect.name

    def dispose(self) -> None:
        self.write.dispose()
        if self.read is not self.write:
            self.read.dispose()
        if self.statements is not None:
            self.statements.close()
        if self.write_lock is not None:
            self.write_lock.close()


def sqlite_file(url: str) -> str | None:
    """The file of a SQLite store URL that Auditor opens itself too (its own readers,
    the write lock, another process's connections), or None: not SQLite, in memory,
    or with URL options (mode=ro, …), which are SQLAlchemy's to apply."""
    parsed = make_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    return None if parsed.query else database


def create_engines(url: str, *, shared: bool = False) -> Engines:
    """The store's engines; `shared` when other processes append to it too (a SQLite
    file then gets a `WriteLock`)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        statements = write_lock = None
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        if (file := sqlite_file(url)) is not None:
            statements = StatementReader(file)
            write_lock = WriteLock(file) if shared else None
        return Engines(
            write=_sqlite_engine(url, begin="BEGIN IMMEDIATE"),
            read=_sqlite_engine(url, begin="BEGIN"),
            statements=statements,
            write_lock=write_lock,
        )
    if parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        engine = create_engine(parsed, pool_size=8, max_overflow=8, pool_pre_ping=True)
        return Engines(write=engine, read=engine)
    raise ValueError(f"unsupported store URL scheme {parsed.drivername!r}")


def driver_rows(conn: Connection, sql: str, params: Any) -> list[Any]:
    """Run `sql` on the driver connection under `conn` (inside its transaction, so in
    the same snapshot) and return the driver's plain tuples ([] for a statement
    without results).

    For the hot paths (a page of events, verify's pages, the small statements of
    every append): SQLAlchemy's statement handling and `Row` objects cost more there
    than the SQL itself. `sql` uses the driver's parameter marks (`?` for sqlite3,
    `%s` for psycopg: `param_mark`). A driver error is raised as SQLAlchemy would
    have raised it (`DBAPIError`), without the parameters in its message.
    """
    with driver_cursor(conn, sql) as cursor:
        cursor.execute(sql, params)
        return list(cursor.fetchall()) if cursor.description is not None else []


@contextlib.contextmanager
def driver_cursor(conn: Connection, sql: str) -> Iterator[Any]:
    """A cursor of the driver connection under `conn`; a driver error inside the block
    is raised as SQLAlchemy would have raised it (`DBAPIError`, which callers catch as
    `SQLAlchemyError`), without parameters in its message. `sql` names the statement."""
    driver = conn.connection.driver_connection
    assert driver is not None
    dbapi = conn.dialect.loaded_dbapi
    cursor = driver.cursor()
    try:
        yield cursor
    except dbapi.Error as exc:
        raise DBAPIError.instance(sql, None, exc, dbapi.Error, dialect=conn.dialect) from exc
    finally:
        cursor.close()


def param_mark(conn: Connection) -> str:
    """The driver's parameter mark for `driver_rows`."""
    return "?" if conn.dialect.name == "sqlite" else "%s"


def _sqlite_engine(url: str, *, begin: str) -> Engine:
    engine = create_engine(url, connect_args={"check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _record: ConnectionPoolEntry) -> None:
        # Python's sqlite3 would otherwise open transactions on its own terms;
        # we issue BEGIN ourselves below.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        # FULL: an acknowledged event survives a power cut, not just a crash.
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute(f"PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_PAGES}")
        cursor.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql(begin)

    return engine
