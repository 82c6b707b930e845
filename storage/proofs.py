"""Merkle roots and RFC 9162 proofs read from the store in O(log n) node reads.

`storage.merkle` says which stored nodes a root or proof needs (`*_nodes`);
`read_nodes` fetches all of them at once, one query per table: level 0 is the
`hash` column of `events` (leaf `i` is the event with `seq` i + 1), higher
levels are rows of `merkle_nodes`. Nothing here writes.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Connection, select, tuple_

from storage import merkle
from storage.merkle import NodeId
from storage.schema import events, merkle_nodes


class TreeError(Exception):
    """A node the tree should have is missing or malformed: the store needs `verify`."""


def read_nodes(conn: Connection, stream: str, ids: Iterable[NodeId]) -> dict[NodeId, bytes]:
    """The hashes of the stored nodes `ids` of `stream`'s tree."""
    wanted = set(ids)
    leaf_seqs = sorted(index + 1 for level, index in wanted if level == 0)
    inner = sorted((level, index) for level, index in wanted if level > 0)
    found: dict[NodeId, bytes] = {}
    if leaf_seqs:
        rows = conn.execute(
            select(events.c.seq, events.c.hash).where(
                events.c.stream == stream, events.c.seq.in_(leaf_seqs)
            )
        )
        for seq, value in rows:
            try:
                found[(0, int(seq) - 1)] = bytes.fromhex(value)
            except ValueError as exc:
                raise TreeError(f"stream {stream}: event seq {seq} has a malformed hash") from exc
    if inner:
        node_rows = conn.execute(
            select(merkle_nodes.c.level, merkle_nodes.c.idx, merkle_nodes.c.hash).where(
                merkle_nodes.c.stream == stream,
                tuple_(merkle_nodes.c.level, merkle_nodes.c.idx).in_(inner),
            )
        )
        for level, index, value in node_rows:
            found[(int(level), int(index))] = bytes(value)
    missing = wanted - found.keys()
    if missing:
        level, index = min(missing)
        raise TreeError(f"stream {stream}: Merkle node (level {level}, index {index}) is missing")
    if any(len(value) != merkle.HASH_SIZE for value in found.values()):
        raise TreeError(f"stream {stream}: a Merkle node is not {merkle.HASH_SIZE} bytes")
    return found


def tree_root(conn: Connection, stream: str, size: int) -> bytes:
    """MTH of the first `size` events of `stream`."""
    nodes = read_nodes(conn, stream, merkle.root_nodes(size))
    return merkle.root(size, lambda level, index: nodes[(level, index)])


def inclusion(conn: Connection, stream: str, index: int, size: int) -> list[bytes]:
    """PATH(index, D[size]) of `stream`'s tree (RFC 9162 §2.1.3.1)."""
    groups = merkle.inclusion_proof_nodes(index, size)
    nodes = read_nodes(conn, stream, (node for group in groups for node in group))
    return merkle.inclusion_proof(index, size, lambda level, i: nodes[(level, i)])


def consistency(
    conn: Connection, stream: str, first: int, second: int
) -> tuple[bytes, bytes, list[bytes]]:
    """The roots at `first` and `second` and PROOF(first, D[second]) (RFC 9162 §2.1.4.1)."""
    groups = merkle.consistency_proof_nodes(first, second)
    ids = [node for group in groups for node in group]
    ids += merkle.root_nodes(first) + merkle.root_nodes(second)
    nodes = read_nodes(conn, stream, ids)

    def get(level: int, index: int) -> bytes:
        return nodes[(level, index)]

    return (
        merkle.root(first, get),
        merkle.root(second, get),
        merkle.consistency_proof(first, second, get),
    )
