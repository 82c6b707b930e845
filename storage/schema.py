"""The audit store's schema in SQLAlchemy Core: one definition for SQLite and PostgreSQL.

Alembic migrations in `storage/migrations` create exactly this schema (a test
compares them), so a change here always comes with a migration.

Design notes:
- `events.pk` is the global insertion order. Queries page on it (keyset), so a
  page never shifts when new events arrive: new events only ever get larger pks.
- Times are integer milliseconds since the Unix epoch: exact, compact, and they
  compare the same way in both databases.
- The payload (`before`, `after`, `metadata`) is one JSON document with its own
  digest; redaction clears the document and keeps the digest, so the Merkle
  leaf of the event still verifies.
- Every `/v1/events` filter has an index that ends in `pk`, so a filtered page
  is an index range scan in either order.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

# SQLite only makes INTEGER PRIMARY KEY an alias of the rowid (auto-numbered).
PrimaryKeyInt = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData()

events = Table(
    "events",
    metadata,
    Column("pk", PrimaryKeyInt, primary_key=True, autoincrement=True),
    Column("id", String(36), nullable=False),
    Column("stream", String(64), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("entity", String(200), nullable=False),
    Column("entity_id", String(200)),
    Column("event_type", String(6), nullable=False),
    Column("action", String(200)),
    Column("properties", Text, nullable=False),
    Column("actor_id", String(200), nullable=False),
    Column("actor_name", String(200)),
    Column("actor_ip", String(64)),
    Column("occurred_at", BigInteger, nullable=False),
    Column("recorded_at", BigInteger, nullable=False),
    Column("payload", Text),
    Column("payload_digest", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Column("redacted", Boolean, nullable=False, default=False),
    Index("uq_events_id", "id", unique=True),
    Index("uq_events_stream_seq", "stream", "seq", unique=True),
    Index("ix_events_actor", "actor_id", "pk"),
    Index("ix_events_entity", "entity", "entity_id", "pk"),
    Index("ix_events_entity_only", "entity", "pk"),
    Index("ix_events_event_type", "event_type", "pk"),
    Index("ix_events_action", "action", "pk"),
    Index("ix_events_stream", "stream", "pk"),
    Index("ix_events_occurred_at", "occurred_at"),
)

event_properties = Table(
    "event_properties",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("event_pk", BigInteger, primary_key=True),
)

streams = Table(
    "streams",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("head_seq", BigInteger, nullable=False),
    Column("head_hash", String(64)),
    Column("updated_at", BigInteger, nullable=False),
)

merkle_nodes = Table(
    "merkle_nodes",
    metadata,
    Column("stream", String(64), primary_key=True),
    Column("level", Integer, primary_key=True),
    Column("idx", BigInteger, primary_key=True),
    Column("hash", LargeBinary(32), nullable=False),
)

checkpoints = Table(
    "checkpoints",
    metadata,
    Column("pk", PrimaryKeyInt, primary_key=True, autoincrement=True),
    Column("stream", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("root", String(64), nullable=False),
    Column("signed_at", BigInteger, nullable=False),
    Column("key_id", String(64), nullable=False),
    Column("signature", String(128), nullable=False),
    Index("ix_checkpoints_stream", "stream", "size"),
)

capture_positions = Table(
    "capture_positions",
    metadata,
    Column("source", String(64), primary_key=True),
    Column("position", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)
