"""The integrity routes over a real server, checked the way a third party would check them:
with `storage/proof_verifier.py` and an Ed25519 library, from the JSON alone."""

from __future__ import annotations

import asyncio
import hashlib
import stat
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from config import Config, load_config
from storage import proof_verifier
from storage.store import AuditStore
from tests.conftest import write_config
from tests.tamper import set_column
from web.app import create_app

Client = TestClient[Any, Any]


async def post_events(api: Client, count: int, start: int = 0) -> list[dict[str, Any]]:
    events = [
        {
            "entity": "charge",
            "entity_id": f"ch_{n}",
            "event_type": "CREATE",
            "actor": {"id": "073", "name": "SUBIN", "ip": "10.0.0.1"},
            "after": {"amount": n * 100 + 0.5, "note": "é\n\u2028"},
        }
        for n in range(start, start + count)
    ]
    response = await api.post("/v1/events", json={"events": events})
    assert response.status == 201
    body: dict[str, Any] = await response.json()
    return list(body["events"])


async def get_json(api: Client, path: str, status: int = 200, **params: Any) -> Any:
    response = await api.get(path, params=params)
    assert response.status == status, await response.text()
    if status >= 400:
        assert response.content_type == "application/problem+json"
    return await response.json()


async def public_key(api: Client) -> Ed25519PublicKey:
    body = await get_json(api, "/v1/checkpoints/public-key")
    raw = bytes.fromhex(body["public_key"])
    assert body["algorithm"] == "Ed25519"
    assert body["key_id"] == hashlib.sha256(raw).hexdigest()
    assert body["pem"].startswith("-----BEGIN PUBLIC KEY-----")
    return Ed25519PublicKey.from_public_bytes(raw)


def check_signature(key: Ed25519PublicKey, checkpoint: dict[str, Any]) -> None:
    key.verify(
        bytes.fromhex(checkpoint["signature"]), proof_verifier.checkpoint_message(checkpoint)
    )


def check_inclusion(proof: dict[str, Any], event: dict[str, Any]) -> bool:
    leaf = proof_verifier.leaf_hash(proof_verifier.canonical_event(event, proof["payload_digest"]))
    return leaf.hex() == proof["leaf_hash"] == event["hash"] and proof_verifier.verify_inclusion(
        leaf,
        proof["leaf_index"],
        proof["tree_size"],
        [bytes.fromhex(h) for h in proof["proof"]],
        bytes.fromhex(proof["root"]),
    )


async def test_proofs_verify_against_signed_checkpoints(api: Client) -> None:
    await get_json(api, "/v1/checkpoints/latest", 404, stream="api")
    key = await public_key(api)
    events = await post_events(api, 11)
    for event in events:
        proof = await get_json(api, f"/v1/events/{event['id']}/proof")
        assert proof["event_id"] == event["id"] and proof["seq"] == event["seq"]
        assert proof["checkpoint"]["size"] == proof["tree_size"] == 11  # signed on demand, once
        assert proof["checkpoint"]["root"] == proof["root"]
        check_signature(key, proof["checkpoint"])
        shown = await get_json(api, f"/v1/events/{event['id']}")
        assert check_inclusion(proof, shown)
        assert not check_inclusion({**proof, "leaf_index": (proof["leaf_index"] + 1) % 11}, shown)
    latest = await get_json(api, "/v1/checkpoints/latest", stream="api")
    assert set(latest) == {"stream", "size", "root", "signed_at", "key_id", "signature"}
    assert latest["size"] == 11 and latest["signed_at"].endswith("Z")


async def test_consistency_between_two_checkpoints(api: Client) -> None:
    first_events = await post_events(api, 5)
    first = (await get_json(api, f"/v1/events/{first_events[0]['id']}/proof"))["checkpoint"]
    later = await post_events(api, 8, start=5)
    second = (await get_json(api, f"/v1/events/{later[-1]['id']}/proof"))["checkpoint"]
    key = await public_key(api)
    check_signature(key, first)
    check_signature(key, second)
    body = await get_json(
        api, "/v1/checkpoints/consistency", stream="api", first=first["size"], second=second["size"]
    )
    assert (body["first"], body["second"]) == (5, 13)
    assert (body["first_root"], body["second_root"]) == (first["root"], second["root"])
    proof = [bytes.fromhex(h) for h in body["proof"]]
    old, new = bytes.fromhex(first["root"]), bytes.fromhex(second["root"])
    assert proof_verifier.verify_consistency(5, 13, old, new, proof)
    assert not proof_verifier.verify_consistency(5, 13, new, old, proof)
    empty = await get_json(api, "/v1/checkpoints/consistency", stream="api", first=0, second=13)
    assert empty["proof"] == [] and empty["first_root"] == proof_verifier.EMPTY_ROOT.hex()


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"stream": "api", "first": "9", "second": "3"}, "first"),
        ({"stream": "api", "first": "1", "second": "99"}, "second"),
        ({"stream": "api", "first": "-1", "second": "3"}, "first"),
        ({"stream": "api", "first": "x", "second": "3"}, "first"),
        ({"stream": "api", "second": "3"}, "first"),
        ({"stream": "api", "first": "1", "second": "1" * 30}, "second"),
        ({"first": "1", "second": "3"}, "stream"),
        ({"stream": "api", "first": "1", "second": "3", "third": "4"}, "third"),
    ],
)
async def test_bad_consistency_sizes_are_400(
    api: Client, params: dict[str, str], field: str
) -> None:
    await post_events(api, 4)
    body = await get_json(api, "/v1/checkpoints/consistency", 400, **params)
    assert field in [e["field"] for e in body["errors"]]


async def test_unknown_things_are_404(api: Client) -> None:
    await get_json(api, "/v1/checkpoints/consistency", 404, stream="nope", first=0, second=0)
    await get_json(api, "/v1/events/0193c1c4-5a1e-7c3b-9f4e-2b8d1c0a9e77/proof", 404)
    await get_json(api, "/v1/events/not-a-uuid/proof", 404)
    await get_json(api, "/v1/verify", 404, stream="nope")
    await get_json(api, "/v1/verify", 400)
    await get_json(api, "/v1/checkpoints/latest", 400)


async def test_verify_route_reports_tampering(api: Client, store: AuditStore) -> None:
    events = await post_events(api, 6)
    assert await get_json(api, "/v1/verify", stream="api") == {
        "stream": "api",
        "ok": True,
        "checked": 6,
        "checkpoints": 0,
        "first_bad_seq": None,
        "event_id": None,
        "kind": None,
        "reason": None,
    }
    set_column(store, "api", 4, actor_id="mallory")
    body = await get_json(api, "/v1/verify", stream="api")
    assert (body["ok"], body["checked"], body["first_bad_seq"]) == (False, 3, 4)
    assert body["event_id"] == events[3]["id"] and body["reason"].startswith("altered: ")


async def test_redaction_with_a_reason_keeps_old_proofs_valid(api: Client) -> None:
    events = await post_events(api, 7)
    target = events[2]
    old_proof = await get_json(api, f"/v1/events/{target['id']}/proof")
    response = await api.post(f"/v1/events/{target['id']}/redact", json={"reason": "GDPR art. 17"})
    assert response.status == 200
    body = await response.json()
    assert body["event"]["id"] == target["id"] and body["event"]["redacted"] is True
    assert body["event"]["before"] is None and body["event"]["after"] is None
    assert body["event"]["hash"] == target["hash"]
    redaction = body["redaction"]
    assert redaction["action"] == "audit_event.redacted" and redaction["seq"] == 8
    assert redaction["metadata"] == {"redacts": target["id"], "reason": "GDPR art. 17"}
    assert check_inclusion(old_proof, body["event"])
    shown = await get_json(api, f"/v1/events/{redaction['id']}")
    redaction_proof = await get_json(api, f"/v1/events/{redaction['id']}/proof")
    assert redaction_proof["tree_size"] == 8 and check_inclusion(redaction_proof, shown)
    new_proof = await get_json(api, f"/v1/events/{target['id']}/proof")
    assert new_proof["tree_size"] == 8 and check_inclusion(new_proof, body["event"])
    assert (await get_json(api, "/v1/verify", stream="api"))["ok"] is True
    again = await api.post(f"/v1/events/{target['id']}/redact", json={"reason": "again"})
    assert again.status == 409


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({}, 422),
        ({"reason": ""}, 422),
        ({"reason": "   "}, 422),
        ({"reason": "x" * 1001}, 422),
        ({"reason": 5}, 422),
        ({"reason": "ok", "extra": 1}, 422),
        ({"reason": "a\x00b"}, 422),
        ([], 422),
        (None, 400),
    ],
)
async def test_bad_redactions_store_nothing(api: Client, body: Any, status: int) -> None:
    event = (await post_events(api, 1))[0]
    kwargs: dict[str, Any] = {"data": b"{not json"} if body is None else {"json": body}
    response = await api.post(f"/v1/events/{event['id']}/redact", **kwargs)
    assert response.status == status
    assert response.content_type == "application/problem+json"
    stored = await get_json(api, f"/v1/events/{event['id']}")
    assert "redacted" not in stored
    assert (await get_json(api, "/v1/events"))["events"][0]["seq"] == 1
    unknown = await api.post(
        "/v1/events/0193c1c4-5a1e-7c3b-9f4e-2b8d1c0a9e77/redact", json={"reason": "x"}
    )
    assert unknown.status == 404


def config_with(tmp_path: Path, store_url: str, interval: float) -> Config:
    path = write_config(tmp_path, store_url, integrity={"checkpoint_interval": interval})
    return load_config(path, environ={})


async def test_the_app_signs_every_interval_while_events_arrive(
    tmp_path: Path, store_url: str, store: AuditStore
) -> None:
    config = config_with(tmp_path, store_url, 0.2)
    async with TestClient(TestServer(create_app(config, store), host="127.0.0.1")) as api:
        for batch in range(2):
            await post_events(api, 3, start=3 * batch)
            for _ in range(50):
                response = await api.get("/v1/checkpoints/latest", params={"stream": "api"})
                if response.status == 200 and (await response.json())["size"] == 3 * batch + 3:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("no checkpoint was signed")


async def test_the_app_signs_on_shutdown_and_creates_its_key_0600(
    tmp_path: Path, store_url: str, store: AuditStore
) -> None:
    config = config_with(tmp_path, store_url, 3600)
    app = create_app(config, store)
    assert stat.S_IMODE(config.integrity.key_file.stat().st_mode) == 0o600
    async with TestClient(TestServer(app, host="127.0.0.1")) as api:
        await post_events(api, 4)
        await get_json(api, "/v1/checkpoints/latest", 404, stream="api")
    async with TestClient(TestServer(create_app(config, store), host="127.0.0.1")) as api:
        latest = await get_json(api, "/v1/checkpoints/latest", stream="api")
        assert latest["size"] == 4
        check_signature(await public_key(api), latest)
