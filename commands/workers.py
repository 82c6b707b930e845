"""`server.workers`: more processes serving the API on the daemon's port.

With `server.workers: N` (default 1) the API is served by N processes: the
daemon itself, which also captures every source, and N - 1 API workers. Every
process listens on the same address with SO_REUSEPORT, so the kernel spreads
new connections over them; each has its own store connections, group-commit
writer and reader, and their appends queue on the store's write lock
(`storage.engine.WriteLock`; PostgreSQL locks each stream's head row). Live
tails follow the store (`storage.bus.EventBus.follow`), so a tail served by any
process sees what every process stored.

Why: one Python process serving `GET /v1/events` keeps one core of this 2-core
machine busy and leaves the other 45 % idle (the GIL); two processes served
1.7-2.0 times as many requests (BENCHMARKS.md).

Workers are forked by a starter process that the daemon forks before it opens
anything (`WorkerPool`): the running daemon has threads (the writer, capture)
and open SQLite connections, which a fork would copy in whatever state they
were in. A worker that exits is started again, `RESTART_DELAY` seconds later;
the daemon's `/readyz` says so meanwhile. When the daemon stops, its workers get
SIGTERM (each drains its requests and writer, as the daemon does) and it waits
for them. When the daemon is killed, the starter stops the workers; when the
starter is killed too, each worker stops by itself within `PARENT_CHECK_SECONDS`.

Capture runs in the daemon only. Its status (what `/v1/streams`, `/readyz` and
`/metrics` show about capture) reaches the workers through a small JSON file the
daemon rewrites every second (`StatusFile`), so every process answers alike; a
worker whose file is older than `STALE_AFTER` seconds is not ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import multiprocessing
import multiprocessing.process
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from commands.common import log, open_store, setup_logging
from config import Config
from web.keys import CaptureStatus

RESTART_DELAY = 1.0
"""Seconds between the daemon's checks on its workers (and rewrites of the status file)."""
STALE_AFTER = 5.0
PARENT_CHECK_SECONDS = 1.0
STOP_TIMEOUT = 30.0


def listen_sockets(host: str, port: int) -> list[socket.socket]:
    """Listening sockets on every address of `host`, all on one port (the first's
    when `port` is 0), with SO_REUSEPORT so that other processes can listen too."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _name, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock.bind(address)
            sock.listen(1024)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class StatusFile:
    """Capture's status as the daemon last saw it, for its API workers."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, status: Mapping[str, Mapping[str, Any]]) -> None:
        """Replace the file whole (a reader never sees half of it)."""
        document = {
            name: {key: value.isoformat() if isinstance(value, datetime) else value
                   for key, value in source.items()}
            for name, source in status.items()
        }
        partial = self.path.with_suffix(".partial")
        partial.write_bytes(json.dumps(document).encode())
        os.replace(partial, self.path)

    def read(self) -> dict[str, dict[str, Any]]:
        try:
            document: dict[str, dict[str, Any]] = json.loads(self.path.read_bytes())
        except (OSError, ValueError):
            return {}
        for source in document.values():
            if source.get("last_capture_at") is not None:
                source["last_capture_at"] = datetime.fromisoformat(source["last_capture_at"])
        return document

    def stale(self) -> str | None:
        """Why the status cannot be trusted, or None."""
        try:
            age = time.time() - self.path.stat().st_mtime
        except OSError:
            return "no capture status from the daemon"
        if age > STALE_AFTER:
            return f"no capture status from the daemon for {age:.0f} s"
        return None


class WorkerPool:
    """The daemon's API workers, forked by a starter process: started with the app,
    started again when one exits, stopped (and waited for) when the app stops.

    Make it before the daemon opens its store or starts a thread: the starter is
    forked there and then, single-threaded, with every module the API needs already
    imported, and each worker is forked from it in turn. All of them share those
    pages with the daemon (`gc.freeze()` first, so that collections do not copy
    them), and no worker inherits a lock another thread held or a connection the
    daemon uses.
    """

    def __init__(self, config: Config, count: int) -> None:
        self._count = count
        self._port = 0
        self._capture_status: CaptureStatus | None = None
        self._status_file: StatusFile | None = None
        self._workers: dict[int, tuple[int, bool, int | None]] = {}
        """index -> (pid, alive, exit code), as the starter last reported."""
        self._stopping = False
        self._lock = threading.Lock()
        gc.freeze()
        self._conn, starter_end = multiprocessing.Pipe()
        fork = multiprocessing.get_context("fork")
        self._starter = fork.Process(
            target=_starter, args=(starter_end, self._conn, config, os.getpid()),
            name="auditor-api-starter",
        )
        self._starter.start()
        starter_end.close()

    def serve_on(self, port: int, capture_status: CaptureStatus | None) -> None:
        """Where the workers listen, and capture's status to show them."""
        self._port = port
        self._capture_status = capture_status

    def running(self) -> int:
        return sum(1 for _pid, alive, _code in self._workers.values() if alive)

    async def readiness(self) -> str | None:
        running = self.running()
        if running < self._count:
            return f"{running} of {self._count} API workers running"
        return None

    async def run(self, app: Any) -> AsyncIterator[None]:
        """A cleanup context for the daemon's app."""
        loop = asyncio.get_running_loop()
        folder = Path(tempfile.mkdtemp(prefix="auditor-"))  # mode 0700
        try:
            if self._capture_status is not None:
                self._status_file = StatusFile(folder / "capture.json")
                self._status_file.write(self._capture_status())
            for index in range(1, self._count + 1):
                await loop.run_in_executor(None, self._start, index)
            supervisor = asyncio.create_task(self._supervise())
            yield
            self._stopping = True
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
            await loop.run_in_executor(None, self.close)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    async def stop_restarting(self, _app: Any) -> None:
        """The app's `on_shutdown`: workers exiting from now on stay stopped."""
        self._stopping = True

    def close(self) -> None:
        """Stop every worker (SIGTERM, then SIGKILL after `STOP_TIMEOUT`) and the starter."""
        with contextlib.suppress(OSError, EOFError):
            self._call(("stop",))
        self._conn.close()
        self._starter.join(STOP_TIMEOUT + 5)
        if self._starter.is_alive():
            self._starter.kill()
            self._starter.join()

    def _call(self, request: tuple[Any, ...]) -> Any:
        with self._lock:
            self._conn.send(request)
            return self._conn.recv()

    def _start(self, index: int) -> None:
        status_path = self._status_file.path if self._status_file is not None else None
        pid = self._call(("start", index, self._port, status_path))
        self._workers[index] = (pid, True, None)
        log.info("API worker %d started (pid %s)", index, pid)

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(RESTART_DELAY)
            if self._status_file is not None and self._capture_status is not None:
                self._status_file.write(self._capture_status())
            try:
                self._workers = await loop.run_in_executor(None, self._call, ("status",))
            except (OSError, EOFError):
                log.error("the API workers' starter process is gone; workers are not restarted")
                self._workers = {}
                return
            for index, (pid, alive, code) in sorted(self._workers.items()):
                if alive or self._stopping:
                    continue
                log.error(
                    "API worker %d (pid %s) exited with code %s; starting it again",
                    index, pid, code,
                )
                await loop.run_in_executor(None, self._start, index)


def _starter(conn: Connection, daemon_end: Connection, config: Config, daemon_pid: int) -> None:
    """The starter process: forks workers on the daemon's request, reports on them,
    stops them; stops them too when the daemon is gone (its end of `conn` closes),
    and then removes the status file's folder, which a killed daemon left behind."""
    daemon_end.close()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C: the daemon decides
    fork = multiprocessing.get_context("fork")
    workers: dict[int, multiprocessing.process.BaseProcess] = {}
    status_folder: Path | None = None
    try:
        while True:
            request = conn.recv()
            if request[0] == "start":
                _, index, port, status_path = request
                if status_path is not None:
                    status_folder = Path(status_path).parent
                worker = fork.Process(
                    target=_worker, name=f"auditor-api-{index}",
                    args=(conn, config, port, daemon_pid, status_path),
                )
                worker.start()
                workers[index] = worker
                conn.send(worker.pid)
            elif request[0] == "status":
                conn.send({index: (w.pid, w.is_alive(), w.exitcode)
                           for index, w in workers.items()})
            elif request[0] == "stop":
                _stop(workers.values())
                conn.send(None)
                return
    except (EOFError, OSError):  # the daemon is gone
        _stop(workers.values())
        if status_folder is not None:
            # The daemon's own folder (`WorkerPool.run`), for the status file alone.
            shutil.rmtree(status_folder, ignore_errors=True)


def _stop(workers: Iterable[multiprocessing.process.BaseProcess]) -> None:
    workers = list(workers)
    for worker in workers:
        if worker.is_alive():
            worker.terminate()  # SIGTERM: aiohttp's graceful shutdown
    for worker in workers:
        worker.join(STOP_TIMEOUT)
        if worker.is_alive():
            log.error("API worker (pid %s) did not stop in %.0f s; killing it",
                      worker.pid, STOP_TIMEOUT)
            worker.kill()
            worker.join()


def _worker(starter_conn: Connection, config: Config, port: int, daemon_pid: int,
            status_path: Path | None) -> None:
    # The starter's end of the pipe is not the worker's: holding it open would hide
    # the starter's exit from the daemon.
    starter_conn.close()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    serve_worker(config, port, daemon_pid, status_path)


def serve_worker(config: Config, port: int, daemon_pid: int, status_path: Path | None) -> None:
    """An API worker's whole life (in the worker process): the daemon's app without
    capture, on its own socket of the daemon's port."""
    from aiohttp import web

    from commands.serve import attach_store_watch, settle_collector, show_capture_status
    from web.app import create_app

    setup_logging()
    store = open_store(config)
    try:
        app = create_app(config, store)
        attach_store_watch(app, config)
        if status_path is not None:
            status = StatusFile(status_path)
            publisher = show_capture_status(app, status.read, stale=status.stale)

            async def publish(_app: Any) -> AsyncIterator[None]:
                async with publisher():
                    yield

            app.cleanup_ctx.append(publish)
        app.cleanup_ctx.append(_stop_with_daemon(daemon_pid))
        sockets = listen_sockets(config.server.host, port)
        settle_collector()
        web.run_app(app, sock=sockets, print=None, access_log=None)
    finally:
        store.close()


def _stop_with_daemon(daemon_pid: int) -> Any:
    """Stop gracefully once the daemon is gone: the starter that forked this worker
    stops its workers and exits when the daemon does; this is for a starter that
    was killed too."""
    parent = os.getppid()

    async def watch(_app: Any) -> AsyncIterator[None]:
        async def check() -> None:
            while True:
                await asyncio.sleep(PARENT_CHECK_SECONDS)
                if os.getppid() != parent or not _alive(daemon_pid):
                    break
            log.warning("the daemon (pid %d) is gone: stopping this API worker", daemon_pid)
            os.kill(os.getpid(), signal.SIGTERM)

        task = asyncio.create_task(check())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return watch


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
