"""Standalone verifier for Auditor's Merkle proofs (RFC 9162 §2.1.3.2 and §2.1.4.2).

Copy this one file into a client: it needs Python 3.8 or newer and the standard
library only, and imports nothing from Auditor.

Every stream of Auditor is an RFC 9162 Merkle tree: the leaf hash of an event is
`SHA-256(0x00 || canonical event)` and an interior node is
`SHA-256(0x01 || left || right)`. Auditor signs checkpoints `(stream, size,
root, time)`; check the signature first (the key is served by
`GET /v1/checkpoints/public-key`), then use a checkpoint's `size` and `root`
here. Hashes are raw 32-byte values: hex-decode them from the JSON first.

Is an event in the log? Fetch its inclusion proof (`GET /v1/events/{id}/proof`),
which gives the event's leaf index, the checkpoint and the audit path::

    ok = verify_inclusion(leaf_hash, index, size, [bytes.fromhex(h) for h in path], root)

where `leaf_hash` is `leaf_hash(canonical_event(event, proof["payload_digest"]))`
for the event as `GET /v1/events/{id}` returned it (so the proof covers what you
were shown), or the hash the server reports if you only want to know that the
server's hash is covered. `checkpoint_message` gives the bytes a checkpoint's
signature covers.

Did the log only grow between two checkpoints you saw? Fetch
`GET /v1/checkpoints/consistency?stream=S&first=SIZE1&second=SIZE2`::

    ok = verify_consistency(size1, size2, root1, root2, [bytes.fromhex(h) for h in proof])

Both functions return a bool and never raise, whatever they are given. A
`size` and `root` prove something only as a pair from one signed checkpoint: a
proof can fit more than one tree size, so never take the size from elsewhere.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping, Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    """Leaf hash of an event's canonical bytes: `SHA-256(0x00 || data)`."""
    return hashlib.sha256(b"\x00" + data).digest()


def _node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _is_hash(value: object) -> bool:
    return isinstance(value, (bytes, bytearray)) and len(value) == HASH_SIZE


def _is_size(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _hashes(proof: object) -> list[bytes] | None:
    """`proof` as a list of 32-byte hashes, or None when it is not one."""
    if not isinstance(proof, Iterable) or isinstance(proof, (bytes, bytearray, str)):
        return None
    items = list(proof)
    if not all(_is_hash(item) for item in items):
        return None
    return [bytes(item) for item in items]


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """True if `proof` shows leaf `index` with `leaf_hash` is in the tree `(size, root)`."""
    path = _hashes(proof)
    if path is None or not (_is_hash(leaf_hash) and _is_hash(root)):
        return False
    if not (_is_size(index) and _is_size(size)) or index >= size:
        return False
    fn, sn = index, size - 1
    result = bytes(leaf_hash)
    for sibling in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            result = _node_hash(sibling, result)
            # On the right edge of a tree that is not perfect, a node has no
            # right sibling and moves up unchanged.
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            result = _node_hash(result, sibling)
        fn >>= 1
        sn >>= 1
    return sn == 0 and hmac.compare_digest(result, bytes(root))


def verify_consistency(
    first: int, second: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]
) -> bool:
    """True if `proof` shows the tree `(second, second_root)` extends `(first, first_root)`.

    Every tree extends itself (equal sizes and roots, empty proof) and the
    empty tree (size 0, whose root is SHA-256 of the empty string, empty proof).
    """
    path = _hashes(proof)
    if path is None or not (_is_hash(first_root) and _is_hash(second_root)):
        return False
    if not (_is_size(first) and _is_size(second)) or first > second:
        return False
    if first == 0 and not hmac.compare_digest(bytes(first_root), EMPTY_ROOT):
        return False
    if first == second:
        return not path and hmac.compare_digest(bytes(first_root), bytes(second_root))
    if first == 0:
        return not path
    if not path:
        return False
    # When the old tree is a perfect subtree of the new one, its root is the
    # proof's implicit first element.
    if first & (first - 1) == 0:
        path.insert(0, bytes(first_root))
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    first_result = second_result = path[0]
    for sibling in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            first_result = _node_hash(sibling, first_result)
            second_result = _node_hash(sibling, second_result)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            second_result = _node_hash(second_result, sibling)
        fn >>= 1
        sn >>= 1
    return (
        sn == 0
        and hmac.compare_digest(first_result, bytes(first_root))
        and hmac.compare_digest(second_result, bytes(second_root))
    )


def canonical_event(event: Mapping[str, object], payload_digest: str) -> bytes:
    """The canonical bytes of an event as the API returns it (`GET /v1/events/{id}`).

    `payload_digest` is the one the proof reports (the payload itself may be
    redacted). Every field here is a string, an integer, null or a list of
    strings, for which this compact, key-sorted, non-ASCII-escaping encoding
    gives exactly the bytes Auditor hashes.
    """
    actor = event["actor"]
    if not isinstance(actor, Mapping):
        raise ValueError("actor must be an object")
    fields = {
        "action": event["action"],
        "actor": {"id": actor["id"], "ip": actor.get("ip"), "name": actor.get("name")},
        "entity": event["entity"],
        "entity_id": event["entity_id"],
        "event_type": event["event_type"],
        "id": event["id"],
        "occurred_at": event["occurred_at"],
        "payload_digest": payload_digest,
        "properties": event["properties"],
        "seq": event["seq"],
        "stream": event["stream"],
    }
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def checkpoint_message(checkpoint: Mapping[str, object]) -> bytes:
    """The bytes a checkpoint's Ed25519 signature covers, from `GET /v1/checkpoints/latest`.

    Five lines, each ending in a newline: `auditor-checkpoint/v1`, the stream,
    the size in decimal, the root in lowercase hex, and `signed_at` as served.
    Check the signature with any Ed25519 library against the raw public key of
    `GET /v1/checkpoints/public-key` (whose SHA-256 is the checkpoint's `key_id`).
    """
    lines = [
        "auditor-checkpoint/v1",
        str(checkpoint["stream"]),
        str(int(str(checkpoint["size"]))),
        str(checkpoint["root"]),
        str(checkpoint["signed_at"]),
    ]
    return "".join(line + "\n" for line in lines).encode()
