"""Wake the poller as soon as the billing database changes on disk.

watchdog watches the folder of the database for writes to the database file,
its `-wal` and its `-journal`; each one calls `wake` (from watchdog's own
thread, so `wake` must be thread-safe, e.g. `loop.call_soon_threadsafe`).
The APScheduler fallback poll covers file systems where no event arrives.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer


class _DatabaseFileHandler(FileSystemEventHandler):
    def __init__(self, names: frozenset[str], wake: Callable[[], None]) -> None:
        self._names = names
        self._wake = wake

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            return
        path = os.fsdecode(event.src_path)
        if os.path.basename(path) in self._names:
            self._wake()


class DatabaseWatcher:
    """Calls `wake` whenever one of the databases (or its WAL/journal) is written."""

    def __init__(self) -> None:
        self._observer = Observer()
        self._started = False

    def watch(self, database: Path, wake: Callable[[], None]) -> None:
        # Not "-shm": readers touch it too, and would wake the poller for nothing.
        names = frozenset(database.name + suffix for suffix in ("", "-wal", "-journal"))
        handler = _DatabaseFileHandler(names, wake)
        self._observer.schedule(handler, str(database.parent), recursive=False)

    def start(self) -> None:
        self._observer.daemon = True
        self._observer.start()
        self._started = True

    def stop(self) -> None:
        if self._started:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._started = False
