"""The signing key file and the bytes a checkpoint signature covers."""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from storage import proof_verifier
from storage.checkpoints import sign_checkpoint
from storage.signing import (
    KeyFileError,
    checkpoint_message,
    load_key,
    load_or_create_key,
)


def test_the_key_is_created_0600_even_under_a_permissive_umask(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "auditor.key"
    old = os.umask(0)
    try:
        key = load_or_create_key(path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert [p.name for p in path.parent.iterdir()] == ["auditor.key"]  # no temporary left
    again = load_or_create_key(path)
    assert again.public.key_id == key.public.key_id
    assert key.public.key_id == hashlib.sha256(key.public.raw).hexdigest()
    assert len(key.public.raw) == 32


def test_processes_starting_at_once_agree_on_one_key(tmp_path: Path) -> None:
    path = tmp_path / "auditor.key"
    ids: list[str] = []
    threads = [
        threading.Thread(target=lambda: ids.append(load_or_create_key(path).public.key_id))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(ids) == 8 and len(set(ids)) == 1


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_a_key_others_may_read_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "auditor.key"
    load_or_create_key(path)
    path.chmod(mode)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_or_create_key(path)


def test_an_unusable_key_file_is_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.key"
    garbage.write_bytes(b"not a key")
    garbage.chmod(0o600)
    with pytest.raises(KeyFileError, match="PEM"):
        load_key(garbage)
    other = tmp_path / "ec.key"
    other.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    other.chmod(0o600)
    with pytest.raises(KeyFileError, match="Ed25519"):
        load_key(other)
    directory = tmp_path / "dir.key"
    directory.mkdir(mode=0o700)
    with pytest.raises(KeyFileError):
        load_or_create_key(directory)
    with pytest.raises(FileNotFoundError):
        load_key(tmp_path / "missing.key")


def test_the_signed_message_layout() -> None:
    when = datetime(2026, 11, 28, 12, 0, 0, 123456, tzinfo=UTC)
    root = "ab" * 32
    assert checkpoint_message("billing", 42, root, when) == (
        b"auditor-checkpoint/v1\nbilling\n42\n" + root.encode() + b"\n2026-11-28T12:00:00.123Z\n"
    )
    for bad in (("bill\ning", 1, root), ("billing", -1, root), ("billing", 1, "AB" * 32)):
        with pytest.raises(ValueError):
            checkpoint_message(*bad, when)


def test_a_client_checks_a_signature_from_the_json_alone(tmp_path: Path) -> None:
    key = load_or_create_key(tmp_path / "auditor.key")
    checkpoint = sign_checkpoint(key, "api", 7, "cd" * 32)
    body = checkpoint.to_json()
    message = proof_verifier.checkpoint_message(body)
    assert message == checkpoint.message()
    public = Ed25519PublicKey.from_public_bytes(key.public.raw)
    public.verify(bytes.fromhex(body["signature"]), message)
    assert checkpoint.signed_by(key.public)
    assert not key.public.verify(message + b"x", checkpoint.signature)
    assert not key.public.verify(message, "zz")
