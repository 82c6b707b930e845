"""The first audit store schema.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

PrimaryKeyInt = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("pk", PrimaryKeyInt, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("stream", sa.String(64), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("entity", sa.String(200), nullable=False),
        sa.Column("entity_id", sa.String(200)),
        sa.Column("event_type", sa.String(6), nullable=False),
        sa.Column("action", sa.String(200)),
        sa.Column("properties", sa.Text, nullable=False),
        sa.Column("actor_id", sa.String(200), nullable=False),
        sa.Column("actor_name", sa.String(200)),
        sa.Column("actor_ip", sa.String(64)),
        sa.Column("occurred_at", sa.BigInteger, nullable=False),
        sa.Column("recorded_at", sa.BigInteger, nullable=False),
        sa.Column("payload", sa.Text),
        sa.Column("payload_digest", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("redacted", sa.Boolean, nullable=False),
    )
    op.create_index("uq_events_id", "events", ["id"], unique=True)
    op.create_index("uq_events_stream_seq", "events", ["stream", "seq"], unique=True)
    op.create_index("ix_events_actor", "events", ["actor_id", "pk"])
    op.create_index("ix_events_entity", "events", ["entity", "entity_id", "pk"])
    op.create_index("ix_events_entity_only", "events", ["entity", "pk"])
    op.create_index("ix_events_event_type", "events", ["event_type", "pk"])
    op.create_index("ix_events_action", "events", ["action", "pk"])
    op.create_index("ix_events_stream", "events", ["stream", "pk"])
    op.create_index("ix_events_occurred_at", "events", ["occurred_at"])
    op.create_table(
        "event_properties",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("event_pk", sa.BigInteger, primary_key=True),
    )
    op.create_table(
        "streams",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("head_seq", sa.BigInteger, nullable=False),
        sa.Column("head_hash", sa.String(64)),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "merkle_nodes",
        sa.Column("stream", sa.String(64), primary_key=True),
        sa.Column("level", sa.Integer, primary_key=True),
        sa.Column("idx", sa.BigInteger, primary_key=True),
        sa.Column("hash", sa.LargeBinary(32), nullable=False),
    )
    op.create_table(
        "checkpoints",
        sa.Column("pk", PrimaryKeyInt, primary_key=True, autoincrement=True),
        sa.Column("stream", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("root", sa.String(64), nullable=False),
        sa.Column("signed_at", sa.BigInteger, nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("signature", sa.String(128), nullable=False),
    )
    op.create_index("ix_checkpoints_stream", "checkpoints", ["stream", "size"])
    op.create_table(
        "capture_positions",
        sa.Column("source", sa.String(64), primary_key=True),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    for table in (
        "capture_positions",
        "checkpoints",
        "merkle_nodes",
        "streams",
        "event_properties",
        "events",
    ):
        op.drop_table(table)
