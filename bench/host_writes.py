"""Host write throughput with Auditor's triggers ÷ without (and with sqlite-history's).

The billing service's own writes: single-row transactions on `charges`
(WAL, synchronous=NORMAL, Python's sqlite3 as a service would use it):
INSERT, then UPDATE of each inserted row, then DELETE of each. Four copies of
the same database: no triggers, Auditor's triggers, sqlite-history's triggers,
and the issue's ceiling for any capture trigger: one that writes only the key
(`KEY_ONLY_SQL`). `host_daemon` does the same with the daemon running and
capturing meanwhile.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from bench.common import (
    Daemon,
    Figure,
    Result,
    alternate,
    billing_db,
    free_port,
    host_connect,
    install_auditor,
    median,
    plot_bars,
    seed_customers,
    workdir,
    write_config,
)

OPS = ("insert", "update", "delete")
VARIANTS = ("plain", "auditor", "sqlite-history", "key-only")

KEY_ONLY_SQL = [
    'CREATE TABLE "_ceiling_changes" ("seq" INTEGER PRIMARY KEY, "op" TEXT, "pk" INTEGER)',
    *(
        f'CREATE TRIGGER "_ceiling_charges_{op}" AFTER {kind} ON "charges" FOR EACH ROW BEGIN '
        f"INSERT INTO \"_ceiling_changes\" (\"op\", \"pk\") VALUES ('{op}', {row}.\"id\"); END"
        for op, kind, row in (
            ("I", "INSERT", "new"), ("U", "UPDATE", "new"), ("D", "DELETE", "old")
        )
    ),
]
"""The least a capture trigger can write: the change kind and the row's key, into a
rowid table without AUTOINCREMENT. The issue measured it at 0.66 of no trigger for
single-row updates and called it the ceiling; it records no row image, no actor and
no time, so it could not produce an audit event."""


def _ops(conn: sqlite3.Connection, n: int) -> dict[str, float]:
    """Each op on n rows, one transaction per row; returns ops/s per kind."""
    rates = {}
    ids: list[int] = []
    started = time.perf_counter()
    for i in range(n):
        conn.execute("BEGIN")
        cur = conn.execute(
            "INSERT INTO charges (customer_id, amount_cents, currency, description, created_at) "
            "VALUES (?, ?, 'EUR', 'Team plan', '2026-11-28T12:00:00.000Z')",
            (i % 1000 + 1, 100 + i),
        )
        conn.execute("COMMIT")
        ids.append(int(cur.lastrowid or 0))
    rates["insert"] = n / (time.perf_counter() - started)
    started = time.perf_counter()
    for row_id in ids:
        conn.execute("BEGIN")
        conn.execute("UPDATE charges SET status = 'paid', amount_cents = amount_cents + 1 "
                     "WHERE id = ?", (row_id,))
        conn.execute("COMMIT")
    rates["update"] = n / (time.perf_counter() - started)
    started = time.perf_counter()
    for row_id in ids:
        conn.execute("BEGIN")
        conn.execute("DELETE FROM charges WHERE id = ?", (row_id,))
        conn.execute("COMMIT")
    rates["delete"] = n / (time.perf_counter() - started)
    return rates


def _variant(directory: Path, name: str) -> Path:
    path = billing_db(directory / f"{name}.db")
    seed_customers(path)
    if name == "auditor":
        install_auditor(write_config(directory, f"sqlite:///{directory / 'audit.db'}",
                                     billing=path))
    elif name == "sqlite-history":
        from sqlite_history import configure_history

        conn = sqlite3.connect(path)
        for table in ("customers", "resource_actions", "charges"):
            configure_history(conn, table)
        conn.close()
    elif name == "key-only":
        conn = sqlite3.connect(path, isolation_level=None)
        for statement in KEY_ONLY_SQL:
            conn.execute(statement)
        conn.close()
    return path


def _measure(paths: dict[str, Path], n: int, rounds: int) -> dict[str, list[float]]:
    conns = {name: host_connect(path) for name, path in paths.items()}
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in paths}

    def runner(name: str):  # type: ignore[no-untyped-def]
        def run() -> float:
            samples[name].append(_ops(conns[name], n))
            return 0.0
        return run

    alternate({name: runner(name) for name in paths}, rounds)
    for conn in conns.values():
        conn.close()
    return {f"{name} {op}": [s[op] for s in samples[name]] for name in paths for op in OPS}


def run(quick: bool) -> Result:
    n, rounds = (3000, 5) if quick else (20000, 7)
    result = Result("host_writes", "Host write throughput with Auditor's triggers ÷ without")
    with workdir("host") as directory:
        paths = {name: _variant(directory, name) for name in VARIANTS}
        series = _measure(paths, n, rounds)
    result.rounds = series
    size = f"{n:,} single-row transactions per op per round, {rounds} rounds"
    for op in OPS:
        plain = median(series[f"plain {op}"])
        ours = median(series[f"auditor {op}"])
        hist = median(series[f"sqlite-history {op}"])
        ceiling = median(series[f"key-only {op}"])
        ratio, hratio, cratio = ours / plain, hist / plain, ceiling / plain
        result.figures.append(Figure(
            f"host {op} with triggers ÷ without", ratio, "ratio", "≥ 0.60 and ≥ sqlite-history",
            ratio >= 0.60 and ratio >= hratio * 0.97,
            reference=f"without triggers {plain:,.0f}/s; Auditor {ours:,.0f}/s; "
                      f"sqlite-history {hist:,.0f}/s (ratio {hratio:.2f}); ceiling, a trigger "
                      f"writing only the key, {ceiling:,.0f}/s (ratio {cratio:.2f})",
            reference_value=plain, ratio=ratio, size=size,
            note=f"Auditor ÷ key-only ceiling {ours / ceiling:.2f}",
        ))
    plot_bars("host_writes", result.title + " (ops/s)", "single-row transactions / s", series,
              target=None)
    return result


def run_with_daemon(quick: bool) -> Result:
    n, rounds = (3000, 5) if quick else (20000, 7)
    result = Result("host_writes_daemon",
                    "Host write throughput with triggers and the daemon capturing ÷ without")
    with workdir("hostd") as directory:
        paths = {"plain": _variant(directory, "plain"), "auditor": _variant(directory, "auditor")}
        port = free_port()
        config = write_config(directory, f"sqlite:///{directory / 'audit.db'}",
                              billing=paths["auditor"], port=port)
        daemon = Daemon(config, port)
        try:
            series = _measure(paths, n, rounds)
            # Everything written must reach the store: the daemon really captured it.
            deadline = time.monotonic() + 120
            expected = 3 * n * rounds
            while time.monotonic() < deadline:
                heads = {s["name"]: s for s in daemon.get("/v1/streams")["streams"]}
                if heads.get("billing", {}).get("head_seq", 0) >= expected:
                    break
                time.sleep(0.5)
            captured = heads.get("billing", {}).get("head_seq", 0)
        finally:
            daemon.stop()
    series = {k.replace("auditor", "auditor+daemon"): v for k, v in series.items()}
    result.rounds = series
    result.notes.append(f"daemon captured {captured:,} of {3 * n * rounds:,} changes")
    size = f"{n:,} single-row transactions per op per round, {rounds} rounds"
    for op in OPS:
        plain = median(series[f"plain {op}"])
        ours = median(series[f"auditor+daemon {op}"])
        ratio = ours / plain
        result.figures.append(Figure(
            f"host {op} with triggers + daemon ÷ without", ratio, "ratio", "≥ 0.50",
            ratio >= 0.50,
            reference=f"without triggers {plain:,.0f}/s; with daemon {ours:,.0f}/s",
            reference_value=plain, ratio=ratio, size=size,
            note=f"captured {captured:,}/{3 * n * rounds:,}",
        ))
    plot_bars("host_writes_daemon", result.title + " (ops/s)", "single-row transactions / s",
              series, target=None)
    return result
