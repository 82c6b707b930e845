"""Engines for the audit store: SQLite (WAL) by default, PostgreSQL through psycopg 3.

SQLite gets two engines on the same file: writes start with `BEGIN IMMEDIATE`
(they take the write lock up front instead of failing to upgrade a read lock
half way through), reads with a plain deferred `BEGIN`, so a long read never
blocks the writer under WAL. PostgreSQL uses one pooled engine for both.
"""

from __future__ import annotations

import contextlib
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


@dataclass(frozen=True)
class Engines:
    write: Engine
    read: Engine
    statements: StatementReader | None = None
    """SQLite files only: plain per-thread connections for single-statement reads."""

    @property
    def dialect(self) -> str:
        return self.write.dialect.name

    def dispose(self) -> None:
        self.write.dispose()
        if self.read is not self.write:
            self.read.dispose()
        if self.statements is not None:
            self.statements.close()


def create_engines(url: str) -> Engines:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        statements = None
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
            if not parsed.query:  # URL options (mode=ro, …) are SQLAlchemy's to apply
                statements = StatementReader(database)
        return Engines(
            write=_sqlite_engine(url, begin="BEGIN IMMEDIATE"),
            read=_sqlite_engine(url, begin="BEGIN"),
            statements=statements,
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
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql(begin)

    return engine
