"""Tests for storage.merkle (tree maths over stored perfect nodes) and storage.proof_verifier.

Three independent sources of truth: published RFC 6962/9162 test vectors from
transparency-dev/merkle, a recursive implementation written here straight from
the RFC 9162 §2.1 definitions, and the standalone verifier.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from storage import merkle
from storage import proof_verifier as pv

# ---------------------------------------------------------------------------
# Test vectors, copied from https://github.com/transparency-dev/merkle (Go):
#   testonly/constants.go (commit 582a6ad190b6848f1d26f8bf08ddef29955d9db1):
#     LeafInputs(), NodeHashes(), RootHashes(), CompactTrees()
#   proof/verify_test.go (commit 02194e9afb6c1d95b5381350007963aa70fff472):
#     inclusionProofs, consistencyProofs, and the corruptions applied to them
#   proof/proof_test.go (commit 02a3e2029520f515596d5238c54fb0ac9e19bff4):
#     node ids of proofs in TestInclusion and TestConsistency
# ---------------------------------------------------------------------------

LEAF_INPUTS = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]

# NODE_HASHES[level][index], every perfect node of the tree of the 8 leaves.
NODE_HASHES = [
    [
        bytes.fromhex(h)
        for h in (
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
            "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
        )
    ],
    [
        bytes.fromhex(h)
        for h in (
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        )
    ],
    [
        bytes.fromhex(h)
        for h in (
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        )
    ],
    [bytes.fromhex("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328")],
]

# ROOT_HASHES[size], for the trees of the first `size` leaves.
ROOT_HASHES = [
    bytes.fromhex(h)
    for h in (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    )
]

_NH = NODE_HASHES
# COMPACT_TREES[size]: the perfect subtrees of [0, size), left to right.
COMPACT_TREES: list[list[bytes]] = [
    [],
    [_NH[0][0]],
    [_NH[1][0]],
    [_NH[1][0], _NH[0][2]],
    [_NH[2][0]],
    [_NH[2][0], _NH[0][4]],
    [_NH[2][0], _NH[1][2]],
    [_NH[2][0], _NH[1][2], _NH[0][6]],
    [_NH[3][0]],
]

SHA256_SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")

# (leaf, size, proof) with `leaf` numbered from 1, as in verify_test.go.
INCLUSION_VECTORS: list[tuple[int, int, list[str]]] = [
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (3, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        2,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (1, 1, []),
]

CONSISTENCY_VECTORS: list[tuple[int, int, list[str]]] = [
    (1, 1, []),
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        7,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
]

# proof_test.go lists the node ids of a proof bottom up; the ids in
# [rehash_begin, rehash_end) are folded into one proof hash, listed from the
# smallest (rightmost) subtree up. (size, index, ids, rehash_begin, rehash_end).
INCLUSION_NODE_VECTORS: list[tuple[int, int, list[tuple[int, int]], int, int]] = [
    (1, 0, [], 0, 0),
    (2, 0, [(0, 1)], 0, 0),
    (2, 1, [(0, 0)], 0, 0),
    (3, 1, [(0, 0), (0, 2)], 0, 0),
    (7, 0, [(0, 1), (1, 1), (0, 6), (1, 2)], 2, 4),
    (7, 1, [(0, 0), (1, 1), (0, 6), (1, 2)], 2, 4),
    (7, 2, [(0, 3), (1, 0), (0, 6), (1, 2)], 2, 4),
    (7, 3, [(0, 2), (1, 0), (0, 6), (1, 2)], 2, 4),
    (7, 4, [(0, 5), (0, 6), (2, 0)], 0, 0),
    (7, 5, [(0, 4), (0, 6), (2, 0)], 0, 0),
    (7, 6, [(1, 2), (2, 0)], 0, 0),
    (4, 2, [(0, 3), (1, 0)], 0, 0),
    (5, 3, [(0, 2), (1, 0), (0, 4)], 0, 0),
    (6, 3, [(0, 2), (1, 0), (1, 2)], 0, 0),
    (6, 4, [(0, 5), (2, 0)], 0, 0),
    (15, 10, [(0, 11), (1, 4), (0, 14), (1, 6), (3, 0)], 2, 4),
    (31, 24, [(0, 25), (1, 13), (0, 30), (1, 14), (3, 2), (4, 0)], 2, 4),
    (
        95,
        81,
        [(0, 80), (1, 41), (2, 21), (0, 94), (1, 46), (2, 22), (4, 4), (6, 0)],
        3,
        6,
    ),
]

# (size1, size2, ids, rehash_begin, rehash_end), same conventions.
CONSISTENCY_NODE_VECTORS: list[tuple[int, int, list[tuple[int, int]], int, int]] = [
    (1, 2, [(0, 1)], 0, 0),
    (1, 4, [(0, 1), (1, 1)], 0, 0),
    (1, 6, [(0, 1), (1, 1), (1, 2)], 0, 0),
    (2, 3, [(0, 2)], 0, 0),
    (2, 8, [(1, 1), (2, 1)], 0, 0),
    (3, 7, [(0, 2), (0, 3), (1, 0), (0, 6), (1, 2)], 3, 5),
    (4, 7, [(0, 6), (1, 2)], 0, 2),
    (5, 7, [(0, 4), (0, 5), (0, 6), (2, 0)], 0, 0),
    (6, 7, [(1, 2), (0, 6), (2, 0)], 0, 0),
    (7, 8, [(0, 6), (0, 7), (1, 2), (2, 0)], 0, 0),
    (1, 1, [], 0, 0),
    (2, 2, [], 0, 0),
    (3, 3, [], 0, 0),
    (4, 4, [], 0, 0),
    (5, 5, [], 0, 0),
    (7, 7, [], 0, 0),
    (8, 8, [], 0, 0),
    (2, 4, [(1, 1)], 0, 0),
    (3, 5, [(0, 2), (0, 3), (1, 0), (0, 4)], 0, 0),
    (3, 6, [(0, 2), (0, 3), (1, 0), (1, 2)], 0, 0),
    (4, 6, [(1, 2)], 0, 0),
    (1, 7, [(0, 1), (1, 1), (0, 6), (1, 2)], 2, 4),
    (10, 15, [(1, 4), (1, 5), (0, 14), (1, 6), (3, 0)], 2, 4),
    (24, 31, [(3, 2), (0, 30), (1, 14), (2, 6), (4, 0)], 1, 4),
    (
        81,
        95,
        [(0, 80), (0, 81), (1, 41), (2, 21), (0, 94), (1, 46), (2, 22), (4, 4), (6, 0)],
        4,
        7,
    ),
]


# ---------------------------------------------------------------------------
# Reference implementation, written from the definitions of RFC 9162 §2.1.
# ---------------------------------------------------------------------------


def ref_mth(entries: Sequence[bytes]) -> bytes:
    """MTH(D[n]) of §2.1.1."""
    n = len(entries)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + entries[0]).digest()
    k = ref_split(n)
    return hashlib.sha256(b"\x01" + ref_mth(entries[:k]) + ref_mth(entries[k:])).digest()


def ref_split(n: int) -> int:
    """The largest power of two smaller than n."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_path(m: int, entries: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n]) of §2.1.3.1."""
    n = len(entries)
    if n == 1:
        return []
    k = ref_split(n)
    if m < k:
        return [*ref_path(m, entries[:k]), ref_mth(entries[k:])]
    return [*ref_path(m - k, entries[k:]), ref_mth(entries[:k])]


def ref_proof(m: int, entries: Sequence[bytes]) -> list[bytes]:
    """PROOF(m, D[n]) of §2.1.4.1, taken as empty for m = 0 and m = n."""
    if m == 0:
        return []
    return ref_subproof(m, entries, True)


def ref_subproof(m: int, entries: Sequence[bytes], complete: bool) -> list[bytes]:
    n = len(entries)
    if m == n:
        return [] if complete else [ref_mth(entries)]
    k = ref_split(n)
    if m <= k:
        return [*ref_subproof(m, entries[:k], complete), ref_mth(entries[k:])]
    return [*ref_subproof(m - k, entries[k:], False), ref_mth(entries[:k])]


# ---------------------------------------------------------------------------
# A node store like the audit store's: a dict filled by nodes_for_append.
# ---------------------------------------------------------------------------


class NodeStore:
    def __init__(self) -> None:
        self.nodes: dict[tuple[int, int], bytes] = {}
        self.size = 0
        self.reads: list[tuple[int, int]] = []

    def get(self, level: int, index: int) -> bytes:
        self.reads.append((level, index))
        return self.nodes[(level, index)]

    def append(self, leaf_hashes: Sequence[bytes]) -> list[merkle.Node]:
        created = merkle.nodes_for_append(self.size, leaf_hashes, self.get)
        for node in created:
            assert (node.level, node.index) not in self.nodes, node
            self.nodes[(node.level, node.index)] = node.hash
        self.size += len(leaf_hashes)
        return created

    def reader(self, size: int) -> Callable[[int, int], bytes]:
        """A get_node that fails on any node outside the tree of `size` leaves."""

        def get(level: int, index: int) -> bytes:
            assert (index + 1) << level <= size, (level, index, size)
            return self.get(level, index)

        return get


def build_store(leaf_hashes: Sequence[bytes], rng: random.Random, max_chunk: int = 9) -> NodeStore:
    store = NodeStore()
    position = 0
    while position < len(leaf_hashes):
        chunk = rng.randint(1, max_chunk)
        store.append(leaf_hashes[position : position + chunk])
        position += chunk
    return store


def perfect_node_ids(size: int) -> set[tuple[int, int]]:
    return {(level, index) for level in range(size.bit_length()) for index in range(size >> level)}


def expected_groups(
    ids: list[tuple[int, int]], begin: int, end: int
) -> list[list[tuple[int, int]]]:
    """proof_test.go's ids and rehash range, as merkle's groups of subtrees left to right."""
    groups = [[node] for node in ids[:begin]]
    if end > begin:
        groups.append(list(reversed(ids[begin:end])))
    groups.extend([node] for node in ids[end:])
    return groups


VECTOR_LEAF_HASHES = [merkle.leaf_hash(data) for data in LEAF_INPUTS]


def vector_store() -> NodeStore:
    store = NodeStore()
    store.append(VECTOR_LEAF_HASHES)
    return store


# ---------------------------------------------------------------------------
# Against the published vectors
# ---------------------------------------------------------------------------


def test_hashes_of_the_vector_leaves() -> None:
    assert [merkle.leaf_hash(data) for data in LEAF_INPUTS] == NODE_HASHES[0]
    assert [pv.leaf_hash(data) for data in LEAF_INPUTS] == NODE_HASHES[0]
    assert merkle.node_hash(NODE_HASHES[0][0], NODE_HASHES[0][1]) == NODE_HASHES[1][0]
    assert merkle.root_from_leaf_hashes([]) == ROOT_HASHES[0]
    assert merkle.root_from_subtrees([]) == ROOT_HASHES[0]


@pytest.mark.parametrize("chunks", [[1] * 8, [3, 5], [8], [2, 1, 4, 1], [0, 7, 0, 1]])
def test_stored_nodes_are_the_vector_node_hashes(chunks: list[int]) -> None:
    store = NodeStore()
    position = 0
    for chunk in chunks:
        store.append(VECTOR_LEAF_HASHES[position : position + chunk])
        position += chunk
    expected = {
        (level, index): value
        for level, row in enumerate(NODE_HASHES)
        for index, value in enumerate(row)
    }
    assert store.nodes == expected


@pytest.mark.parametrize("size", range(9))
def test_roots_are_the_vector_roots(size: int) -> None:
    store = vector_store()
    assert merkle.root(size, store.reader(size)) == ROOT_HASHES[size]
    assert merkle.root_from_leaf_hashes(VECTOR_LEAF_HASHES[:size]) == ROOT_HASHES[size]
    assert merkle.root_from_leaf_hashes(iter(VECTOR_LEAF_HASHES[:size])) == ROOT_HASHES[size]


def test_frontier_passes_through_the_vector_roots_and_compact_trees() -> None:
    frontier = merkle.Frontier()
    assert frontier.root() == ROOT_HASHES[0]
    for size, value in enumerate(VECTOR_LEAF_HASHES, start=1):
        frontier.append(value)
        assert frontier.size == size
        assert frontier.root() == ROOT_HASHES[size]
        assert list(frontier.subtree_hashes) == COMPACT_TREES[size]
    store = vector_store()
    for size in range(9):
        resumed = merkle.Frontier.from_store(size, store.reader(size))
        assert list(resumed.subtree_hashes) == COMPACT_TREES[size]
        resumed.extend(VECTOR_LEAF_HASHES[size:])
        assert resumed.root() == ROOT_HASHES[8]


def corrupt_inclusion(
    index: int, size: int, proof: list[bytes], root: bytes, leaf: bytes
) -> list[tuple[str, tuple[bytes, int, int, list[bytes], bytes]]]:
    """The probes of corruptInclusionProof in verify_test.go, as verify_inclusion arguments."""
    probes = [
        ("index - 1", (leaf, index - 1, size, proof, root)),
        ("index + 1", (leaf, index + 1, size, proof, root)),
        ("index ^ 2", (leaf, index ^ 2, size, proof, root)),
        ("size * 2", (leaf, index, size * 2, proof, root)),
        ("size / 2", (leaf, index, size // 2, proof, root)),
        ("wrong leaf", (b"WrongLeaf", index, size, proof, root)),
        ("empty root", (leaf, index, size, proof, merkle.EMPTY_ROOT)),
        ("random root", (leaf, index, size, proof, SHA256_SOME_HASH)),
        ("trailing garbage", (leaf, index, size, [*proof, b""], root)),
        ("trailing root", (leaf, index, size, [*proof, root], root)),
        ("preceding garbage", (leaf, index, size, [b"", *proof], root)),
        ("preceding root", (leaf, index, size, [root, *proof], root)),
    ]
    for position in range(len(proof)):
        wrong = list(proof)
        wrong[position] = bytes([wrong[position][0] ^ 8]) + wrong[position][1:]
        probes.append((f"modified proof[{position}] bit 3", (leaf, index, size, wrong, root)))
    if proof:
        probes.append(("removed component", (leaf, index, size, proof[:-1], root)))
    if len(proof) > 1:
        wrong = [proof[0], SHA256_SOME_HASH, *proof[1:]]
        probes.append(("inserted component", (leaf, index, size, wrong, root)))
    return probes


@pytest.mark.parametrize(("leaf", "size", "proof_hex"), INCLUSION_VECTORS)
def test_inclusion_vectors(leaf: int, size: int, proof_hex: list[str]) -> None:
    index = leaf - 1
    expected = [bytes.fromhex(h) for h in proof_hex]
    store = vector_store()
    assert merkle.inclusion_proof(index, size, store.reader(size)) == expected
    root = ROOT_HASHES[size]
    leaf_hash = VECTOR_LEAF_HASHES[index]
    assert pv.verify_inclusion(leaf_hash, index, size, expected, root)
    accepted = [
        name
        for name, args in corrupt_inclusion(index, size, expected, root, leaf_hash)
        if pv.verify_inclusion(*args)
    ]
    assert accepted == []


def corrupt_consistency(
    first: int, second: int, first_root: bytes, second_root: bytes, proof: list[bytes]
) -> list[tuple[str, tuple[int, int, bytes, bytes, list[bytes]]]]:
    """The probes of corruptConsistencyProof in verify_test.go, as verify_consistency arguments."""
    probes = [
        ("first - 1", (first - 1, second, first_root, second_root, proof)),
        ("first + 1", (first + 1, second, first_root, second_root, proof)),
        ("first ^ 2", (first ^ 2, second, first_root, second_root, proof)),
        ("second * 2", (first, second * 2, first_root, second_root, proof)),
        ("second / 2", (first, second // 2, first_root, second_root, proof)),
        ("wrong first root", (first, second, b"WrongRoot", second_root, proof)),
        ("wrong second root", (first, second, first_root, b"WrongRoot", proof)),
        ("swapped roots", (first, second, second_root, first_root, proof)),
        ("empty proof", (first, second, first_root, second_root, [])),
        ("trailing garbage", (first, second, first_root, second_root, [*proof, b""])),
        ("trailing first root", (first, second, first_root, second_root, [*proof, first_root])),
        ("trailing second root", (first, second, first_root, second_root, [*proof, second_root])),
        ("preceding garbage", (first, second, first_root, second_root, [b"", *proof])),
        ("preceding first root", (first, second, first_root, second_root, [first_root, *proof])),
        ("preceding second root", (first, second, first_root, second_root, [second_root, *proof])),
        ("preceding proof[0]", (first, second, first_root, second_root, [proof[0], *proof])),
        ("truncated proof", (first, second, first_root, second_root, proof[:-1])),
    ]
    for position in range(len(proof)):
        wrong = list(proof)
        wrong[position] = bytes([wrong[position][0] ^ 16]) + wrong[position][1:]
        probes.append(
            (f"modified proof[{position}] bit 4", (first, second, first_root, second_root, wrong))
        )
    return probes


@pytest.mark.parametrize(("first", "second", "proof_hex"), CONSISTENCY_VECTORS)
def test_consistency_vectors(first: int, second: int, proof_hex: list[str]) -> None:
    expected = [bytes.fromhex(h) for h in proof_hex]
    store = vector_store()
    assert merkle.consistency_proof(first, second, store.reader(second)) == expected
    first_root, second_root = ROOT_HASHES[first], ROOT_HASHES[second]
    assert pv.verify_consistency(first, second, first_root, second_root, expected)
    if expected:
        accepted = [
            name
            for name, args in corrupt_consistency(first, second, first_root, second_root, expected)
            if pv.verify_consistency(*args)
        ]
        assert accepted == []


@pytest.mark.parametrize(("size", "index", "ids", "begin", "end"), INCLUSION_NODE_VECTORS)
def test_inclusion_reads_the_vector_nodes(
    size: int, index: int, ids: list[tuple[int, int]], begin: int, end: int
) -> None:
    assert merkle.inclusion_proof_nodes(index, size) == expected_groups(ids, begin, end)


@pytest.mark.parametrize(("first", "second", "ids", "begin", "end"), CONSISTENCY_NODE_VECTORS)
def test_consistency_reads_the_vector_nodes(
    first: int, second: int, ids: list[tuple[int, int]], begin: int, end: int
) -> None:
    assert merkle.consistency_proof_nodes(first, second) == expected_groups(ids, begin, end)


@pytest.mark.parametrize(("index", "size"), [(0, 0), (1, 0), (2, 1), (8, 7), (-1, 3)])
def test_inclusion_proof_of_a_leaf_outside_the_tree_is_refused(index: int, size: int) -> None:
    with pytest.raises(ValueError, match="not in a tree"):
        merkle.inclusion_proof_nodes(index, size)


@pytest.mark.parametrize(("first", "second"), [(5, 0), (9, 8), (-1, 3)])
def test_consistency_proof_back_in_time_is_refused(first: int, second: int) -> None:
    with pytest.raises(ValueError, match="no consistency proof"):
        merkle.consistency_proof_nodes(first, second)


def test_verify_inclusion_single_entry() -> None:
    """TestVerifyInclusionSingleEntry: a one-leaf tree's root is its leaf hash."""
    value = pv.leaf_hash(b"data")
    assert pv.verify_inclusion(value, 0, 1, [], value)
    assert not pv.verify_inclusion(b"", 0, 1, [], value)
    assert not pv.verify_inclusion(value, 0, 1, [], b"")
    assert not pv.verify_inclusion(b"", 0, 1, [], b"")


@pytest.mark.parametrize(("index", "size"), [(0, 0), (0, 1), (1, 0), (2, 1)])
def test_verify_inclusion_rejects_invalid_root_or_leaf(index: int, size: int) -> None:
    """TestVerifyInclusion's probes with an empty proof."""
    assert not pv.verify_inclusion(SHA256_SOME_HASH, index, size, [], b"")
    assert not pv.verify_inclusion(b"", index, size, [], merkle.EMPTY_ROOT)
    assert not pv.verify_inclusion(SHA256_SOME_HASH, index, size, [], merkle.EMPTY_ROOT)


_ROOT1 = hashlib.sha256(b"don't care 1").digest()
_ROOT2 = hashlib.sha256(b"don't care 2").digest()
_EMPTY = merkle.EMPTY_ROOT


@pytest.mark.parametrize(
    ("first", "second", "first_root", "second_root", "proof", "valid"),
    [
        (0, 0, _ROOT1, _ROOT2, [], False),
        (1, 1, _ROOT1, _ROOT2, [], False),
        # Deviation from TestVerifyConsistency: Go accepts any root for size 0;
        # here it must be the empty tree's, the only tree of size 0.
        (0, 0, _EMPTY, _EMPTY, [], True),
        (0, 1, _EMPTY, _ROOT2, [], True),
        (0, 1, _ROOT1, _ROOT2, [], False),
        (1, 1, _ROOT2, _ROOT2, [], True),
        (1, 0, _ROOT1, _ROOT2, [], False),
        (2, 1, _ROOT1, _ROOT2, [], False),
        (1, 2, _ROOT1, _ROOT2, [], False),
        (0, 0, _EMPTY, _ROOT2, [], False),
        (1, 1, _EMPTY, _ROOT2, [], False),
        (0, 0, _EMPTY, _EMPTY, [_EMPTY], False),
        (0, 1, _EMPTY, _EMPTY, [_EMPTY], False),
        (1, 1, _EMPTY, _EMPTY, [_EMPTY], False),
    ],
    ids=lambda value: value.hex()[:8] if isinstance(value, bytes) else None,
)
def test_verify_consistency_edge_cases(
    first: int, second: int, first_root: bytes, second_root: bytes, proof: list[bytes], valid: bool
) -> None:
    assert pv.verify_consistency(first, second, first_root, second_root, proof) is valid


# ---------------------------------------------------------------------------
# Against the RFC reference, every size up to 70
# ---------------------------------------------------------------------------

MAX_REFERENCE_SIZE = 70
REFERENCE_DATA = [b"leaf %d" % i for i in range(MAX_REFERENCE_SIZE)]
REFERENCE_LEAF_HASHES = [merkle.leaf_hash(data) for data in REFERENCE_DATA]


@pytest.fixture(scope="module")
def reference_store() -> NodeStore:
    return build_store(REFERENCE_LEAF_HASHES, random.Random(9162))


@pytest.fixture(scope="module")
def reference_roots() -> list[bytes]:
    return [ref_mth(REFERENCE_DATA[:size]) for size in range(MAX_REFERENCE_SIZE + 1)]


def test_roots_match_the_reference(
    reference_store: NodeStore, reference_roots: list[bytes]
) -> None:
    frontier = merkle.Frontier()
    for size in range(MAX_REFERENCE_SIZE + 1):
        expected = reference_roots[size]
        assert merkle.root(size, reference_store.reader(size)) == expected
        assert merkle.root_from_leaf_hashes(REFERENCE_LEAF_HASHES[:size]) == expected
        assert frontier.root() == expected
        if size < MAX_REFERENCE_SIZE:
            frontier.append(REFERENCE_LEAF_HASHES[size])


def test_inclusion_proofs_match_the_reference(
    reference_store: NodeStore, reference_roots: list[bytes]
) -> None:
    for size in range(1, MAX_REFERENCE_SIZE + 1):
        entries = REFERENCE_DATA[:size]
        for index in range(size):
            proof = merkle.inclusion_proof(index, size, reference_store.reader(size))
            assert proof == ref_path(index, entries), (index, size)
            leaf = REFERENCE_LEAF_HASHES[index]
            assert pv.verify_inclusion(leaf, index, size, proof, reference_roots[size])


def test_consistency_proofs_match_the_reference(
    reference_store: NodeStore, reference_roots: list[bytes]
) -> None:
    for second in range(MAX_REFERENCE_SIZE + 1):
        entries = REFERENCE_DATA[:second]
        for first in range(second + 1):
            proof = merkle.consistency_proof(first, second, reference_store.reader(second))
            assert proof == ref_proof(first, entries), (first, second)
            assert pv.verify_consistency(
                first, second, reference_roots[first], reference_roots[second], proof
            )


# ---------------------------------------------------------------------------
# Costs: nodes written, nodes read, hashes computed
# ---------------------------------------------------------------------------


def test_append_creates_exactly_the_perfect_nodes() -> None:
    rng = random.Random(6962)
    leaves = [merkle.leaf_hash(b"%d" % i) for i in range(300)]
    for size in [*range(65), 127, 128, 129, 255, 256, 257, 300]:
        store = build_store(leaves[:size], rng, max_chunk=rng.choice([1, 3, 17, 64]))
        assert set(store.nodes) == perfect_node_ids(size)
        assert len(store.nodes) == 2 * size - bin(size).count("1")


def test_append_reads_only_the_old_frontier() -> None:
    rng = random.Random(1)
    store = NodeStore()
    while store.size < 5000:
        size = store.size
        store.reads.clear()
        chunk = rng.choice([1, 1, 2, 3, 7, 64, 300])
        created = store.append([rng.randbytes(32) for _ in range(chunk)])
        assert len(store.reads) == len(set(store.reads))
        assert set(store.reads) <= set(merkle.root_nodes(size))
        assert len(store.reads) <= bin(size).count("1")
        # every node comes after its children, so a store may write in order
        seen: set[tuple[int, int]] = set()
        for node in created:
            if node.level:
                children = {(node.level - 1, 2 * node.index), (node.level - 1, 2 * node.index + 1)}
                assert children <= seen | set(store.nodes)
            seen.add((node.level, node.index))


def test_roots_and_proofs_read_logarithmically_many_nodes() -> None:
    rng = random.Random(2)
    store = build_store([rng.randbytes(32) for _ in range(5000)], rng, max_chunk=500)
    for _ in range(300):
        second = rng.randint(1, store.size)
        bound = 2 * second.bit_length() + 1
        store.reads.clear()
        merkle.root(second, store.reader(second))
        assert len(store.reads) == bin(second).count("1")
        store.reads.clear()
        merkle.inclusion_proof(rng.randrange(second), second, store.reader(second))
        assert len(store.reads) <= bound
        store.reads.clear()
        merkle.consistency_proof(rng.randint(0, second), second, store.reader(second))
        assert len(store.reads) <= bound


class CountingSha256:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, data: bytes = b"") -> hashlib._Hash:
        self.calls += 1
        return hashlib.sha256(data)


def test_one_hash_per_new_node(monkeypatch: pytest.MonkeyPatch) -> None:
    counter = CountingSha256()
    monkeypatch.setattr(merkle, "sha256", counter)
    rng = random.Random(3)
    store = NodeStore()
    frontier = merkle.Frontier()
    while store.size < 3000:
        batch = [rng.randbytes(32) for _ in range(rng.randint(1, 100))]
        counter.calls = 0
        created = store.append(batch)
        assert counter.calls == len(created) - len(batch)
        counter.calls = 0
        frontier.extend(batch)
        assert counter.calls == len(created) - len(batch)
        counter.calls = 0
        assert frontier.root() == merkle.root(store.size, store.get)
        assert counter.calls == 2 * (bin(store.size).count("1") - 1)


# ---------------------------------------------------------------------------
# Random trees (hypothesis)
# ---------------------------------------------------------------------------


@st.composite
def trees(draw: st.DrawFn, max_size: int = 300) -> tuple[NodeStore, list[bytes], list[int]]:
    """A store filled in random batches, with the leaf hashes and the batch sizes."""
    batches = draw(st.lists(st.integers(0, 40), min_size=1, max_size=12))
    total = min(sum(batches), max_size)
    # Distinct leaves: a repeated leaf would make "wrong index" a right one.
    leaves = [merkle.leaf_hash(b"%d" % i) for i in range(total)]
    store = NodeStore()
    position = 0
    for batch in batches:
        store.append(leaves[position : position + batch])
        position = min(position + batch, total)
    return store, leaves, batches


@settings(deadline=None)
@given(trees())
def test_random_appends_agree_with_the_frontier(
    tree: tuple[NodeStore, list[bytes], list[int]],
) -> None:
    store, leaves, batches = tree
    frontier = merkle.Frontier()
    position = 0
    for batch in batches:
        frontier.extend(leaves[position : position + batch])
        position = min(position + batch, len(leaves))
        assert frontier.size == position
        assert frontier.root() == merkle.root(position, store.reader(position))
    assert set(store.nodes) == perfect_node_ids(len(leaves))
    assert merkle.root_from_leaf_hashes(leaves) == merkle.root(store.size, store.get)


@settings(deadline=None)
@given(trees(), st.data())
def test_random_inclusion_proofs(
    tree: tuple[NodeStore, list[bytes], list[int]], data: st.DataObject
) -> None:
    store, leaves, _ = tree
    if not leaves:
        return
    size = data.draw(st.integers(1, len(leaves)), label="size")
    index = data.draw(st.integers(0, size - 1), label="index")
    roots = {s: merkle.root(s, store.get) for s in range(len(leaves) + 1)}
    proof = merkle.inclusion_proof(index, size, store.reader(size))
    leaf, root = leaves[index], roots[size]
    assert pv.verify_inclusion(leaf, index, size, proof, root)

    if proof:
        position = data.draw(st.integers(0, len(proof) - 1), label="element")
        bit = data.draw(st.integers(0, 8 * merkle.HASH_SIZE - 1), label="bit")
        flipped = list(proof)
        value = int.from_bytes(flipped[position], "big") ^ (1 << bit)
        flipped[position] = value.to_bytes(merkle.HASH_SIZE, "big")
        assert not pv.verify_inclusion(leaf, index, size, flipped, root)
    wrong_index = data.draw(st.integers(0, 2 * size).filter(lambda i: i != index), label="wrong")
    assert not pv.verify_inclusion(leaf, wrong_index, size, proof, root)
    # A proof fits more than one size (the reason a checkpoint signs size and
    # root together), but never a wrong size with that size's own root...
    wrong_size = data.draw(st.integers(1, len(leaves)), label="wrong size")
    if wrong_size != size:
        assert not pv.verify_inclusion(leaf, index, wrong_size, proof, roots[wrong_size])
    # ...and never one with a different number of levels.
    assert not pv.verify_inclusion(leaf, index, size * 2, proof, root)
    assert not pv.verify_inclusion(leaf, index, size // 2, proof, root)
    other_root = data.draw(st.binary(min_size=32, max_size=32).filter(lambda r: r != root))
    assert not pv.verify_inclusion(leaf, index, size, proof, other_root)
    assert not pv.verify_inclusion(leaf, index, size, [*proof, root], root)
    if proof:
        assert not pv.verify_inclusion(leaf, index, size, proof[:-1], root)


@settings(deadline=None)
@given(trees(), st.data())
def test_random_consistency_proofs(
    tree: tuple[NodeStore, list[bytes], list[int]], data: st.DataObject
) -> None:
    store, leaves, _ = tree
    second = data.draw(st.integers(0, len(leaves)), label="second")
    first = data.draw(st.integers(0, second), label="first")
    roots = {s: merkle.root(s, store.get) for s in range(len(leaves) + 1)}
    proof = merkle.consistency_proof(first, second, store.reader(second))
    assert pv.verify_consistency(first, second, roots[first], roots[second], proof)
    if not 0 < first < second:
        assert proof == []
        return

    position = data.draw(st.integers(0, len(proof) - 1), label="element")
    bit = data.draw(st.integers(0, 8 * merkle.HASH_SIZE - 1), label="bit")
    flipped = list(proof)
    value = int.from_bytes(flipped[position], "big") ^ (1 << bit)
    flipped[position] = value.to_bytes(merkle.HASH_SIZE, "big")
    assert not pv.verify_consistency(first, second, roots[first], roots[second], flipped)

    wrong_first = data.draw(st.integers(0, second).filter(lambda s: s != first), label="wrong 1st")
    assert not pv.verify_consistency(wrong_first, second, roots[wrong_first], roots[second], proof)
    wrong_second = data.draw(
        st.integers(first, len(leaves)).filter(lambda s: s != second), label="wrong 2nd"
    )
    assert not pv.verify_consistency(first, wrong_second, roots[first], roots[wrong_second], proof)
    assert not pv.verify_consistency(first, second, roots[second], roots[first], proof)
    other_root = data.draw(st.binary(min_size=32, max_size=32))
    if other_root != roots[first]:
        assert not pv.verify_consistency(first, second, other_root, roots[second], proof)
    if other_root != roots[second]:
        assert not pv.verify_consistency(first, second, roots[first], other_root, proof)
    assert not pv.verify_consistency(first, second, roots[first], roots[second], proof[:-1])
    assert not pv.verify_consistency(
        first, second, roots[first], roots[second], [*proof, roots[second]]
    )


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 13])
def test_proofs_longer_than_the_tree_is_deep_are_rejected(size: int) -> None:
    """An extra element fits roots one level up; only the proof length catches it."""
    store = build_store(REFERENCE_LEAF_HASHES[:size], random.Random(size))
    extra = SHA256_SOME_HASH
    index = size - 1
    proof = merkle.inclusion_proof(index, size, store.get)
    root = merkle.root(size, store.get)
    leaf = REFERENCE_LEAF_HASHES[index]
    assert pv.verify_inclusion(leaf, index, size, proof, root)
    raised = merkle.node_hash(extra, root)
    assert not pv.verify_inclusion(leaf, index, size, [*proof, extra], raised)

    first = size // 2 + 1
    proof = merkle.consistency_proof(first, size, store.get)
    first_root = merkle.root(first, store.get)
    raised_first = merkle.node_hash(extra, first_root)
    if first < size:
        assert pv.verify_consistency(first, size, first_root, root, proof)
        assert not pv.verify_consistency(first, size, raised_first, raised, [*proof, extra])


_junk = st.one_of(
    st.binary(max_size=40),
    st.binary(min_size=32, max_size=32),
    st.none(),
    st.text(max_size=40),
    st.integers(),
    st.floats(),
    st.booleans(),
    st.lists(st.binary(max_size=40), max_size=4),
)
_sizes = st.one_of(st.integers(-5, 70), st.integers(), st.none(), st.floats(), st.text(max_size=3))
_proofs = st.one_of(
    st.lists(st.one_of(st.binary(min_size=32, max_size=32), _junk), max_size=70),
    _junk,
    st.tuples(st.binary(min_size=32, max_size=32)),
)


@given(_junk, _sizes, _sizes, _proofs, _junk)
def test_verify_inclusion_never_raises(
    leaf: object, index: object, size: object, proof: object, root: object
) -> None:
    assert pv.verify_inclusion(leaf, index, size, proof, root) in (True, False)  # type: ignore[arg-type]


@given(_sizes, _sizes, _junk, _junk, _proofs)
def test_verify_consistency_never_raises(
    first: object, second: object, first_root: object, second_root: object, proof: object
) -> None:
    result = pv.verify_consistency(first, second, first_root, second_root, proof)  # type: ignore[arg-type]
    assert result in (True, False)


@given(
    st.binary(min_size=32, max_size=32),
    st.integers(0, 2**70),
    st.integers(0, 2**70),
    st.lists(st.binary(min_size=32, max_size=32), max_size=80),
    st.binary(min_size=32, max_size=32),
)
def test_verify_inclusion_rejects_random_well_formed_proofs(
    leaf: bytes, index: int, size: int, proof: list[bytes], root: bytes
) -> None:
    # A one-leaf tree's root is its leaf hash: that one is a valid proof.
    assume(leaf != root)
    assert not pv.verify_inclusion(leaf, index, size, proof, root)


def test_bad_hash_lengths_are_refused_when_building() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        merkle.nodes_for_append(0, [b"short"], NodeStore().get)
    with pytest.raises(ValueError, match="32 bytes"):
        merkle.Frontier().append(b"")
    with pytest.raises(ValueError, match="not aligned"):
        merkle.perfect_subtrees(2, 6)
