"""Wake the poller as soon as the billing database changes on disk.

The database file, its `-wal` and its `-journal` are watched (not `-shm`: readers
touch it too, and would wake the poller for nothing). `wake` is always called on
the event loop that ran `start()`.

On Linux the inotify descriptor (watchdog's binding of it) is read by the event
loop itself. watchdog's `Observer` reads it in a thread, hands each event to an
emitter thread and then to a dispatcher thread, and the wake-up still has to get
back to the loop: four hand-offs of the GIL for every write to any file in the
folder. Measured at 500 changes/s with the API polled at the same time (commit
to visible in `GET /v1/events`, two runs each): p50 16.1 / 13.6 ms and p99 39 /
32 ms through the Observer, 10.6 / 9.6 ms and 25 / 23 ms on the loop. Where
inotify is missing, the Observer does the job (and APScheduler's fallback poll
covers file systems where no event arrives at all).

A write event can come before the commit it belongs to is visible: SQLite writes
the WAL frames (the event), may fsync, and only then publishes the commit in the
`-shm` index, which raises no event. A drain that ran in between would find
nothing and wait for the next change, so every burst of events also wakes the
poller once more, `SETTLE_SECONDS` after its last event.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

log = logging.getLogger(__name__)

SETTLE_SECONDS = 0.01
"""The extra wake-up after a burst of file events (an fsync'd commit publishes within it)."""

_SUFFIXES = ("", "-wal", "-journal")
# inotify's event bits (linux/inotify.h; part of the kernel's ABI).
_IN_MODIFY = 0x2
_IN_CLOSE_WRITE = 0x8
_IN_MOVED_TO = 0x80
_IN_CREATE = 0x100
_IN_DELETE = 0x200  # a rollback journal's deletion ends its commit
_IN_IGNORED = 0x8000  # the watched file is gone (and so is its watch)
_FOLDER_MASK = _IN_CREATE | _IN_DELETE | _IN_MOVED_TO
_FILE_MASK = _IN_MODIFY | _IN_CLOSE_WRITE


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


class _Wakes:
    """One database's wake-up, called on the loop: now, and once more after the burst."""

    def __init__(self, loop: asyncio.AbstractEventLoop, wake: Callable[[], None]) -> None:
        self._loop = loop
        self._wake = wake
        self._settle: asyncio.TimerHandle | None = None

    def __call__(self) -> None:
        self._wake()
        if self._settle is not None:
            self._settle.cancel()
        self._settle = self._loop.call_later(SETTLE_SECONDS, self._settled)

    def _settled(self) -> None:
        self._settle = None
        self._wake()

    def cancel(self) -> None:
        if self._settle is not None:
            self._settle.cancel()
            self._settle = None


class DatabaseWatcher:
    """Calls `wake` (on the event loop) whenever one of the databases, its WAL or its
    rollback journal is written."""

    def __init__(self) -> None:
        self._databases: list[tuple[Path, Callable[[], None]]] = []
        self._wakes: list[_Wakes] = []
        self._inotify: _LoopInotify | None = None
        self._observer: BaseObserver | None = None

    def watch(self, database: Path, wake: Callable[[], None]) -> None:
        self._databases.append((database, wake))

    def start(self) -> None:
        """Start watching; call on the event loop that `wake` must run on."""
        loop = asyncio.get_running_loop()
        self._wakes = [_Wakes(loop, wake) for _, wake in self._databases]
        watched = [(db, wakes) for (db, _), wakes in zip(self._databases, self._wakes, strict=True)]
        self._inotify = _LoopInotify.open(loop, watched)
        if self._inotify is not None:
            return
        observer = Observer()
        for database, wakes in watched:
            names = frozenset(database.name + suffix for suffix in _SUFFIXES)
            handler = _DatabaseFileHandler(names, _threadsafe(loop, wakes))
            observer.schedule(handler, str(database.parent), recursive=False)
        observer.daemon = True
        observer.start()
        self._observer = observer

    def stop(self) -> None:
        for wakes in self._wakes:
            wakes.cancel()
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None


def _threadsafe(loop: asyncio.AbstractEventLoop, wake: Callable[[], None]) -> Callable[[], None]:
    """`wake` made callable from watchdog's thread."""

    def call() -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed while stopping
            loop.call_soon_threadsafe(wake)

    return call


class _LoopInotify:
    """An inotify descriptor (watchdog's binding) read by the event loop.

    Writes are watched on the files themselves (the database, its `-wal` and its
    `-journal`, each as soon as it exists), their folder only for files appearing,
    disappearing or being renamed there. Watching the folder for writes had the
    kernel report every write to every file in it, to be read and dropped here: a
    busy store or billing database beside the watched one cost each watching
    process 6-7 % of a core (`bench/analysis.md`, session 12)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        fd: int,
        folders: dict[int, list[tuple[Path, frozenset[bytes], _Wakes]]],
    ) -> None:
        self._loop = loop
        self._fd = fd
        self._folders = folders
        self._files: dict[int, list[_Wakes]] = {}
        self._everyone = [wakes for watches in folders.values() for _, _, wakes in watches]
        from watchdog.observers.inotify_c import InotifyFD, inotify_add_watch

        self._parse = InotifyFD._parse_event_buffer
        self._add_watch = inotify_add_watch

    @classmethod
    def open(
        cls, loop: asyncio.AbstractEventLoop, watched: list[tuple[Path, _Wakes]]
    ) -> _LoopInotify | None:
        """None where inotify is not available (not Linux, or out of instances)."""
        try:
            from watchdog.observers.inotify_c import inotify_add_watch, inotify_init
        except Exception:  # watchdog raises its own errors where libc has no inotify
            return None
        fd = inotify_init()
        if fd < 0:
            reason = os.strerror(ctypes.get_errno())
            log.warning("inotify unavailable (%s); watching through threads", reason)
            return None
        os.set_blocking(fd, False)
        os.set_inheritable(fd, False)
        folders: dict[int, list[tuple[Path, frozenset[bytes], _Wakes]]] = {}
        for database, wakes in watched:
            wd = inotify_add_watch(fd, os.fsencode(database.parent), _FOLDER_MASK)
            if wd < 0:
                os.close(fd)
                log.warning("inotify cannot watch %s; watching through threads", database.parent)
                return None
            names = frozenset(os.fsencode(database.name + suffix) for suffix in _SUFFIXES)
            folders.setdefault(wd, []).append((database.parent, names, wakes))
        watcher = cls(loop, fd, folders)
        for database, wakes in watched:
            for suffix in _SUFFIXES:
                watcher._watch_file(database.parent / (database.name + suffix), wakes)
        loop.add_reader(fd, watcher._readable)
        return watcher

    def _watch_file(self, path: Path, wakes: _Wakes) -> None:
        """Watch `path` for writes if it exists (when it does not, its folder's watch
        reports its creation, and it is watched from then on)."""
        wd = self._add_watch(self._fd, os.fsencode(path), _FILE_MASK)
        if wd < 0:
            return  # not there (yet, or any more)
        listeners = self._files.setdefault(wd, [])
        if wakes not in listeners:
            listeners.append(wakes)

    def _readable(self) -> None:
        try:
            buffer = os.read(self._fd, 64 * 1024)
        except BlockingIOError:
            return
        woken: set[int] = set()
        appeared: list[tuple[Path, _Wakes]] = []

        def wake(wakes: _Wakes) -> None:
            if id(wakes) not in woken:
                woken.add(id(wakes))
                wakes()

        for wd, mask, _cookie, name in self._parse(buffer):
            if wd == -1:  # the kernel's queue overflowed: events were lost, wake everyone
                for wakes in self._everyone:
                    wake(wakes)
                continue
            for wakes in self._files.get(wd, ()):
                wake(wakes)
            if mask & _IN_IGNORED:  # the file is gone: its watch with it
                self._files.pop(wd, None)
            for folder, names, wakes in self._folders.get(wd, ()):
                if name in names:
                    wake(wakes)
                    if mask & (_IN_CREATE | _IN_MOVED_TO):
                        appeared.append((folder / os.fsdecode(name), wakes))
        for path, wakes in appeared:
            self._watch_file(path, wakes)

    def close(self) -> None:
        self._loop.remove_reader(self._fd)
        os.close(self._fd)
