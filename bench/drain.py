"""Capture drain rate: a backlog of N changes in the shadow table, stored by the
capture code (`ShadowPoller.drain` through the group-commit writer, integrity on,
prune included), against the raw ceiling (plain sqlite3 / psycopg reading the
same shadow rows and writing the same rows, then pruning, with no translation,
hashing or SQLAlchemy). Each round drains a fresh copy of the same backlog into
a fresh store. Also the capture profile ("where the time goes").
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import time
from pathlib import Path

from bench import raw
from bench.common import (
    RESULTS,
    Figure,
    Result,
    alternate,
    billing_db,
    install_auditor,
    make_backlog,
    median,
    pg_database,
    pg_drop,
    plot_bars,
    seed_customers,
    shadow_count,
    workdir,
    write_config,
)


def template(directory: Path, changes: int) -> tuple[Path, Path]:
    """A billing database with Auditor's triggers and a backlog of `changes`."""
    path = billing_db(directory / "template.db")
    config = write_config(directory, f"sqlite:///{directory / 'unused.db'}", billing=path)
    install_auditor(config)
    seed_customers(path, 1000)
    make_backlog(path, changes - 1000)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return path, config


def _copy(src: Path, dst: Path) -> Path:
    shutil.copyfile(src, dst)
    return dst


def auditor_drain(billing: Path, config_path: Path, url: str, batch: int = 1000) -> float:
    from cdc.poller import ShadowPoller
    from commands.serve import settle_collector
    from config import load_config
    from storage.store import AuditStore
    from storage.writer import GroupCommitWriter
    from storage.writer_process import runs_apart

    source = load_config(config_path).sources[0].model_copy(update={"database": billing})
    # As the daemon opens it: shared with its store writer process on a SQLite file.
    store = AuditStore.open(url, shared=runs_apart(url))
    settle_collector()  # as the daemon does before it serves and captures

    async def go() -> float:
        writer = GroupCommitWriter(store)  # the daemon's capture writer
        await writer.start()
        poller = ShadowPoller(source, writer, 0, batch)
        started = time.perf_counter()
        await poller.drain()
        elapsed = time.perf_counter() - started
        await writer.stop()
        poller.close()
        return elapsed

    try:
        return asyncio.run(go())
    finally:
        store.close()


def raw_drain(billing: Path, writer: raw.RawSqlite | raw.RawPg, batch: int = 1000) -> float:
    conn = sqlite3.connect(billing, isolation_level=None)
    started = time.perf_counter()
    position = 0
    while rows := raw.read_shadow(conn, position, batch):
        raw.store_shadow(writer, rows)
        position = rows[-1][0]
    raw.prune_shadow(conn, 0, position - 1)
    elapsed = time.perf_counter() - started
    conn.close()
    writer.close()
    return elapsed


def run(quick: bool, *, pg: bool = False) -> Result:
    changes, rounds = ((30_000 if pg else 60_000), 3) if quick else (1_000_000, 3)
    name = "drain_pg" if pg else "drain_sqlite"
    store_kind = "PostgreSQL" if pg else "SQLite"
    result = Result(name, f"Capture drain rate to the {store_kind} store (integrity on)")
    with workdir(name) as directory:
        backlog, config = template(directory, changes)
        n = shadow_count(backlog)
        counter = iter(range(1000))

        def fresh_url(tag: str) -> str:
            i = next(counter)
            if pg:
                return pg_database(f"auditor_bench_{tag}_{i}").replace(
                    "postgresql://", "postgresql+psycopg://")
            return f"sqlite:///{directory / f'{tag}{i}.db'}"

        def subject() -> float:
            url = fresh_url("a")
            billing = _copy(backlog, directory / "round.db")
            seconds = auditor_drain(billing, config, url)
            assert shadow_count(billing) <= 1, "the drain left rows behind"
            _cleanup(url, pg)
            return n / seconds

        def ceiling() -> float:
            url = fresh_url("r")
            raw.create_store(url)
            billing = _copy(backlog, directory / "round.db")
            writer: raw.RawSqlite | raw.RawPg = (
                raw.RawPg(url) if pg else raw.RawSqlite(url.removeprefix("sqlite:///")))
            seconds = raw_drain(billing, writer)
            _cleanup(url, pg)
            return n / seconds

        series = alternate({"Auditor capture": subject, "raw ceiling": ceiling}, rounds)
    result.rounds = series
    ours, ceil = median(series["Auditor capture"]), median(series["raw ceiling"])
    target = 30_000 if pg else 40_000
    size = f"backlog {n:,} changes, {rounds} rounds"
    size += " (quick; full: 1,000,000)" if quick else ""
    met = ours >= target if pg else (ours >= target and ours / ceil >= 0.60)
    by_round = ", ".join(f"{a / c:.2f}" for a, c in zip(series["Auditor capture"],
                                                         series["raw ceiling"], strict=True))
    note = f"ratio by round {by_round}"
    if ceil < target:
        note += f"; the {target:,}/s target is above this run's raw ceiling"
    result.figures.append(Figure(
        f"capture drain to {store_kind} store", ours, "changes/s",
        f"≥ {target:,}" + ("" if pg else " and ≥ 60% of raw"), met,
        reference=f"raw ceiling {ceil:,.0f}/s", reference_value=ceil, ratio=ours / ceil, size=size,
        note=note,
    ))
    plot_bars(name, result.title, "changes / s", series, target=target)
    return result


def _cleanup(url: str, pg: bool) -> None:
    if pg:
        pg_drop(url.rsplit("/", 1)[1])
    else:
        path = Path(url.removeprefix("sqlite:///"))
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)


def profile(quick: bool) -> str:
    """pyinstrument over the capture steps, run synchronously in one thread (the
    daemon runs the same calls on two threads: the billing read and the store write)."""
    from pyinstrument import Profiler

    from cdc import shadow
    from cdc.installer import connect
    from cdc.translate import translate
    from commands.serve import settle_collector
    from config import load_config
    from storage.store import AppendRequest, AuditStore, CapturePosition

    changes = 20_000 if quick else 200_000
    with workdir("profcap") as directory:
        backlog, config = template(directory, changes)
        source = load_config(config).sources[0]
        tables = {t.table: t for t in source.tables}
        store = AuditStore.open(f"sqlite:///{directory / 'audit.db'}")
        conn = connect(backlog)
        settle_collector()  # as the daemon does
        profiler = Profiler(interval=0.0005)
        profiler.start()
        position = 0
        while True:
            rows = shadow.read_batch(conn, position, 1000)
            if not rows:
                break
            events, _ = translate(rows, tables, "billing")
            position = rows[-1].seq
            store.append([AppendRequest(events, CapturePosition("billing", position))])
        shadow.prune(conn, position)
        profiler.stop()
        conn.close()
        store.close()
    return summarize(profiler, "profile_capture")


def summarize(profiler, name: str) -> str:  # type: ignore[no-untyped-def]
    """Self time grouped by the innermost Auditor function on the stack; saves the tree."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.txt").write_text(profiler.output_text(unicode=False, color=False,
                                                               show_all=False))
    root = profiler.last_session.root_frame()
    totals: dict[str, float] = {}
    project = str(Path(__file__).resolve().parent.parent)

    def walk(frame, owner: str) -> None:  # type: ignore[no-untyped-def]
        path = frame.file_path or ""
        if path.startswith(project) and "/.venv/" not in path and "/bench/" not in path:
            owner = f"{Path(path).parent.name}/{Path(path).name}:{frame.function}"
        totals[owner] = totals.get(owner, 0.0) + frame.total_self_time
        for child in frame.children:
            walk(child, owner)

    walk(root, "(outside Auditor)")
    whole = sum(totals.values()) or 1.0
    by_module: dict[str, float] = {}
    for key, value in totals.items():
        module = key.split(":")[0]
        by_module[module] = by_module.get(module, 0.0) + value
    lines = [f"total {whole:.2f} s sampled", "", "by module (self time incl. library calls "
             "made from it):"]
    for module, value in sorted(by_module.items(), key=lambda kv: -kv[1])[:10]:
        lines.append(f"  {100 * value / whole:5.1f}%  {module}")
    lines.append("")
    lines.append("by function:")
    for key, value in sorted(totals.items(), key=lambda kv: -kv[1])[:14]:
        lines.append(f"  {100 * value / whole:5.1f}%  {key}")
    text = "\n".join(lines)
    (RESULTS / f"{name}_summary.txt").write_text(text + "\n")
    return text
