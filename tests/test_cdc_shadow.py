"""Batch boundaries of `cdc.shadow.read_batch` on a real SQLite file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from cdc import installer, shadow
from config import TableConfig


def billing(tmp_path: Path) -> sqlite3.Connection:
    path = tmp_path / "billing.db"
    host = sqlite3.connect(path, isolation_level=None)
    host.execute("PRAGMA journal_mode = WAL")
    host.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT UNIQUE)")
    conn = installer.connect(path)
    installer.install(conn, [TableConfig(table="items")])
    conn.close()
    return host


def test_a_big_multi_row_delete_is_read_in_batches_not_whole(tmp_path: Path) -> None:
    """Regression: a run of D rows was taken for an unfinished REPLACE, so a
    5,000-row DELETE came back as one batch (memory grew with statement size)."""
    host = billing(tmp_path)
    host.executemany("INSERT INTO items (name) VALUES (?)", [(f"n{i}",) for i in range(5000)])
    conn = installer.connect(tmp_path / "billing.db")
    position = shadow.head_seq(conn)
    host.execute("DELETE FROM items")
    batch = shadow.read_batch(conn, position, 100)
    assert len(batch) == 100
    assert {row.op for row in batch} == {"D"}


def test_a_replace_is_never_split_from_its_pre_images(tmp_path: Path) -> None:
    host = billing(tmp_path)
    host.execute("PRAGMA recursive_triggers = ON")
    host.executemany("INSERT INTO items (id, name) VALUES (?, ?)", [(1, "a"), (2, "b")])
    conn = installer.connect(tmp_path / "billing.db")
    position = shadow.head_seq(conn)
    # Collides with row 1 on the key and row 2 on the UNIQUE name: P, P, D, D, I.
    host.execute("INSERT OR REPLACE INTO items (id, name) VALUES (1, 'b')")
    ops = [row.op for row in shadow.read_batch(conn, position, 1)]
    assert ops[0] == "P" and ops[-1] == "I"
    assert ops.count("D") == 2
