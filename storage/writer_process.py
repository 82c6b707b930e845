"""The API's group commit in a store-writer process of its own (SQLite file stores).

Why a process: with `GroupCommitWriter` the commit runs in a thread of the
daemon, and the daemon's event loop and that thread take turns at one GIL.
Under `POST /v1/events` (64 connections, one event a request) the loop used
66 % of a core and the writer thread 38 %, 104 % of the machine's 200 %, each
waiting for the other to hand the GIL back. With the commit in a child process
both run at once (loop 86 %, child 55 %). Old and new daemons alternating, four
8-s rounds: medians 4,097 -> 6,095 requests/s, p99 27.5 -> 21.9 ms; batch
ingest (1,000 events a post, 4 connections) 13,500 -> 14,600 events/s.

The contract is `GroupCommitWriter`'s (`storage.writer.Writer`): `append`
returns once the events are committed, concurrent appends share one
transaction, and a request that fails a shared transaction is retried alone.

How: a socketpair to a child running `python -m storage.writer_process FD`.
Frames are a 4-byte length and a pickle. The store URL is the first frame (never
on a command line, where `ps` would show its password); the child answers
"ready". The daemon sends the appends gathered in one turn of its event loop as
one frame; the child commits every frame that has arrived (up to
`MAX_EVENTS_PER_COMMIT` events) in one transaction and answers each request
with what only the store knows: each event's position, seq, record time and
hash. The daemon rebuilds the stored events from the events it sent
(`store.created_event`) and tells the store's commit listeners.

Work can also be `Submitted` unparsed (`submit`): the child runs its codec to
turn it into a request, commits it with the rest and answers with what the codec
makes of the stored events. `POST /v1/events` sends small bodies so (`web.ingest`):
the child then parses, validates and serializes, and the daemon's loop, the
bottleneck under one-event posts, only does HTTP. Old and new daemons
alternating, six 8-s rounds at 64 connections: medians 2,807 -> 3,748 requests/s
(1.34 times; every round's pair 1.17-1.56 times) on a machine with a third of
its CPU stolen. Batches stay parsed on the loop, which parses one while the
child commits the one before: parsed in the child, 1,000-event batches at 4
connections went from 14,370 to 10,165 events/s.

The child starts with the first append, which waits for it (about 0.3 s here),
or earlier with `warm()`: a daemon that captures starts it with capture.

The child ignores SIGINT and SIGTERM (a Ctrl-C reaches the whole process group:
the daemon drains its requests through the child before it closes it) and
exits when its socket closes, so it never outlives a daemon that was killed.
If the child dies, the requests it held fail with `WriterLost` (they may or may
not be stored) and the next append, or capture's next caught-up read (`warm`),
starts another; capture's caught-up batches go through its thread meanwhile
(`ready` is false).

Capture drains a backlog through a thread writer of its own: a poller appends
one batch at a time, and sending a batch to the child and rebuilding its events
cost more than the GIL hand-offs it saves (a 60,000-change drain: 14,500-15,600
changes/s through a thread, 11,000-11,500 through the child; end to end, 0.46-0.47
of the raw ceiling against 0.51). The small batches of a poller that has caught
up come here, where their commit does not wait for the API at the daemon's GIL
(`cdc.poller.ShadowPoller.poll_once`).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import pickle
import signal
import socket
import struct
import sys
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, cast

from storage.engine import create_engines, sqlite_file
from storage.events import NewEvent
from storage.store import Appended, AppendRequest, AuditStore, Created, StorageError
from storage.writer import MAX_EVENTS_PER_COMMIT, GroupCommitWriter, Submitted, Writer

log = logging.getLogger(__name__)

FLUSH_EVENTS = 256
"""Events gathered in one loop turn that are sent at once rather than at the turn's
end: a batch post of 1,000 events then reaches the child while the loop still
parses the next requests, instead of the two taking turns (batch ingest, 4
connections, four alternating rounds: medians 11,475 events/s without this,
15,490 with)."""
STOP_TIMEOUT = 60.0
"""Seconds `stop` waits for the child to commit what it holds before killing it."""
_HEADER = struct.Struct("!I")
_READY = "ready"
_PROJECT = str(Path(__file__).resolve().parent.parent)


class WriterLost(StorageError):
    """The writer process died while it held a request: its events may or may not be stored."""


class ProcessWriter:
    """Group commit in a child process; `append` returns once the events are committed."""

    def __init__(self, store: AuditStore, url: str) -> None:
        self._store = store
        self._url = url
        self._child: _Child | None = None
        self._starting: asyncio.Task[_Child] | None = None
        self._running = False
        self.commits = 0

    @property
    def pid(self) -> int | None:
        """The running child's process id (None before it starts and after it dies)."""
        child = self._child
        return child.process.pid if child is not None and child.alive else None

    @property
    def ready(self) -> bool:
        """Whether the child runs: an append now would not wait for one to start."""
        return self.pid is not None

    @property
    def in_flight(self) -> int:
        """Requests sent to the child and not answered yet."""
        return self._child.in_flight if self._child is not None else 0

    async def start(self) -> None:
        """Take appends from now on. The child starts with the first one (which waits
        for it), or with `warm()`."""
        self._running = True

    def warm(self) -> None:
        """Start the child now, in the background, rather than with the first append
        (which would wait about 0.3 s for it): for capture, whose first changes
        should not."""
        child = self._child
        if not self._running or (child is not None and child.alive):
            return
        if self._starting is None or self._starting.done():
            self._begin_spawn()

    async def stop(self) -> None:
        """Commit what was sent, then close the child (it exits once its socket closes)."""
        self._running = False
        starting, self._starting = self._starting, None
        if starting is not None:
            starting.cancel()  # a start still under way ends its child itself
            await asyncio.wait([starting])
        child, self._child = self._child, None
        if child is not None:
            await child.close()

    async def append(self, request: AppendRequest) -> list[Appended]:
        return cast(list[Appended], await self._send(request))

    async def submit(self, work: Submitted) -> Any:
        """Have the child prepare `work`, commit it with whatever else arrived, and
        answer (`storage.writer.Submitted`). Fails as `append` does."""
        return await self._send(work)

    async def _send(self, item: AppendRequest | Submitted) -> Any:
        if not self._running:
            raise StorageError("the writer is not running")
        child = await self._ready()
        return await child.send(item)

    async def _ready(self) -> _Child:
        child = self._child
        if child is not None and child.alive:
            return child
        if self._starting is None or self._starting.done():  # never started, failed or died
            self._begin_spawn()
        assert self._starting is not None
        return await asyncio.shield(self._starting)

    def _begin_spawn(self) -> None:
        self._starting = asyncio.create_task(self._spawn(), name="store-writer-start")
        self._starting.add_done_callback(_log_start_failure)

    async def _spawn(self) -> _Child:
        old = self._child
        if old is not None:
            await old.close()
        child = await _Child.spawn(self._url, self._on_commit)
        self._child = child
        return child

    def _on_commit(self, created: list[Appended]) -> None:
        self.commits += 1
        self._store.notify_listeners(created)


class _Child:
    """One writer process and the requests it holds, in the order they were sent."""

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        on_commit: Callable[[list[Appended]], None],
    ) -> None:
        self.process = process
        self._reader = reader
        self._writer = writer
        self._on_commit = on_commit
        self._outbox: list[AppendRequest | Submitted] = []
        self._outbox_futures: list[asyncio.Future[Any]] = []
        self._outbox_events = 0
        self._flush_scheduled = False
        self._sent: deque[tuple[AppendRequest | Submitted, asyncio.Future[Any]]] = deque()
        self.alive = True
        self._loop = asyncio.get_running_loop()  # each call of that asks the OS for the pid
        self._answers = asyncio.create_task(self._read_answers(), name="store-writer-answers")

    @classmethod
    async def spawn(cls, url: str, on_commit: Callable[[list[Appended]], None]) -> _Child:
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PROJECT, env.get("PYTHONPATH")) if p)
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "storage.writer_process", str(theirs.fileno()),
                pass_fds=(theirs.fileno(),), stdin=asyncio.subprocess.DEVNULL, env=env,
            )  # fmt: skip
        except OSError as exc:
            ours.close()
            raise StorageError(f"cannot start the store writer: {exc.strerror}") from exc
        finally:
            theirs.close()
        writer: asyncio.StreamWriter | None = None
        try:
            reader, writer = await asyncio.open_unix_connection(sock=ours)
            writer.write(_frame(url))
            answer = await _read_frame(reader)
            if answer != _READY:
                raise StorageError(str(answer))
        except BaseException as exc:  # the child failed or exited, or stop() cancelled the start
            # The child sees the end of its socket and exits.
            if writer is not None:
                await _close_socket(writer)
            else:
                ours.close()
            await process.wait()
            if isinstance(exc, asyncio.IncompleteReadError | ConnectionError):
                raise StorageError("the store writer exited while starting") from exc
            raise
        log.info("store writer process %d ready", process.pid)
        return cls(process, reader, writer, on_commit)

    @property
    def in_flight(self) -> int:
        return len(self._sent)

    async def send(self, item: AppendRequest | Submitted) -> Any:
        future: asyncio.Future[Any] = self._loop.create_future()
        self._outbox.append(item)
        self._outbox_futures.append(future)
        self._outbox_events += _weight(item)
        if self._outbox_events >= FLUSH_EVENTS:
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._outbox:
            return
        requests, futures = self._outbox, self._outbox_futures
        self._outbox, self._outbox_futures, self._outbox_events = [], [], 0
        if not self.alive:
            _fail(futures, WriterLost("the store writer stopped; nothing was sent to it"))
            return
        self._sent.extend(zip(requests, futures, strict=True))
        self._writer.write(_frame(requests))

    async def _read_answers(self) -> None:
        try:
            while True:
                answers = await _read_frame(self._reader)
                self._settle(answers)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except Exception:
            log.exception("the store writer's answer could not be read")
        self.alive = False
        await _close_socket(self._writer)
        lost = [future for _, future in self._sent]
        self._sent.clear()
        if lost:
            log.error("the store writer process died holding %d request(s)", len(lost))
        _fail(lost, WriterLost("the store writer stopped during this commit"))

    def _settle(self, answers: list[Any]) -> None:
        created: list[Appended] = []
        for answer in answers:
            item, future = self._sent.popleft()
            if isinstance(answer, str):  # the store refused the commit
                _fail([future], StorageError(answer))
            elif isinstance(answer, Exception):  # a codec failed: a bug, answered 500
                _fail([future], answer)
            elif isinstance(item, Submitted):
                if not future.done():
                    future.set_result(answer)
            else:
                pairs = zip(item.events, answer, strict=True)
                results = [_rebuild(new, found) for new, found in pairs]
                created.extend(a for a in results if a.created)
                if not future.done():  # else cancelled: nobody waits, but listeners hear
                    future.set_result(results)
        self._on_commit(created)

    async def close(self) -> None:
        """Let the child finish what it holds, then wait for it (at most `STOP_TIMEOUT`)."""
        self._flush()
        if self._sent:
            await asyncio.wait([f for _, f in self._sent], timeout=STOP_TIMEOUT)
        await _close_socket(self._writer)
        try:
            await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT)
        except TimeoutError:
            log.error("the store writer process %d did not stop: killing it", self.process.pid)
            self.process.kill()
            await self.process.wait()
        await self._answers


async def _close_socket(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


def _rebuild(new: NewEvent, found: Any) -> Appended:
    """The stored event of `new`, from what the store answered: an `Appended` (not
    created: the stored event came whole), or a created one's position, seq, record
    time and hash (a `Created`, or those four as a tuple over the socket)."""
    if isinstance(found, Appended):
        return found
    position, seq, recorded_at, leaf = (
        (found.position, found.seq, found.recorded_at, found.hash)
        if isinstance(found, Created)
        else found
    )
    return Appended(AuditStore.created_event(new, seq, recorded_at, leaf), True, position)


def _fail(futures: Sequence[asyncio.Future[Any]], exc: Exception) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(exc)


def _log_start_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the store writer did not start: %s", task.exception())


def runs_apart(url: str) -> bool:
    """Whether the API's appends to the store at `url` go through a writer process:
    SQLite files (without URL options, which the child could not share a write lock
    under). In-memory SQLite lives in one process; on PostgreSQL live tails hear of
    commits in commit order only from a writer in the daemon itself (`storage.bus`)."""
    return sqlite_file(url) is not None


def writer_for(store: AuditStore, url: str, *, alone: bool) -> Writer:
    """The API's writer: a `ProcessWriter` where `runs_apart(url)` and the daemon
    serves alone (API workers each keep their thread writer), else `GroupCommitWriter`."""
    if alone and runs_apart(url):
        return ProcessWriter(store, url)
    return GroupCommitWriter(store)


# -- the child --------------------------------------------------------------


def _frame(value: Any) -> bytes:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


async def _read_frame(reader: asyncio.StreamReader) -> Any:
    (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    # Only the two ends of a socketpair made by the daemon ever write these frames.
    return pickle.loads(await reader.readexactly(size))  # noqa: S301


class _Frames:
    """The child's end of the socket: blocking reads, whole frames."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = bytearray()
        self._start = 0  # where the next frame begins in the buffer

    def send(self, value: Any) -> None:
        self._sock.sendall(_frame(value))

    def one(self) -> Any:
        while (frame := self._take()) is None:
            if not self._receive(block=True):
                raise EOFError
        return frame

    def batch(self, max_events: int) -> list[AppendRequest | Submitted] | None:
        """Every request that has arrived (at least one frame's), up to `max_events`
        events beyond the first frame; None once the daemon has closed the socket."""
        requests: list[AppendRequest | Submitted] = []
        events = 0
        while events < max_events:
            frame = self._take()
            if frame is None:
                if requests and not self._receive(block=False):
                    break
                if not requests and not self._receive(block=True):
                    return None
                continue
            requests.extend(frame)
            events += sum(_weight(item) for item in frame)
        return requests

    def _take(self) -> Any:
        start = self._start
        if len(self._buffer) - start < _HEADER.size:
            return None
        (size,) = _HEADER.unpack_from(self._buffer, start)
        end = start + _HEADER.size + size
        if len(self._buffer) < end:
            return None
        with memoryview(self._buffer) as view:
            frame = pickle.loads(view[start + _HEADER.size : end])  # noqa: S301 (see _read_frame)
        self._start = end
        return frame

    def _receive(self, *, block: bool) -> bool:
        """Read what the socket has (waiting for something when `block`); False when
        nothing came (at the end of the stream, or nothing waiting)."""
        try:
            data = self._sock.recv(1 << 20, 0 if block else socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        if self._start:
            del self._buffer[: self._start]
            self._start = 0
        self._buffer += data
        return bool(data)


def _weight(item: AppendRequest | Submitted) -> int:
    """Events an item counts for in a commit's size (a submitted body: one)."""
    return len(item.events) if isinstance(item, AppendRequest) else 1


def _commit(store: AuditStore, items: list[AppendRequest | Submitted]) -> list[Any]:
    """Commit every item that arrived in one transaction; one answer an item, in order.

    An `AppendRequest` is answered with its events' (position, seq, record time,
    hash), or the stored event where none was created; a `Submitted` with its
    codec's answer. A store error is answered with its message, a codec's failure
    with a `RuntimeError`."""
    answers: list[Any] = [None] * len(items)
    requests: list[AppendRequest] = []
    owners: list[tuple[int, ModuleType | None, Any]] = []  # (item, codec, codec's state)
    for index, item in enumerate(items):
        if isinstance(item, AppendRequest):
            requests.append(item)
            owners.append((index, None, None))
            continue
        try:
            prepared = _codec(item.codec)
            request, state = prepared.prepare(item.payload)
        except Exception as exc:
            answers[index] = _codec_failure(item.codec, exc)
            continue
        if request is None:
            answers[index] = state
        else:
            requests.append(request)
            owners.append((index, prepared, state))
    results = _append(store, requests)
    for (index, codec, state), request, result in zip(owners, requests, results, strict=True):
        if isinstance(result, str):
            answers[index] = result
        elif codec is None:
            # One record time a transaction: pickle sends that datetime once a frame.
            answers[index] = [
                (a.position, a.seq, a.recorded_at, a.hash) if isinstance(a, Created) else a
                for a in result
            ]
        else:
            try:
                appended = [_rebuild(new, a) for new, a in zip(request.events, result, strict=True)]
                answers[index] = codec.answer(state, appended)
            except Exception as exc:
                answers[index] = _codec_failure(codec.__name__, exc)
    return answers


def _append(
    store: AuditStore, requests: list[AppendRequest]
) -> list[list[Appended | Created] | str]:
    """`store.append`, retrying each request alone when a shared commit fails; a
    request that fails alone gets the error's message."""
    if not requests:
        return []
    try:
        return [*store.append_created(requests)]
    except Exception as exc:
        if len(requests) > 1:
            log.warning("group commit of %d requests failed; retrying one by one", len(requests))
            return [result for request in requests for result in _append(store, [request])]
        if not isinstance(exc, StorageError):
            log.exception("append failed")
            return [f"append failed: {exc.__class__.__name__}"]
        return [str(exc)]


_CODECS: dict[str, ModuleType] = {}


def _codec(name: str) -> ModuleType:
    # The name comes from the daemon, the only other end of this socketpair.
    codec = _CODECS.get(name)
    if codec is None:
        codec = _CODECS[name] = importlib.import_module(name)
    return codec


def _codec_failure(codec: str, exc: Exception) -> RuntimeError:
    log.error("codec %s failed", codec, exc_info=exc)
    return RuntimeError(f"the store writer's {codec} failed: {exc.__class__.__name__}")


def serve(sock: socket.socket) -> int:
    """The child: open the store, then commit what arrives until the socket closes."""
    frames = _Frames(sock)
    try:
        url = frames.one()
    except EOFError:
        return 0
    try:
        store = AuditStore(create_engines(url, shared=True))
        store.ping()
    except Exception as exc:
        frames.send(f"cannot open the audit store: {exc.__class__.__name__}")
        return 1
    try:
        frames.send(_READY)
        while (requests := frames.batch(MAX_EVENTS_PER_COMMIT)) is not None:
            frames.send(_commit(store, requests))
    except (BrokenPipeError, ConnectionResetError):
        pass  # the daemon is gone: nobody waits for the answer
    finally:
        store.close()
    return 0


def main() -> int:
    # The daemon stops the child by closing its socket, after draining through it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # As the daemon logs (commands.common.setup_logging): storage does not import commands.
    logging.basicConfig(
        level=os.environ.get("AUDITOR_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return serve(socket.socket(fileno=int(sys.argv[1])))


if __name__ == "__main__":
    sys.exit(main())
