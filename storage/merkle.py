"""Merkle tree maths for the audit store: RFC 9162 §2.1 trees kept as stored perfect nodes.

Each stream is an append-only Merkle Tree Hash (MTH) tree: leaf hash
`SHA-256(0x00 || data)`, node hash `SHA-256(0x01 || left || right)`, and the
root of the empty tree is `SHA-256("")`. Leaves are numbered from 0.

The store persists every node of every *perfect* subtree. Node `(level, index)`
is the root of leaves `[index * 2**level, (index + 1) * 2**level)`; level 0
holds the leaf hashes. A node never changes once its subtree is complete, so
appending only adds rows (`nodes_for_append`), and every root or proof is
assembled from at most O(log n) stored nodes: a range that is not perfect, such
as `[0, n)` or the right half of an RFC split, decomposes into at most
log2(n) + 1 perfect subtrees (`perfect_subtrees`), whose MTH is their right
fold (`root_from_subtrees`).

Everything here is pure: node reads go through a `get_node(level, index)`
callback and nothing is written. The `*_nodes` functions return the node ids a
computation will read, so a store can fetch them in one query and pass
`fetched.__getitem__` as `get_node`.

`root_from_leaf_hashes` and `Frontier` recompute roots from the leaves alone:
they are the reference that `verify` checks the stored nodes and the signed
checkpoints against.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from hashlib import sha256

HASH_SIZE = 32
"""Length in bytes of every leaf, node and root hash."""

EMPTY_ROOT = sha256(b"").digest()
"""MTH of the empty tree (RFC 9162 §2.1.1)."""

NodeId = tuple[int, int]
"""`(level, index)` of a stored perfect node."""

GetNode = Callable[[int, int], bytes]
"""Reads the hash of an existing stored node `(level, index)`."""

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


def leaf_hash(data: bytes) -> bytes:
    """Hash of one leaf: `SHA-256(0x00 || data)`."""
    return sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Hash of an interior node: `SHA-256(0x01 || left || right)`."""
    return sha256(_NODE_PREFIX + left + right).digest()


@dataclass(frozen=True, slots=True)
class Node:
    """A stored perfect node: the root hash of leaves `[index << level, (index + 1) << level)`."""

    level: int
    index: int
    hash: bytes


def _check_hash(value: bytes) -> None:
    if len(value) != HASH_SIZE:
        raise ValueError(f"a hash must be {HASH_SIZE} bytes, got {len(value)}")


def _check_size(size: int) -> None:
    if size < 0:
        raise ValueError(f"tree size must not be negative, got {size}")


def _split(count: int) -> int:
    """RFC 9162's k: the largest power of two smaller than `count` (count >= 2)."""
    return 1 << ((count - 1).bit_length() - 1)


def perfect_subtrees(start: int, end: int) -> list[NodeId]:
    """The perfect subtrees, left to right, that make up leaves `[start, end)`.

    The range must be one the RFC recursion can produce: `start` a multiple of
    the largest power of two not above `end - start`. `[0, n)` always is.
    """
    count = end - start
    if start < 0 or count < 0:
        raise ValueError(f"not a leaf range: [{start}, {end})")
    if count == 0:
        return []
    top = count.bit_length() - 1
    if start & ((1 << top) - 1):
        raise ValueError(f"[{start}, {end}) is not aligned to subtrees of the tree")
    ids: list[NodeId] = []
    position = start
    for level in range(top, -1, -1):
        if count >> level & 1:
            ids.append((level, position >> level))
            position += 1 << level
    return ids


def root_from_subtrees(hashes: Sequence[bytes]) -> bytes:
    """MTH of a range from the hashes of its `perfect_subtrees`, in the same order.

    The RFC split always peels the largest perfect subtree off the left, so the
    MTH is the right fold of the decomposition.
    """
    if not hashes:
        return EMPTY_ROOT
    result = hashes[-1]
    for position in range(len(hashes) - 2, -1, -1):
        result = sha256(_NODE_PREFIX + hashes[position] + result).digest()
    return result


def _read(group: list[NodeId], get_node: GetNode) -> bytes:
    return root_from_subtrees([get_node(level, index) for level, index in group])


def root_nodes(size: int) -> list[NodeId]:
    """The stored nodes that `root(size)` reads; also the frontier `nodes_for_append` reads."""
    _check_size(size)
    return perfect_subtrees(0, size)


def root(size: int, get_node: GetNode) -> bytes:
    """MTH of the first `size` leaves, from at most log2(size) + 1 stored nodes."""
    return _read(root_nodes(size), get_node)


def nodes_for_append(size: int, leaf_hashes: Iterable[bytes], get_node: GetNode) -> list[Node]:
    """Every perfect node completed by appending `leaf_hashes`, in order, to a tree of `size`.

    The result includes the leaves themselves (level 0), and is ordered so that
    every node comes after its children. `get_node` is called only for nodes
    stored before this call (at most one read per node of `root_nodes(size)`).
    """
    _check_size(size)
    created: list[Node] = []
    # A node created here with an even index is the left child of a later one;
    # the newest such node per level is the only one that can still be needed.
    pending_left: dict[int, bytes] = {}
    index = size
    for current in leaf_hashes:
        _check_hash(current)
        created.append(Node(0, index, current))
        level = 0
        position = index
        while position & 1:
            # The left sibling covers leaves [(position - 1) << level, position << level):
            # it was stored before this call exactly when it ends within `size`.
            if position << level <= size:
                left = get_node(level, position - 1)
            else:
                left = pending_left[level]
            current = sha256(_NODE_PREFIX + left + current).digest()
            position >>= 1
            level += 1
            created.append(Node(level, position, current))
        pending_left[level] = current
        index += 1
    return created


def inclusion_proof_nodes(index: int, size: int) -> list[list[NodeId]]:
    """For each hash of PATH(index, D[size]), the stored nodes whose fold gives it.

    Only the sibling of the first step into a perfect subtree can be a
    non-perfect range, so the total is O(log size) nodes.
    """
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of size {size}")
    top_down: list[list[NodeId]] = []
    start, count = 0, size
    while count > 1:
        k = _split(count)
        if index < start + k:
            top_down.append(perfect_subtrees(start + k, start + count))
            count = k
        else:
            top_down.append(perfect_subtrees(start, start + k))
            start += k
            count -= k
    top_down.reverse()
    return top_down


def inclusion_proof(index: int, size: int, get_node: GetNode) -> list[bytes]:
    """RFC 9162 §2.1.3.1 PATH(index, D[size]): the audit path of leaf `index`, bottom up."""
    return [_read(group, get_node) for group in inclusion_proof_nodes(index, size)]


def consistency_proof_nodes(first: int, second: int) -> list[list[NodeId]]:
    """For each hash of PROOF(first, D[second]), the stored nodes whose fold gives it.

    The proof is empty when `first` is 0 or equal to `second`: every tree is
    consistent with the empty tree and with itself.
    """
    if not 0 <= first <= second:
        raise ValueError(f"no consistency proof from size {first} to size {second}")
    if first in (0, second):
        return []
    top_down: list[list[NodeId]] = []
    start, count, old = 0, second, first
    # RFC 9162's flag b: the old tree is itself one node of the new tree only
    # while the recursion has gone left; once it goes right, the verifier needs
    # the subtree hash where the recursion stops.
    old_is_node = True
    while old != count:
        k = _split(count)
        if old <= k:
            top_down.append(perfect_subtrees(start + k, start + count))
            count = k
        else:
            top_down.append(perfect_subtrees(start, start + k))
            start += k
            count -= k
            old -= k
            old_is_node = False
    if not old_is_node:
        top_down.append(perfect_subtrees(start, start + count))
    top_down.reverse()
    return top_down


def consistency_proof(first: int, second: int, get_node: GetNode) -> list[bytes]:
    """RFC 9162 §2.1.4.1 PROOF(first, D[second]), with `first <= second`."""
    return [_read(group, get_node) for group in consistency_proof_nodes(first, second)]


class Frontier:
    """The compact range `[0, size)`: the roots of its perfect subtrees, left to right.

    Feeding leaf hashes in order, `append` costs amortised one node hash and
    `root` at most log2(size); `verify` calls `root` whenever `size` reaches a
    checkpoint, so one pass over the leaves checks every checkpoint. Memory is
    O(log size).
    """

    __slots__ = ("_hashes", "_size")

    def __init__(self) -> None:
        self._hashes: list[bytes] = []
        self._size = 0

    @classmethod
    def from_store(cls, size: int, get_node: GetNode) -> Frontier:
        """The frontier of a stored tree of `size` leaves, to continue from there."""
        frontier = cls()
        frontier._hashes = [get_node(level, index) for level, index in root_nodes(size)]
        frontier._size = size
        return frontier

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    @property
    def subtree_hashes(self) -> tuple[bytes, ...]:
        """Hashes of the nodes `root_nodes(size)`, in the same order."""
        return tuple(self._hashes)

    def append(self, leaf_hash: bytes) -> None:
        """Add the next leaf."""
        _check_hash(leaf_hash)
        hashes = self._hashes
        current = leaf_hash
        position = self._size
        # Each trailing 1 bit of the old size is a perfect subtree that the new
        # leaf completes into its parent.
        while position & 1:
            current = sha256(_NODE_PREFIX + hashes.pop() + current).digest()
            position >>= 1
        hashes.append(current)
        self._size += 1

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """Add leaves in order."""
        for value in leaf_hashes:
            self.append(value)

    def root(self) -> bytes:
        """MTH of the leaves appended so far."""
        return root_from_subtrees(self._hashes)


def root_from_leaf_hashes(leaf_hashes: Iterable[bytes]) -> bytes:
    """MTH of all `leaf_hashes`, recomputed in one pass with O(log n) memory."""
    frontier = Frontier()
    frontier.extend(leaf_hashes)
    return frontier.root()
