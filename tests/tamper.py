"""What an attacker with write access to the audit database can do, for the integrity tests.

Everything here goes straight to the tables with SQL, as someone holding the
database (but not the signing key) would, never through `AuditStore`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import delete, insert, select, text, update

from storage import merkle
from storage.canonical import canonical_event, payload_digest, payload_document
from storage.events import Actor, AuditEvent, EventType, NewEvent, to_ms
from storage.schema import events, merkle_nodes, streams
from storage.store import AppendRequest, AuditStore

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def new_event(n: int, stream: str = "api", **overrides: Any) -> NewEvent:
    fields: dict[str, Any] = {
        "stream": stream,
        "entity": "customer",
        "entity_id": str(n),
        "event_type": EventType.UPDATE,
        "actor": Actor(f"user{n % 3}", "Name", "10.0.0.1"),
        "occurred_at": T0 + timedelta(seconds=n, milliseconds=n % 1000),
        "action": "customer.updated",
        "properties": ("name",),
        "before": {"id": n, "name": "A", "amount": 12.5},
        "after": {"id": n, "name": "B", "amount": 1e-7},
        "metadata": {"n": n},
    }
    fields.update(overrides)
    return NewEvent(**fields)


def fill(store: AuditStore, count: int, stream: str = "api", start: int = 0) -> list[AuditEvent]:
    """Append `count` events to `stream`, a few per transaction (so the tree grows unevenly)."""
    stored: list[AuditEvent] = []
    numbers = list(range(start, start + count))
    while numbers:
        batch, numbers = numbers[: 1 + len(stored) % 4], numbers[1 + len(stored) % 4 :]
        results = store.append([AppendRequest([new_event(n, stream) for n in batch])])
        stored.extend(a.event for a in results[0])
    return stored


def execute(store: AuditStore, sql: str, **params: Any) -> None:
    with store.engines.write.begin() as conn:
        conn.execute(text(sql), params)


def set_column(store: AuditStore, stream: str, seq: int, **values: Any) -> None:
    with store.engines.write.begin() as conn:
        conn.execute(
            update(events).where(events.c.stream == stream, events.c.seq == seq).values(**values)
        )


def forged_row(
    stream: str, seq: int, n: int = 999, *, valid_hash: bool = True, **overrides: Any
) -> dict[str, Any]:
    """An events row an attacker writes; with `valid_hash` its leaf hash fits its content."""
    new = new_event(n, stream, **overrides)
    document = payload_document(new.before, new.after, new.metadata)
    digest = payload_digest(document)
    leaf = merkle.leaf_hash(canonical_event(new, seq, digest)).hex() if valid_hash else "00" * 32
    return {
        "id": new.id,
        "stream": stream,
        "seq": seq,
        "entity": new.entity,
        "entity_id": new.entity_id,
        "event_type": new.event_type.value,
        "action": new.action,
        "properties": orjson.dumps(list(new.properties)).decode(),
        "actor_id": new.actor.id,
        "actor_name": new.actor.name,
        "actor_ip": new.actor.ip,
        "occurred_at": to_ms(new.occurred_at),
        "recorded_at": to_ms(new.occurred_at),
        "payload": document.decode(),
        "payload_digest": digest,
        "hash": leaf,
        "redacted": False,
    }


def insert_row(store: AuditStore, row: dict[str, Any]) -> None:
    with store.engines.write.begin() as conn:
        conn.execute(insert(events).values(**row))


def renumber(store: AuditStore, stream: str, from_seq: int, shift: int) -> None:
    """Move every event from `from_seq` on by `shift` seqs (through a detour: seq is unique)."""
    with store.engines.write.begin() as conn:
        conn.execute(
            update(events)
            .where(events.c.stream == stream, events.c.seq >= from_seq)
            .values(seq=events.c.seq + 1_000_000)
        )
        conn.execute(
            update(events)
            .where(events.c.stream == stream, events.c.seq >= 1_000_000)
            .values(seq=events.c.seq - 1_000_000 + shift)
        )


def swap(store: AuditStore, stream: str, a: int, b: int) -> None:
    with store.engines.write.begin() as conn:
        for old, new in ((a, -1), (b, a), (-1, b)):
            conn.execute(
                update(events).where(events.c.stream == stream, events.c.seq == old).values(seq=new)
            )


def rehash(store: AuditStore, stream: str, seq: int) -> None:
    """Recompute the leaf hash of an event an attacker changed, from its stored columns."""
    from storage.verify_rows import canonical_row

    with store.engines.write.begin() as conn:
        row = conn.execute(
            select(events).where(events.c.stream == stream, events.c.seq == seq)
        ).one()
        leaf = merkle.leaf_hash(canonical_row(row, stream, seq)).hex()
        conn.execute(update(events).where(events.c.pk == row.pk).values(hash=leaf))


def rebuild_tree(store: AuditStore, stream: str) -> None:
    """Recompute every Merkle node and the head from the stored leaf hashes, as an attacker
    covering their tracks would."""
    with store.engines.write.begin() as conn:
        rows = conn.execute(
            select(events.c.seq, events.c.hash)
            .where(events.c.stream == stream)
            .order_by(events.c.seq)
        ).all()
        leaves = [bytes.fromhex(h) for _, h in rows]
        conn.execute(delete(merkle_nodes).where(merkle_nodes.c.stream == stream))
        nodes = merkle.nodes_for_append(0, leaves, lambda level, index: b"")
        conn.execute(
            insert(merkle_nodes),
            [
                {"stream": stream, "level": n.level, "idx": n.index, "hash": n.hash}
                for n in nodes
                if n.level > 0
            ],
        )
        conn.execute(
            update(streams)
            .where(streams.c.name == stream)
            .values(head_seq=len(leaves), head_hash=merkle.root_from_leaf_hashes(leaves).hex())
        )
