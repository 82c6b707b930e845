"""Signed checkpoints: `(stream, size, root, time)` signed with the daemon's Ed25519 key.

`Checkpointer` signs a checkpoint for every stream whose head has moved past
its latest checkpoint; the web app runs it every `integrity.checkpoint_interval`
seconds and once more on a clean shutdown, and the proof route runs it on
demand for an event that no checkpoint covers yet. The root it signs is read
from the stored Merkle nodes and must equal the stream's head hash: a tree that
disagrees with itself is never signed (it is logged, and `verify` says why).

It also assembles the proofs the API serves, because an inclusion proof is
always against a checkpoint.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select

from storage import proofs
from storage.events import format_time, from_ms, to_ms, truncate_to_millis, utc_now
from storage.schema import checkpoints, events, streams
from storage.signing import PublicKey, SigningKey, checkpoint_message
from storage.store import AuditStore

log = logging.getLogger(__name__)

_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX128 = re.compile(r"[0-9a-f]{128}")
_PAGE = 10_000


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed statement that `stream`'s first `size` events have the Merkle root `root`."""

    stream: str
    size: int
    root: str
    signed_at: datetime
    key_id: str
    signature: str

    def message(self) -> bytes:
        return checkpoint_message(self.stream, self.size, self.root, self.signed_at)

    def signed_by(self, key: PublicKey) -> bool:
        """True if `key` made this signature over exactly these values."""
        return self.key_id == key.key_id and key.verify(self.message(), self.signature)

    def to_json(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "size": self.size,
            "root": self.root,
            "signed_at": format_time(self.signed_at),
            "key_id": self.key_id,
            "signature": self.signature,
        }

    @classmethod
    def from_json(cls, body: Any) -> Checkpoint:
        """A checkpoint from the body of `GET /v1/checkpoints/latest`; ValueError when not one."""
        if not isinstance(body, dict):
            raise ValueError("a checkpoint must be a JSON object")
        problems: list[str] = []
        stream, size, root = body.get("stream"), body.get("size"), body.get("root")
        key_id, signature = body.get("key_id"), body.get("signature")
        signed_at = body.get("signed_at")
        if not isinstance(stream, str) or not stream or "\n" in stream:
            problems.append("stream: must be a stream name")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            problems.append("size: must be a whole number >= 0")
        if not isinstance(root, str) or not _HEX64.fullmatch(root):
            problems.append("root: must be 64 lowercase hex digits")
        if not isinstance(key_id, str) or not _HEX64.fullmatch(key_id):
            problems.append("key_id: must be 64 lowercase hex digits")
        if not isinstance(signature, str) or not _HEX128.fullmatch(signature):
            problems.append("signature: must be 128 lowercase hex digits")
        when: datetime | None = None
        if isinstance(signed_at, str):
            try:
                when = datetime.fromisoformat(signed_at)
            except ValueError:
                when = None
        if when is None or when.tzinfo is None:
            problems.append("signed_at: must be an RFC 3339 UTC time")
        if problems:
            raise ValueError("; ".join(problems))
        assert when is not None and isinstance(size, int)
        return cls(
            str(stream), size, str(root), truncate_to_millis(when), str(key_id), str(signature)
        )


def sign_checkpoint(key: SigningKey, stream: str, size: int, root: str) -> Checkpoint:
    signed_at = truncate_to_millis(utc_now())
    signature = key.sign(checkpoint_message(stream, size, root, signed_at))
    return Checkpoint(stream, size, root, signed_at, key.public.key_id, signature)


def latest_checkpoint(conn: Connection, stream: str) -> Checkpoint | None:
    row = conn.execute(
        select(checkpoints)
        .where(checkpoints.c.stream == stream)
        .order_by(checkpoints.c.size.desc(), checkpoints.c.pk.desc())
        .limit(1)
    ).first()
    return _row_to_checkpoint(row) if row is not None else None


def stream_checkpoints(conn: Connection, stream: str, page: int = _PAGE) -> Iterator[Checkpoint]:
    """Every stored checkpoint of `stream`, smallest size first, read a page at a time."""
    after: tuple[int, int] = (-1, -1)
    while True:
        rows = conn.execute(
            select(checkpoints)
            .where(checkpoints.c.stream == stream, checkpoints.c.size >= after[0])
            .order_by(checkpoints.c.size, checkpoints.c.pk)
            .limit(page)
        ).all()
        fresh = [r for r in rows if (int(r.size), int(r.pk)) > after]
        for row in fresh:
            yield _row_to_checkpoint(row)
        if len(rows) < page or not fresh:
            return
        after = (int(fresh[-1].size), int(fresh[-1].pk))


def insert_checkpoint(conn: Connection, checkpoint: Checkpoint) -> None:
    conn.execute(
        checkpoints.insert().values(
            stream=checkpoint.stream,
            size=checkpoint.size,
            root=checkpoint.root,
            signed_at=to_ms(checkpoint.signed_at),
            key_id=checkpoint.key_id,
            signature=checkpoint.signature,
        )
    )


def _row_to_checkpoint(row: Any) -> Checkpoint:
    return Checkpoint(
        stream=row.stream,
        size=int(row.size),
        root=row.root,
        signed_at=from_ms(int(row.signed_at)),
        key_id=row.key_id,
        signature=row.signature,
    )


@dataclass(frozen=True, slots=True)
class InclusionProof:
    event_id: str
    stream: str
    seq: int
    leaf_hash: str
    payload_digest: str
    checkpoint: Checkpoint
    path: list[bytes]

    def to_json(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "stream": self.stream,
            "seq": self.seq,
            "leaf_index": self.seq - 1,
            "leaf_hash": self.leaf_hash,
            "payload_digest": self.payload_digest,
            "tree_size": self.checkpoint.size,
            "root": self.checkpoint.root,
            "checkpoint": self.checkpoint.to_json(),
            "proof": [value.hex() for value in self.path],
        }


class BadSizes(ValueError):
    """The sizes of a consistency proof request do not fit the stream; `field` names which."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class Checkpointer:
    """Signs checkpoints into the store and serves the proofs that rest on them. Thread-safe."""

    def __init__(self, store: AuditStore, key: SigningKey) -> None:
        self._store = store
        self._key = key
        self._lock = threading.Lock()

    @property
    def public_key(self) -> PublicKey:
        return self._key.public

    def sign_moved(self) -> list[Checkpoint]:
        """A checkpoint for every stream whose head is past its latest checkpoint."""
        return self._sign(None)

    def sign_stream(self, stream: str) -> Checkpoint | None:
        """A checkpoint of `stream`'s head, unless its latest checkpoint already has that size."""
        signed = self._sign(stream)
        return signed[0] if signed else None

    def _sign(self, only: str | None) -> list[Checkpoint]:
        signed: list[Checkpoint] = []
        engines = self._store.engines
        with self._lock, engines.exclusive(), engines.write.begin() as conn:
            heads = select(streams.c.name, streams.c.head_seq, streams.c.head_hash)
            if only is not None:
                heads = heads.where(streams.c.name == only)
            latest_sizes = select(checkpoints.c.stream, func.max(checkpoints.c.size)).group_by(
                checkpoints.c.stream
            )
            if only is not None:
                latest_sizes = latest_sizes.where(checkpoints.c.stream == only)
            covered = {name: int(size) for name, size in conn.execute(latest_sizes)}
            for name, head_seq, head_hash in conn.execute(heads).all():
                size = int(head_seq)
                if size == 0 or size <= covered.get(name, 0):
                    continue
                root = proofs.tree_root(conn, name, size).hex()
                if root != head_hash:
                    log.error(
                        "stream %s: the stored Merkle tree of %d events has root %s but the "
                        "stream's head hash is %s; not signing it (run `run_daemon.py verify`)",
                        name,
                        size,
                        root,
                        head_hash,
                    )
                    continue
                checkpoint = sign_checkpoint(self._key, name, size, root)
                insert_checkpoint(conn, checkpoint)
                signed.append(checkpoint)
        for cp in signed:
            log.debug("signed checkpoint of %s at size %d: %s", cp.stream, cp.size, cp.root)
        return signed

    def latest(self, stream: str) -> Checkpoint | None:
        with self._store.engines.read.begin() as conn:
            return latest_checkpoint(conn, stream)

    def inclusion_proof(self, event_id: str) -> InclusionProof | None:
        """The event's audit path in the latest checkpoint of its stream, signing a fresh
        checkpoint first when none covers the event yet. None when the id is unknown."""
        with self._store.engines.read.begin() as conn:
            row = conn.execute(
                select(events.c.stream, events.c.seq, events.c.hash, events.c.payload_digest).where(
                    events.c.id == event_id
                )
            ).first()
            if row is None:
                return None
            stream, seq = row.stream, int(row.seq)
            checkpoint = latest_checkpoint(conn, stream)
        if checkpoint is None or checkpoint.size < seq:
            self.sign_stream(stream)
            checkpoint = self.latest(stream)
            if checkpoint is None or checkpoint.size < seq:
                raise proofs.TreeError(f"stream {stream}: no checkpoint covers seq {seq}")
        with self._store.engines.read.begin() as conn:
            path = proofs.inclusion(conn, stream, seq - 1, checkpoint.size)
        return InclusionProof(event_id, stream, seq, row.hash, row.payload_digest, checkpoint, path)

    def consistency_proof(
        self, stream: str, first: int, second: int
    ) -> tuple[bytes, bytes, list[bytes]] | None:
        """Roots at both sizes and the proof between them; None for an unknown stream,
        BadSizes when the sizes do not fit it."""
        with self._store.engines.read.begin() as conn:
            head = conn.execute(
                select(streams.c.head_seq).where(streams.c.name == stream)
            ).scalar_one_or_none()
            if head is None:
                return None
            if first > second:
                raise BadSizes("first", "must not be larger than second")
            if second > int(head):
                raise BadSizes("second", f"must not be larger than the stream's size ({head})")
            return proofs.consistency(conn, stream, first, second)
