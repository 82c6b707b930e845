"""The HTTP API under load (wrk over loopback) and `run_daemon.py verify`.

- POST /v1/events, one event per request, 64 connections, against the Flask +
  sqlite3 peer of the seed's create_log route under gunicorn (and Auditor's own
  /create_log for the same request shape);
- batch ingest ({"events": [...]} of 1,000) against the raw ceiling;
- GET /v1/events?actor=X&limit=50 over a populated store, against plain sqlite3
  running the same query;
- run_daemon.py verify over the same store, against reading and hashing each
  row once in plain Python.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import sqlite3
import subprocess
import time
from collections.abc import Callable
from hashlib import sha256
from pathlib import Path

from sqlalchemy.engine import make_url

from bench import raw
from bench.common import (
    PY,
    RESULTS,
    ROOT,
    Daemon,
    Figure,
    Result,
    alternate,
    count_rows,
    free_port,
    median,
    plot_bars,
    workdir,
    write_config,
    wrk,
)

EVENT = {
    "entity": "charge", "entity_id": "ch_1", "event_type": "CREATE",
    "actor": {"id": "073", "name": "SUBIN JEONG", "ip": "125.22.33.22"},
    "properties": ["amount"], "after": {"amount": 1200, "currency": "EUR"},
}
SEED_BODY = {"entity": "CustomerData", "datetime": "2022-02-02", "event_type": "CREATE",
             "name": "SUBIN JEONG", "ip": "125.22.33.22"}


def _post_script(directory: Path, name: str, body: object) -> Path:
    path = directory / f"{name}.lua"
    text = json.dumps(body).replace("\\", "\\\\").replace('"', '\\"')
    path.write_text(
        'wrk.method = "POST"\n'
        f'wrk.body = "{text}"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
    )
    return path


class Gunicorn:
    def __init__(self, directory: Path, port: int, workers: int = 4) -> None:
        self.port = port
        self.process = subprocess.Popen(
            [PY, "-m", "gunicorn", "-w", str(workers), "-b", f"127.0.0.1:{port}",
             "--log-level", "warning", "bench.peers.flask_seed:app"],
            cwd=ROOT, env={**os.environ, "AUDIT_DB": str(directory / "peer.db")},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        import urllib.request

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                req = urllib.request.Request(
                    f"http://127.0.0.1:{port}/create_log/1", data=json.dumps(SEED_BODY).encode())
                with urllib.request.urlopen(req, timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise TimeoutError("gunicorn did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


WORKERS = 2
WORKERS_GET = f"Auditor, 64 connections, server.workers: {WORKERS}"
WORKERS_POST = f"Auditor POST /v1/events, server.workers: {WORKERS}"
PROTOTYPE_POST = "the issue's prototype: aiohttp + group commit, one sqlite3 row"
CPUS = len(os.sched_getaffinity(0))
VERIFY = f"run_daemon.py verify ({CPUS} processes)"
VERIFY_ONE = "run_daemon.py verify --jobs 1"
READ_AND_HASH = "read + one SHA-256 per row (plain Python)"
PROTOTYPE_GET = "the issue's naive handler: sqlite3 + json.dumps, 64 connections"


class Prototype:
    """`bench/peers/aiohttp_prototype.py` as a process: the issue's prototypes."""

    def __init__(self, port: int, post_db: Path, read: Path | None = None) -> None:
        self.process = subprocess.Popen(
            [PY, "-m", "bench.peers.aiohttp_prototype", str(port), str(post_db),
             *([str(read)] if read is not None else [])],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_http(f"http://127.0.0.1:{port}/ping")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def post_single(quick: bool) -> Result:
    seconds, rounds = (6, 3) if quick else (30, 5)
    result = Result("post_single", "POST one event per request, 64 connections")
    # Every process is stopped however the run ends, one that failed to start included
    # (a peer that did not start once left both daemons running).
    with workdir("post") as directory, contextlib.ExitStack() as running:
        port, peer_port, workers_port = free_port(), free_port(), free_port()
        daemon = Daemon(write_config(directory, f"sqlite:///{directory / 'audit.db'}", port=port),
                        port)
        running.callback(daemon.stop)
        # A folder of its own: with workers its processes watch the store's folder
        # (`commands.serve.attach_store_watch`), and every write of the daemon under
        # test to a store beside it cost each of them 6-7 % of a core, which took
        # 5,000-5,500 req/s from that daemon where it did 6,700-7,000 without them.
        own = directory / "workers"
        own.mkdir()
        workers = Daemon(write_config(own, f"sqlite:///{own / 'workers.db'}",
                                      port=workers_port, workers=WORKERS, name="workers.yaml"),
                         workers_port)
        running.callback(workers.stop)
        # Steady state: the first post starts the store writer process (0.3 s). Cold,
        # a 6-s wrk run reported p99 of 201 and 234 ms, against 17-19 ms after one
        # post; a client timing every post saw only the 64 that waited for the start
        # go over 100 ms (of 13,780 and 16,485; p99 32 and 25 ms).
        for started in (daemon, workers):
            started.post("/v1/events", EVENT)
        peer = Gunicorn(directory, peer_port)
        running.callback(peer.stop)
        bare_port = free_port()
        bare = subprocess.Popen(  # the HTTP ceiling: parse and answer, store nothing
            [PY, "-m", "bench.peers.aiohttp_bare", str(bare_port)], cwd=ROOT,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        running.callback(bare.wait, timeout=30)
        running.callback(bare.terminate)
        _wait_http(f"http://127.0.0.1:{bare_port}/ping")
        proto_port = free_port()
        proto = Prototype(proto_port, directory / "prototype.db")
        running.callback(proto.stop)
        fsync = _commit_rate(directory / "fsync.db", seconds=3)
        ev_script = _post_script(directory, "event", EVENT)
        seed_script = _post_script(directory, "seed", SEED_BODY)
        runs: dict[str, list[dict[str, float]]] = {
            "auditor": [], "auditor-seed": [], "flask": [], "bare": [], "prototype": [],
            "workers": []}

        def bench(name: str, url: str, script: Path):  # type: ignore[no-untyped-def]
            def go() -> float:
                runs[name].append(wrk(url, connections=64, seconds=seconds, script=script))
                return runs[name][-1]["rps"]
            return go

        series = alternate({
            "Auditor POST /v1/events": bench("auditor", daemon.base + "/v1/events", ev_script),
            WORKERS_POST: bench("workers", workers.base + "/v1/events", ev_script),
            "Auditor POST /create_log": bench(
                "auditor-seed", daemon.base + "/create_log/073", seed_script),
            "Flask+sqlite3 /create_log (gunicorn -w4)": bench(
                "flask", f"http://127.0.0.1:{peer_port}/create_log/073", seed_script),
            "bare aiohttp, parse + answer, no storage": bench(
                "bare", f"http://127.0.0.1:{bare_port}/v1/events", ev_script),
            PROTOTYPE_POST: bench(
                "prototype", f"http://127.0.0.1:{proto_port}/v1/events", ev_script),
        }, rounds)
    result.rounds = series
    ours = median(series["Auditor POST /v1/events"])
    peer_rps = median(series["Flask+sqlite3 /create_log (gunicorn -w4)"])
    p99 = median([r["p99"] for r in runs["auditor"]])
    errors = sum(r["errors"] for r in runs["auditor"])
    size = f"wrk -t2 -c64, {seconds} s per run, {rounds} rounds"
    result.figures.append(Figure(
        "POST /v1/events, 1 event/request, 64 conns", ours, "req/s",
        "≥ 7,000 and ≥ 2x Flask peer", ours >= 7000 and ours >= 2 * peer_rps,
        reference=f"Flask+sqlite3 under gunicorn {peer_rps:,.0f} req/s; Auditor /create_log "
                  f"{median(series['Auditor POST /create_log']):,.0f} req/s",
        reference_value=peer_rps, ratio=ours / peer_rps, size=size,
        note=f"non-2xx/socket errors: {errors:.0f}; limits of this machine, same run: a bare "
             f"aiohttp handler that stores nothing "
             f"{median(series['bare aiohttp, parse + answer, no storage']):,.0f} req/s, "
             f"durable SQLite commits (WAL, synchronous=FULL, one row each) {fsync:,.0f}/s; "
             f"the issue's group-commit prototype (bench/peers/aiohttp_prototype.py: one "
             f"unindexed row an event, no validation or hashing) "
             f"{median(series[PROTOTYPE_POST]):,.0f} req/s, p99 "
             f"{median([r['p99'] for r in runs['prototype']]):.1f} ms "
             f"(Auditor ÷ prototype {ours / median(series[PROTOTYPE_POST]):.2f}; the issue "
             f"measured the prototype at 8,970 and set 7,000, 0.78 of it); with "
             f"server.workers: {WORKERS} {median(series[WORKERS_POST]):,.0f} req/s, p99 "
             f"{median([r['p99'] for r in runs['workers']]):.1f} ms",
    ))
    result.figures.append(Figure(
        "POST /v1/events p99 latency, 64 conns", p99, "ms", "≤ 30 ms", p99 <= 30,
        reference=f"Flask peer p99 {median([r['p99'] for r in runs['flask']]):.1f} ms",
        reference_value=median([r["p99"] for r in runs["flask"]]), size=size,
    ))
    plot_bars("post_single", result.title + " (req/s)", "requests / s", series, target=7000)
    return result


def _wait_http(url: str, timeout: float = 30) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer")


def _commit_rate(path: Path, seconds: float) -> float:
    """Durable one-row commits per second (WAL, synchronous=FULL): the fsync limit."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE IF NOT EXISTS t (x)")
    n = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds and n < 1_000_000:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t VALUES (?)", (n,))
        conn.execute("COMMIT")
        n += 1
    rate = n / (time.perf_counter() - started)
    conn.close()
    return rate


def post_batch(quick: bool) -> Result:
    seconds, rounds = (8, 3) if quick else (30, 5)
    result = Result("post_batch", 'Batch ingest: POST {"events": [1,000 events]}')
    with workdir("batch") as directory:
        port = free_port()
        daemon = Daemon(write_config(directory, f"sqlite:///{directory / 'audit.db'}", port=port),
                        port)
        daemon.post("/v1/events", EVENT)  # steady state: start the store writer process
        batch = [{**EVENT, "entity_id": f"ch_{i}", "actor": {"id": f"{i % 100:03d}"}}
                 for i in range(1000)]
        script = _post_script(directory, "batch", {"events": batch})
        # The ceiling writes the index keys of the posted events (1,000 entity ids and
        # 100 actors, the same every request), as Auditor must.
        keys: list[raw.Key] = [("charge", e["entity_id"], "CREATE", e["actor"]["id"])
                               for e in batch]
        raw_url = directory / "raw.db"
        raw.create_store(f"sqlite:///{raw_url}")
        writer = raw.RawSqlite(str(raw_url))
        payload = json.dumps({"before": None, "after": EVENT["after"], "metadata": {}})

        def ours() -> float:
            return wrk(daemon.base + "/v1/events", connections=4, seconds=seconds,
                       script=script)["rps"] * 1000

        def ceiling() -> float:
            started = time.perf_counter()
            n = 0
            while time.perf_counter() - started < seconds / 2:
                writer.write([payload] * 1000, keys=keys)
                n += 1000
            return n / (time.perf_counter() - started)

        try:
            series = alternate({"Auditor batch ingest": ours, "raw ceiling": ceiling}, rounds)
        finally:
            daemon.stop()
            writer.close()
        sizes = [count_rows(directory / name, "events") for name in ("audit.db", "raw.db")]
    result.rounds = series
    result.notes.append(f"events stored at the end: Auditor {sizes[0]:,}, raw ceiling "
                        f"{sizes[1]:,} (both slow down as the store grows)")
    value, ceil = median(series["Auditor batch ingest"]), median(series["raw ceiling"])
    result.figures.append(Figure(
        "batch ingest (1,000 events/request)", value, "events/s", "≥ 50,000", value >= 50_000,
        reference=f"raw ceiling {ceil:,.0f} events/s (plain sqlite3, 1,000-row transactions, "
                  "the posted events' index keys)",
        reference_value=ceil, ratio=value / ceil,
        size=f"wrk -c4, {seconds} s per run, {rounds} rounds",
    ))
    plot_bars("post_batch", result.title, "events / s", series, target=50_000)
    return result


def populate(url: str, count: int, actors: int = 1000) -> None:
    """`count` real events (hashed, Merkle tree grown) through AuditStore.append."""
    from storage.events import Actor, EventType, NewEvent, utc_now
    from storage.store import AppendRequest, AuditStore

    store = AuditStore.open(url)
    rng = random.Random(6)
    step = 10_000
    try:
        for start in range(0, count, step):
            store.append([AppendRequest([
                NewEvent(entity="charge", entity_id=str(i), event_type=EventType.CREATE,
                         action="charge.created", actor=Actor(f"{rng.randrange(actors):04d}"),
                         properties=("amount",), after={"amount": i, "currency": "EUR"},
                         stream="api", occurred_at=utc_now())
                for i in range(start, min(count, start + step))
            ])])
    finally:
        store.close()
    # Fold the WAL into the file now: a daemon opening the store would otherwise do it
    # (gigabytes at the full size) while a second daemon waits for the same store.
    conn = sqlite3.connect(make_url(url).database or "")
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def get_and_verify(quick: bool) -> list[Result]:
    count, seconds, rounds = (300_000, 6, 3) if quick else (10_000_000, 20, 3)
    size_note = f"{count:,} events" + (" (quick; full: 10,000,000)" if quick else "")
    get = Result("get_query", "GET /v1/events?actor=X&limit=50")
    ver = Result("verify", "run_daemon.py verify")
    with workdir("get") as directory:
        db = directory / "audit.db"
        url = f"sqlite:///{db}"
        started = time.monotonic()
        populate(url, count)
        get.notes.append(f"populated {count:,} events through AuditStore.append in "
                         f"{time.monotonic() - started:.0f} s")
        script = directory / "get.lua"
        script.write_text(
            "request = function()\n"
            '  return wrk.format("GET", "/v1/events?actor=" .. string.format("%04d", '
            'math.random(0, 999)) .. "&limit=50")\nend\n')
        port = free_port()
        config = write_config(directory, url, port=port)
        daemon = Daemon(config, port)
        workers_port = free_port()
        workers = Daemon(write_config(directory, url, port=workers_port, workers=WORKERS,
                                      name="workers.yaml"), workers_port)
        proto_port = free_port()
        proto = Prototype(proto_port, directory / "prototype.db", read=db)
        runs64: list[dict[str, float]] = []
        runs_workers: list[dict[str, float]] = []
        memory: list[tuple[int, int, int]] = []
        runs1: list[dict[str, float]] = []
        raw_p99: list[float] = []
        conn = sqlite3.connect(db)

        def ours64() -> float:
            runs64.append(wrk(daemon.base + "/v1/events", connections=64, seconds=seconds,
                              script=script))
            return runs64[-1]["rps"]

        def workers64() -> float:
            runs_workers.append(wrk(workers.base + "/v1/events", connections=64,
                                    seconds=seconds, script=script))
            memory.append(workers.tree_memory_kb())
            return runs_workers[-1]["rps"]

        def ours1() -> float:
            # Let the 64-connection run's queued requests (~100 ms of work) finish first,
            # or they show up as this run's p99.
            time.sleep(1.0)
            runs1.append(wrk(daemon.base + "/v1/events", connections=1, seconds=seconds,
                             script=script, threads=1))
            return runs1[-1]["rps"]

        def ceiling() -> float:
            times = []
            deadline = time.perf_counter() + seconds / 2
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                conn.execute("SELECT * FROM events WHERE actor_id = ? ORDER BY pk DESC LIMIT 51",
                             (f"{random.randrange(1000):04d}",)).fetchall()
                times.append(time.perf_counter() - t)
            raw_p99.append(sorted(times)[int(len(times) * 0.99)] * 1000)
            return len(times) / sum(times)

        def naive64() -> float:
            return wrk(f"http://127.0.0.1:{proto_port}/v1/events", connections=64,
                       seconds=seconds, script=script)["rps"]

        try:
            series = alternate({"Auditor, 64 connections": ours64,
                                WORKERS_GET: workers64,
                                "Auditor, 1 connection": ours1,
                                "plain sqlite3 query, 1 thread": ceiling,
                                PROTOTYPE_GET: naive64}, rounds)
        finally:
            daemon.stop()
            workers.stop()
            proto.stop()
            conn.close()
        get.rounds = series
        value = median(series["Auditor, 64 connections"])
        ceil = median(series["plain sqlite3 query, 1 thread"])
        p99_1 = median([r["p99"] for r in runs1])
        get.figures.append(Figure(
            "GET /v1/events?actor=X&limit=50, 64 conns", value, "req/s", "≥ 3,000",
            value >= 3000, reference=f"plain sqlite3 same query, one thread {ceil:,.0f} q/s",
            reference_value=ceil, ratio=value / ceil, size=size_note + f", wrk {seconds} s",
            note=f"p99 at 64 conns {median([r['p99'] for r in runs64]):.1f} ms; the issue's "
                 f"naive handler (bench/peers/aiohttp_prototype.py: same SQL, rows as dicts, "
                 f"json.dumps), same run: {median(series[PROTOTYPE_GET]):,.0f} req/s (Auditor ÷ "
                 f"naive {value / median(series[PROTOTYPE_GET]):.2f}; the issue measured it at "
                 f"1,650 and set 3,000, 1.82 times it)",
        ))
        spread = median(series[WORKERS_GET])
        processes, rss, pss = max(memory, key=lambda m: m[2])
        get.figures.append(Figure(
            f"GET /v1/events?actor=X&limit=50, 64 conns, server.workers: {WORKERS}", spread,
            "req/s", "≥ 3,000", spread >= 3000,
            reference=f"plain sqlite3 same query, one thread {ceil:,.0f} q/s; the same "
                      f"daemon with server.workers: 1 {value:,.0f} req/s",
            reference_value=ceil, ratio=spread / ceil, size=size_note + f", wrk {seconds} s",
            note=f"p99 {median([r['p99'] for r in runs_workers]):.1f} ms; memory after a "
                 f"run, {processes} processes (the daemon, {WORKERS - 1} API worker(s) and the "
                 f"starter that forks them): PSS {pss / 1024:.0f} MB, RSS summed "
                 f"{rss / 1024:.0f} MB",
        ))
        get.figures.append(Figure(
            "GET /v1/events p99 at 1 connection", p99_1, "ms", "≤ 10 ms", p99_1 <= 10,
            reference=f"plain sqlite3 query p99 {median(raw_p99):.2f} ms",
            reference_value=median(raw_p99), size=size_note,
            note=f"p50 {median([r['p50'] for r in runs1]):.2f} ms",
        ))
        plot_bars("get_query", get.title + " (req/s)", "requests / s", series, target=3000)

        # verify: the real command (its default, a process per CPU, and --jobs 1)
        # against reading and hashing every row once in one thread.
        def verify(*options: str) -> Callable[[], float]:
            def run() -> float:
                t = time.perf_counter()
                out = subprocess.run([PY, str(ROOT / "run_daemon.py"), "--config", str(config),
                                      "verify", *options], capture_output=True, text=True,
                                     cwd=ROOT, timeout=3600, check=False)
                if out.returncode != 0:
                    raise RuntimeError(f"verify failed: {out.stdout} {out.stderr}")
                return count / (time.perf_counter() - t)
            return run

        def read_and_hash() -> float:
            t = time.perf_counter()
            c = sqlite3.connect(db)
            for row in c.execute("SELECT id, stream, seq, entity, entity_id, event_type, action,"
                                 " properties, actor_id, occurred_at, payload, hash FROM events"
                                 " ORDER BY stream, seq"):
                sha256(repr(row).encode()).digest()
            c.close()
            return count / (time.perf_counter() - t)

        vseries = alternate({VERIFY: verify(), VERIFY_ONE: verify("--jobs", "1"),
                             READ_AND_HASH: read_and_hash}, rounds)
    ver.rounds = vseries
    v, one, c = (median(vseries[name]) for name in (VERIFY, VERIFY_ONE, READ_AND_HASH))
    ver.figures.append(Figure(
        f"run_daemon.py verify ({CPUS} processes: --jobs defaults to the CPUs)", v, "events/s",
        "≥ 100,000", v >= 100_000,
        reference=f"read + hash each row once, one thread {c:,.0f} rows/s", reference_value=c,
        ratio=v / c, size=size_note + " (process start included)",
        note=f"the same command with --jobs 1 (one process), same run: {one:,.0f} events/s "
             f"({one / c:.2f} of the reference); {CPUS} processes ÷ one {v / one:.2f}",
    ))
    plot_bars("verify", ver.title, "events / s", vseries, target=100_000)
    return [get, ver]


def profile_ingest(quick: bool) -> str:
    """pyinstrument over the ingest path minus HTTP: parse and validate bodies, then
    AuditStore.append (64 single events per commit, as group commit gathers them under
    64 connections; and 1,000-event batches), synchronously in one thread."""
    from pyinstrument import Profiler

    from bench.drain import summarize
    from commands.serve import settle_collector
    from storage.store import AppendRequest, AuditStore
    from web.ingest import parse_posted

    single = json.dumps(EVENT).encode()
    batch = json.dumps({"events": [EVENT] * 1000}).encode()
    n = 20_000 if quick else 100_000
    with workdir("profing") as directory:
        store = AuditStore.open(f"sqlite:///{directory / 'audit.db'}")
        settle_collector()  # as the daemon does
        profiler = Profiler(interval=0.0005)
        profiler.start()
        for _ in range(n // 64):
            store.append([AppendRequest(parse_posted(single, "application/json")[0])
                          for _ in range(64)])
        for _ in range(n // 1000):
            store.append([AppendRequest(parse_posted(batch, "application/json")[0])])
        profiler.stop()
        store.close()
    RESULTS.mkdir(parents=True, exist_ok=True)
    return summarize(profiler, "profile_ingest")
