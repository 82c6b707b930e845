"""Proofs read from a real store, fuzzed: every honest proof verifies with the standalone
client verifier, and every altered one fails. (The tree maths alone is tested in
tests/test_merkle.py; this goes through stored nodes, on SQLite and PostgreSQL.)"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage import merkle, proof_verifier, proofs
from storage.store import AuditStore
from tests.tamper import fill

MAX_SIZE = 70
FUZZ = settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def grow(store: AuditStore, size: int) -> list[bytes]:
    """The store's leaf hashes, after growing it to at least `size` events."""
    have = store.streams()[0].head_seq if store.streams() else 0
    if have < size:
        fill(store, size - have, start=have)
    with store.engines.read.begin() as conn:
        nodes = proofs.read_nodes(conn, "api", [(0, i) for i in range(size)])
    return [nodes[(0, i)] for i in range(size)]


def tamper(proof: list[bytes], choice: int, where: int) -> list[bytes]:
    bad = list(proof)
    if choice == 0 and bad:
        i = where % len(bad)
        bad[i] = bytes([bad[i][0] ^ 1]) + bad[i][1:]
    elif choice == 1 and bad:
        del bad[where % len(bad)]
    elif choice == 2:
        bad.insert(where % (len(bad) + 1), merkle.EMPTY_ROOT)
    else:
        bad.reverse()
    return bad


@FUZZ
@given(
    size=st.integers(1, MAX_SIZE),
    data=st.data(),
    choice=st.integers(0, 3),
    where=st.integers(0, 100),
)
def test_inclusion_proofs_from_the_store(
    store: AuditStore, size: int, data: st.DataObject, choice: int, where: int
) -> None:
    leaves = grow(store, size)
    index = data.draw(st.integers(0, size - 1))
    with store.engines.read.begin() as conn:
        root = proofs.tree_root(conn, "api", size)
        path = proofs.inclusion(conn, "api", index, size)
    assert root == merkle.root_from_leaf_hashes(leaves)
    assert proof_verifier.verify_inclusion(leaves[index], index, size, path, root)
    bad = tamper(path, choice, where)
    if bad != path:
        assert not proof_verifier.verify_inclusion(leaves[index], index, size, bad, root)
    if size > 1:
        other = (index + 1 + where) % size
        if leaves[other] != leaves[index]:
            assert not proof_verifier.verify_inclusion(leaves[other], index, size, path, root)


@FUZZ
@given(
    second=st.integers(0, MAX_SIZE),
    data=st.data(),
    choice=st.integers(0, 3),
    where=st.integers(0, 100),
)
def test_consistency_proofs_from_the_store(
    store: AuditStore, second: int, data: st.DataObject, choice: int, where: int
) -> None:
    leaves = grow(store, second)
    first = data.draw(st.integers(0, second))
    with store.engines.read.begin() as conn:
        first_root, second_root, path = proofs.consistency(conn, "api", first, second)
    assert first_root == merkle.root_from_leaf_hashes(leaves[:first])
    assert second_root == merkle.root_from_leaf_hashes(leaves)
    assert proof_verifier.verify_consistency(first, second, first_root, second_root, path)
    bad = tamper(path, choice, where)
    if bad != path:
        assert not proof_verifier.verify_consistency(first, second, first_root, second_root, bad)
    if first < second:
        assert not proof_verifier.verify_consistency(first, second, second_root, second_root, path)
