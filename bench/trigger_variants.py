"""What each part of Auditor's triggers costs the billing service's writes.

Copies of the benchmark's billing database, each with Auditor's triggers
rewritten one way, measured side by side (shuffled order every round) with
`bench.host_writes`' single-row transactions; prints each copy's rate as a
ratio to no triggers and its trigger cost in µs a row. Not part of `make bench`:
it is how a change to the triggers is measured before and after.

    python -m bench.trigger_variants [--rows N] [--rounds N] [--memory] [VARIANT ...]

`--memory` runs in-memory copies, which leaves out the disk and shows the
triggers' CPU alone.
"""

from __future__ import annotations

import argparse
import random
import re
import sqlite3
from collections.abc import Callable
from pathlib import Path

from bench.common import (
    billing_db,
    host_connect,
    install_auditor,
    median,
    seed_customers,
    workdir,
    write_config,
)
from bench.host_writes import KEY_ONLY_SQL, OPS, _ops
from cdc.triggers import CHANGE_TIME

OLD_TIME = "strftime('%Y-%m-%dT%H:%M:%fZ','now')"
Rewrite = Callable[[str], str]
VARIANTS: dict[str, Rewrite | None] = {
    "plain": None,
    "auditor": lambda sql: sql,
    # before session 12: the time formatted in the trigger
    "strftime-time": lambda sql: sql.replace(CHANGE_TIME, OLD_TIME),
    # before session 12: the UPDATE pre-image trigger called for every UPDATE
    "bu-every-update": lambda sql: re.sub(
        r"BEFORE UPDATE OF .*? ON (\"[^\"]+\")", r"BEFORE UPDATE ON \1", sql
    ),
    "key-only": lambda sql: "",
}


def _copy(directory: Path, name: str, rewrite: Rewrite | None) -> Path:
    sub = directory / name
    sub.mkdir()
    path = billing_db(sub / "billing.db")
    seed_customers(path)
    if rewrite is None:
        return path
    install_auditor(write_config(sub, f"sqlite:///{sub / 'audit.db'}", billing=path))
    conn = sqlite3.connect(path, isolation_level=None)
    triggers = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'charges'"
    ).fetchall()
    for trigger, sql in triggers:
        conn.execute(f'DROP TRIGGER "{trigger}"')
        if rewritten := rewrite(sql):
            conn.execute(rewritten)
    if name == "key-only":
        for statement in KEY_ONLY_SQL:
            conn.execute(statement)
    conn.close()
    return path


def _open(path: Path, memory: bool) -> sqlite3.Connection:
    if not memory:
        return host_connect(path)
    conn = sqlite3.connect(":memory:", isolation_level=None)
    with sqlite3.connect(path) as source:
        source.backup(conn)
    return conn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="*", default=list(VARIANTS))
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--memory", action="store_true")
    args = parser.parse_args()
    names = ["plain", *(v for v in args.variants if v != "plain")]
    with workdir("variants") as directory:
        conns = {n: _open(_copy(directory, n, VARIANTS[n]), args.memory) for n in names}
        samples: dict[str, list[dict[str, float]]] = {n: [] for n in names}
        for _ in range(args.rounds):
            order = list(conns.items())
            random.shuffle(order)
            for name, conn in order:
                samples[name].append(_ops(conn, args.rows))
        for conn in conns.values():
            conn.close()
    for op in OPS:
        plain = median([s[op] for s in samples["plain"]])
        print(f"{op}: no triggers {plain:,.0f}/s")
        for name in names[1:]:
            rate = median([s[op] for s in samples[name]])
            cost = 1e6 / rate - 1e6 / plain
            print(f"  {name:16} {rate / plain:.3f} of no triggers, {cost:5.2f} µs a row")


if __name__ == "__main__":
    main()
