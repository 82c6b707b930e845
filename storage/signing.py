"""The checkpoint signing key (Ed25519) and the exact bytes a checkpoint signature covers.

The key file is an unencrypted PKCS#8 PEM private key. It is created on first
start with mode 0600 from the first byte on (`os.open(..., 0o600)` of a
temporary file in the same directory, then a hard link to the final name, so a
half-written key is never visible and two daemons starting at once agree on one
key). A key file that group or others may read or write is refused, as ssh
refuses such a private key: someone else may have it, and checkpoints signed
with it would prove nothing.

The signed message (`checkpoint_message`) is five lines, each ending in "\\n":

    auditor-checkpoint/v1
    <stream>
    <size, decimal>
    <root, 64 lowercase hex digits>
    <signed_at, RFC 3339 UTC with milliseconds>

`key_id` is the SHA-256 of the raw 32-byte public key, lowercase hex.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from storage.events import format_time

MESSAGE_HEADER = b"auditor-checkpoint/v1\n"
ALGORITHM = "Ed25519"
_HEX64 = re.compile(r"[0-9a-f]{64}")


class KeyFileError(Exception):
    """The key file cannot be created, read or trusted; the message says which and why."""


def checkpoint_message(stream: str, size: int, root: str, signed_at: datetime) -> bytes:
    """The bytes an Ed25519 checkpoint signature covers (layout in the module docstring)."""
    if not stream or "\n" in stream:
        raise ValueError("a stream name must be non-empty and hold no newline")
    if size < 0:
        raise ValueError("a tree size must not be negative")
    if not _HEX64.fullmatch(root):
        raise ValueError("a root must be 64 lowercase hex digits")
    lines = (stream, str(size), root, format_time(signed_at))
    return MESSAGE_HEADER + "".join(line + "\n" for line in lines).encode()


@dataclass(frozen=True)
class PublicKey:
    """A key that verifies checkpoints: `key_id` names it in every checkpoint it signed."""

    key: Ed25519PublicKey

    @property
    def raw(self) -> bytes:
        return self.key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @property
    def key_id(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()

    @property
    def pem(self) -> str:
        return self.key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()

    def verify(self, message: bytes, signature_hex: str) -> bool:
        """True if `signature_hex` is this key's signature of `message`."""
        try:
            signature = bytes.fromhex(signature_hex)
        except ValueError:
            return False
        try:
            self.key.verify(signature, message)
        except InvalidSignature:
            return False
        return True

    @classmethod
    def from_raw(cls, raw: bytes) -> PublicKey:
        return cls(Ed25519PublicKey.from_public_bytes(raw))


@dataclass(frozen=True)
class SigningKey:
    """The daemon's own checkpoint key."""

    key: Ed25519PrivateKey

    @property
    def public(self) -> PublicKey:
        return PublicKey(self.key.public_key())

    def sign(self, message: bytes) -> str:
        """The Ed25519 signature of `message`, lowercase hex (128 digits)."""
        return self.key.sign(message).hex()


def load_or_create_key(path: Path) -> SigningKey:
    """The key in `path`, created (mode 0600) when the file does not exist yet."""
    try:
        return load_key(path)
    except FileNotFoundError:
        pass
    _create_key(path)
    return load_key(path)


def load_key(path: Path) -> SigningKey:
    """The key in `path`; FileNotFoundError when there is none, KeyFileError when unusable."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot open the key file: {exc.strerror}") from exc
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise KeyFileError(f"{path}: the key file is not a regular file")
        if mode & 0o077:
            raise KeyFileError(
                f"{path}: the key file's mode is {stat.S_IMODE(mode):04o}: group and others must "
                f"have no access to a private key (chmod 600 {path}, and consider replacing a key "
                "that others could have read)"
            )
        with os.fdopen(fd, "rb", closefd=False) as file:
            data = file.read()
    finally:
        os.close(fd)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: not an unencrypted PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: the key is not an Ed25519 key")
    return SigningKey(key)


def _create_key(path: Path) -> None:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot create its directory: {exc.strerror}") from exc
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(pem)
            file.flush()
            os.fsync(file.fileno())
        # A link, not a rename: it fails instead of replacing a key that another
        # process created meanwhile, and then both use that one.
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot create the key file: {exc.strerror}") from exc
    finally:
        temporary.unlink(missing_ok=True)
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
