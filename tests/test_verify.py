"""`storage.verify` against a real store that someone edited with SQL, on SQLite and PostgreSQL.

Each test tampers the way an attacker with the database (but not the key)
would, and checks that verification fails naming the right kind, seq and id.
Every test runs twice: in one pass, and cut into chunks of two events checked
by two forked worker processes (`storage.verify_chunks`), which must find the
same first problem.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import pytest

from storage import proof_verifier
from storage.checkpoints import Checkpoint, Checkpointer
from storage.signing import PublicKey, SigningKey, load_or_create_key
from storage.store import AuditStore
from storage.verify import (
    ALTERED,
    BAD_SIGNATURE,
    INSERTED,
    REMOVED,
    REORDERED,
    TRUNCATED,
    Finding,
    NoVerificationKey,
    StreamResult,
    verify_store,
)
from tests.tamper import (
    execute,
    fill,
    forged_row,
    insert_row,
    new_event,
    rebuild_tree,
    rehash,
    renumber,
    set_column,
    swap,
)


@pytest.fixture
def key(tmp_path: Path) -> SigningKey:
    return load_or_create_key(tmp_path / "key")


@pytest.fixture
def checkpointer(store: AuditStore, key: SigningKey) -> Checkpointer:
    return Checkpointer(store, key)


IN_CHUNKS = {"jobs": 2, "chunk_level": 1}
"""Chunks of 2 events: a stream of 4 or more is checked by the workers."""
_how: dict[str, int] = {}


@pytest.fixture(autouse=True, params=["in one pass", "in chunks"])
def how(request: pytest.FixtureRequest) -> Iterator[None]:
    _how.update(IN_CHUNKS if request.param == "in chunks" else {})
    yield
    _how.clear()


def verify(
    store: AuditStore, keys: dict[str, PublicKey] | None, **options: Any
) -> list[StreamResult]:
    """`verify_store` in this run's way (`how`)."""
    return verify_store(store, keys, **{**_how, **options})


def keys_of(key: SigningKey) -> dict[str, PublicKey]:
    return {key.public.key_id: key.public}


def check(store: AuditStore, key: SigningKey, **options: Any) -> StreamResult:
    results = verify(store, keys_of(key), stream="api", page=7, **options)
    return results[0]


def problem(store: AuditStore, key: SigningKey, **options: Any) -> Finding:
    result = check(store, key, **options)
    assert result.problem is not None, "verification passed on a tampered store"
    return result.problem


def test_intact_store_verifies_every_stream_and_checkpoint(
    store: AuditStore, key: SigningKey, checkpointer: Checkpointer
) -> None:
    fill(store, 9)
    fill(store, 4, stream="billing")
    checkpointer.sign_moved()
    fill(store, 17, start=9)
    checkpointer.sign_moved()
    fill(store, 3, start=26)
    results = verify(store, keys_of(key), page=5)
    assert [(r.stream, r.ok, r.checked, r.checkpoints) for r in results] == [
        ("api", True, 29, 2),
        ("billing", True, 4, 1),
    ]
    assert "intact" in results[0].describe()


def test_an_empty_store_is_intact(store: AuditStore, key: SigningKey) -> None:
    assert verify(store, keys_of(key)) == []


@pytest.mark.parametrize(
    ("column", "value"),
    [("actor_id", "mallory"), ("entity", "charge"), ("occurred_at", 0), ("properties", "[]")],
)
def test_a_changed_field_is_altered(
    store: AuditStore, key: SigningKey, column: str, value: object
) -> None:
    stored = fill(store, 12)
    set_column(store, "api", 7, **{column: value})
    found = problem(store, key)
    assert (found.kind, found.seq, found.event_id) == (ALTERED, 7, stored[6].id)


def test_a_changed_payload_is_altered(store: AuditStore, key: SigningKey) -> None:
    stored = fill(store, 12)
    execute(
        store,
        "UPDATE events SET payload = REPLACE(payload, '\"B\"', '\"Z\"') WHERE seq = 5",
    )
    found = problem(store, key)
    assert (found.kind, found.seq, found.event_id) == (ALTERED, 5, stored[4].id)
    assert "payload" in found.reason


def test_an_erased_payload_without_a_redaction_is_altered(
    store: AuditStore, key: SigningKey
) -> None:
    stored = fill(store, 6)
    set_column(store, "api", 2, payload=None)
    assert (problem(store, key).seq, problem(store, key).event_id) == (2, stored[1].id)
    set_column(store, "api", 2, redacted=True)
    found = problem(store, key)
    assert (found.kind, found.seq, found.event_id) == (ALTERED, 2, stored[1].id)
    assert "no redaction event" in found.reason


def test_a_deleted_row_is_removed(store: AuditStore, key: SigningKey) -> None:
    fill(store, 12)
    execute(store, "DELETE FROM events WHERE stream = 'api' AND seq = 5")
    found = problem(store, key)
    assert (found.kind, found.seq) == (REMOVED, 5)


def test_a_deleted_row_hidden_by_renumbering_is_removed(store: AuditStore, key: SigningKey) -> None:
    stored = fill(store, 12)
    execute(store, "DELETE FROM events WHERE stream = 'api' AND seq = 5")
    renumber(store, "api", 6, -1)
    rebuild_tree(store, "api")
    found = problem(store, key)
    assert (found.kind, found.seq, found.event_id) == (REMOVED, 5, stored[5].id)
    assert "recorded as seq 6" in found.reason


def test_swapped_rows_are_reordered(store: AuditStore, key: SigningKey) -> None:
    stored = fill(store, 12)
    swap(store, "api", 4, 9)
    found = problem(store, key)
    assert (found.kind, found.seq, found.event_id) == (REORDERED, 4, stored[8].id)
    assert stored[3].id in found.reason


def test_a_forged_row_past_the_head_is_inserted(store: AuditStore, key: SigningKey) -> None:
    fill(store, 12)
    forged = forged_row("api", 13)
    insert_row(store, forged)
    found = problem(store, key)
    assert (found.kind, found.seq, found.event_id) == (INSERTED, 13, forged["id"])


def test_a_forged_row_in_the_middle_is_inserted(store: AuditStore, key: SigningKey) -> None:
    fill(store, 12)
    renumber(store, "api", 5, +1)
    forged = forged_row("api", 5)
    insert_row(store, forged)
    rebuild_tree(store, "api")
    found = problem(store, key)
    assert (found.kind, found.seq, found.event_id) == (INSERTED, 5, forged["id"])


def test_a_second_row_with_the_same_seq_is_inserted(store: AuditStore, key: SigningKey) -> None:
    fill(store, 12)
    execute(store, "DROP INDEX uq_events_stream_seq")
    forged = forged_row("api", 3)
    insert_row(store, forged)
    found = problem(store, key)
    assert (found.kind, found.seq) == (INSERTED, 3)


def test_a_rewritten_event_with_a_recomputed_hash_breaks_the_stored_tree(
    store: AuditStore, key: SigningKey
) -> None:
    stored = fill(store, 12)
    set_column(store, "api", 6, actor_id="mallory")
    rehash(store, "api", 6)
    found = problem(store, key)
    assert (found.kind, found.seq, found.event_id) == (ALTERED, 5, stored[4].id)
    assert "Merkle node (level 1, index 2) over seqs 5-6" in found.reason


def test_a_rewrite_that_recomputes_the_whole_tree_is_caught_by_the_checkpoint(
    store: AuditStore, key: SigningKey, checkpointer: Checkpointer
) -> None:
    stored = fill(store, 6)
    checkpointer.sign_moved()
    stored += fill(store, 6, start=6)
    checkpointer.sign_moved()
    set_column(store, "api", 9, actor_id="mallory")
    rehash(store, "api", 9)
    rebuild_tree(store, "api")
    found = problem(store, key)
    assert (found.kind, found.seq, found.event_id) == (ALTERED, 7, stored[6].id)
    assert "no longer have the root" in found.reason


def test_a_truncated_tail_is_caught_by_the_stored_checkpoint(
    store: AuditStore, key: SigningKey, checkpointer: Checkpointer
) -> None:
    fill(store, 12)
    checkpointer.sign_moved()
    execute(store, "DELETE FROM events WHERE stream = 'api' AND seq > 9")
    rebuild_tree(store, "api")
    found = problem(store, key)
    assert (found.kind, found.seq) == (TRUNCATED, 10)


def test_a_truncated_tail_with_its_checkpoints_deleted_is_caught_by_a_saved_checkpoint(
    store: AuditStore, key: SigningKey, checkpointer: Checkpointer
) -> None:
    fill(store, 12)
    saved = checkpointer.sign_moved()[0]
    execute(store, "DELETE FROM events WHERE stream = 'api' AND seq > 9")
    execute(store, "DELETE FROM checkpoints")
    rebuild_tree(store, "api")
    assert check(store, key).ok  # nothing stored remembers the tail…
    found = problem(store, key, extra=saved)  # …but the saved checkpoint does
    assert (found.kind, found.seq) == (TRUNCATED, 10)
    assert "the saved checkpoint of 12 events" in found.reason


def test_a_truncated_tail_with_leftover_nodes_is_truncated(
    store: AuditStore, key: SigningKey
) -> None:
    fill(store, 12)
    execute(store, "DELETE FROM events WHERE stream = 'api' AND seq > 9")
    execute(store, "UPDATE streams SET head_seq = 9")
    found = problem(store, key)
    assert (found.kind, found.seq) == (TRUNCATED, 10)


def test_a_saved_checkpoint_of_another_history_is_caught(
    store: AuditStore, key: SigningKey, checkpointer: Checkpointer, store_url: str
) -> None:
    fill(store, 8)
    saved = checkpointer.sign_moved()[0]
    execute(store, "DELETE FROM checkpoints")
    set_column(store, "api", 3, entity="charge")
    rehash(store, "api", 3)
    rebuild_tree(store, "api")
    found = problem(store, key, extra=saved)
    assert (found.kind, found.seq) == (ALTERED, 1)


@pytest.mark.parametrize("column", ["root", "signature", "size", "signed_at"])
def test_a_replaced_checkpoint_value_is_a_bad_signature(
    store: AuditStore, key: SigningKey, checkpointer: Checkpointer, column: str
) -> None:
    fill(store, 8)
    checkpoint = checkpointer.sign_moved()[0]
    value: object = {
        "root": "ab" * 32,
        "signature": "cd" * 64,
        "size": 7,
        "signed_at": 0,
    }[column]
    execute(store, f"UPDATE checkpoints SET {column} = :value", value=value)
    found = problem(store, key)
    assert found.kind == BAD_SIGNATURE
    assert checkpoint.root not in found.reason


def test_a_checkpoint_signed_by_another_key_is_a_bad_signature(
    store: AuditStore, key: SigningKey, tmp_path: Path
) -> None:
    fill(store, 8)
    Checkpointer(store, load_or_create_key(tmp_path / "other")).sign_moved()
    found = problem(store, key)
    assert found.kind == BAD_SIGNATURE and "unknown key" in found.reason


def test_checkpoints_need_a_key(store: AuditStore, checkpointer: Checkpointer) -> None:
    fill(store, 3)
    checkpointer.sign_moved()
    with pytest.raises(NoVerificationKey):
        verify(store, None)


def test_an_altered_merkle_node_or_head_is_caught(store: AuditStore, key: SigningKey) -> None:
    fill(store, 12)
    execute(store, "UPDATE streams SET head_hash = :h", h="ef" * 32)
    assert "head hash" in problem(store, key).reason
    rebuild_tree(store, "api")
    assert check(store, key).ok
    with store.engines.write.begin() as conn:
        from sqlalchemy import update

        from storage.schema import merkle_nodes

        conn.execute(
            update(merkle_nodes)
            .where(merkle_nodes.c.level == 2, merkle_nodes.c.idx == 1)
            .values(hash=b"\x01" * 32)
        )
    found = problem(store, key)
    assert (found.kind, found.seq) == (ALTERED, 5)
    assert "level 2, index 1" in found.reason


def test_redaction_keeps_the_store_verifiable_and_old_proofs_valid(
    store: AuditStore, key: SigningKey, checkpointer: Checkpointer
) -> None:
    stored = fill(store, 10)
    before = [checkpointer.inclusion_proof(event.id) for event in stored]
    target = stored[3]
    note = new_event(99, entity="audit_event", entity_id=target.id, action="audit_event.redacted")
    assert store.redact(target.id, note) is not None
    checkpointer.sign_moved()
    result = check(store, key)
    assert result.ok and result.checked == 11
    for proof in before:
        assert proof is not None
        root = bytes.fromhex(proof.checkpoint.root)
        assert proof_verifier.verify_inclusion(
            bytes.fromhex(proof.leaf_hash), proof.seq - 1, proof.checkpoint.size, proof.path, root
        )
    after = checkpointer.inclusion_proof(target.id)
    assert after is not None and after.leaf_hash == target.hash
    assert after.checkpoint.size == 11


def test_a_checkpoint_round_trips_through_json(
    checkpointer: Checkpointer, store: AuditStore
) -> None:
    fill(store, 3)
    checkpoint = checkpointer.sign_moved()[0]
    again = Checkpoint.from_json(checkpoint.to_json())
    assert again == checkpoint and again.signed_by(checkpointer.public_key)
    with pytest.raises(ValueError, match="size"):
        Checkpoint.from_json({**checkpoint.to_json(), "size": -1})


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE events SET occurred_at = 'noon' WHERE seq = 3",
        "UPDATE events SET hash = X'00' WHERE seq = 3",
        "UPDATE merkle_nodes SET hash = 'text' WHERE level = 1 AND idx = 1",
        "UPDATE streams SET head_seq = 'many'",
    ],
)
def test_values_of_the_wrong_type_are_tampering_not_a_crash(
    tmp_path: Path, key: SigningKey, sql: str
) -> None:
    # SQLite columns take a value of any type; only someone editing the file writes one.
    store = AuditStore.open(f"sqlite:///{tmp_path / 'typed.db'}")
    try:
        fill(store, 5)
        execute(store, sql)
        found = problem(store, key)
        assert found.kind == ALTERED
    finally:
        store.close()


@pytest.mark.parametrize("how", ["in chunks"], indirect=True)  # they set jobs themselves
def test_a_long_stream_is_checked_by_the_workers_a_chunk_at_a_time(
    store: AuditStore, key: SigningKey, checkpointer: Checkpointer
) -> None:
    fill(store, 13)
    checkpointer.sign_moved()
    fill(store, 16, start=13)
    checkpointer.sign_moved()
    done: list[int] = []
    results = verify_store(store, keys_of(key), page=3, progress=done.append, jobs=2, chunk_level=3)
    # One pass reports a page (3 events) at a time; the workers a chunk (8) at a time.
    assert done == [8, 8, 8, 5]
    assert [(r.stream, r.ok, r.checked, r.checkpoints) for r in results] == [("api", True, 29, 2)]


@pytest.mark.parametrize("how", ["in chunks"], indirect=True)  # they set jobs themselves
def test_workers_see_one_state_of_the_store_while_it_changes(
    store: AuditStore, key: SigningKey, checkpointer: Checkpointer
) -> None:
    # Stream "a" is short (checked in this process) and "b" long (by the workers,
    # started when "b" is reached). Between the two, "b" changes: an event is redacted
    # and events are appended. The check must see "b" as it was when verify began.
    fill(store, 2, stream="a")
    stored = fill(store, 20, stream="b")
    checkpointer.sign_moved()
    note = new_event(
        99, "b", entity="audit_event", entity_id=stored[5].id, action="audit_event.redacted"
    )
    changed: list[bool] = []

    def change_b(_: int) -> None:
        if not changed:
            changed.append(True)
            assert store.redact(stored[5].id, note) is not None
            fill(store, 3, stream="b", start=20)

    results = verify_store(store, keys_of(key), progress=change_b, jobs=2, chunk_level=2)
    assert changed
    assert [(r.stream, r.ok, r.checked) for r in results] == [("a", True, 2), ("b", True, 20)]
    results = verify_store(store, keys_of(key), jobs=2, chunk_level=2)
    assert [(r.stream, r.ok, r.checked) for r in results] == [("a", True, 2), ("b", True, 24)]


def test_a_seq_between_two_numbers_is_inserted(tmp_path: Path, key: SigningKey) -> None:
    # SQLite stores 4.5 in an INTEGER column; in chunks of two it falls between the
    # chunk that ends at seq 4 and the one that starts at 5, and must still be read.
    store = AuditStore.open(f"sqlite:///{tmp_path / 'typed.db'}")
    try:
        stored = fill(store, 12)
        execute(store, "UPDATE events SET seq = 4.5 WHERE seq = 5")
        found = problem(store, key)
        assert (found.kind, found.seq, found.event_id) == (INSERTED, 4.5, stored[4].id)
    finally:
        store.close()


@pytest.mark.parametrize("how", ["in chunks"], indirect=True)  # they set jobs themselves
def test_a_worker_that_dies_stops_verify_instead_of_hanging(
    store: AuditStore, key: SigningKey
) -> None:
    fill(store, 40)
    killed: list[int] = []

    def kill_a_worker(_: int) -> None:
        if not killed:
            worker = multiprocessing.active_children()[0]
            os.kill(worker.pid or 0, signal.SIGKILL)
            killed.append(worker.pid or 0)
            worker.join(10)
            # The pool notices a dead worker in a thread of its own: give it the time,
            # or the other worker may finish every chunk first (it did once in CI).
            time.sleep(0.5)

    def too_long(*_: object) -> None:
        raise TimeoutError("verify waited for a dead worker")

    previous = signal.signal(signal.SIGALRM, too_long)
    signal.alarm(60)
    try:
        with pytest.raises(BrokenProcessPool):
            verify_store(store, keys_of(key), progress=kill_a_worker, jobs=2, chunk_level=1, page=7)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert killed
