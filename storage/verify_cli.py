"""`run_daemon.py verify [--stream S] [--checkpoint FILE] [--jobs N]`: a line per stream.

The public key comes from `integrity.key_file` (never created here). Without
that file a store that has checkpoints cannot be checked: that is bad
configuration (exit 2), not a verdict. A progress bar goes to standard error
only when it is a terminal.
"""

from __future__ import annotations

from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TextIO

import orjson
from sqlalchemy.exc import SQLAlchemyError
from tqdm import tqdm

from storage.checkpoints import Checkpoint
from storage.signing import KeyFileError, PublicKey, load_key
from storage.store import AuditStore
from storage.verify import NoVerificationKey, snapshot, stream_names, stream_sizes, verify_store

EXIT_INTACT = 0
EXIT_NOT_INTACT = 1


class VerifyUsageError(Exception):
    """Bad usage or configuration of `verify` (exit 2); the message says which."""


def run_verify(
    store: AuditStore,
    key_file: Path,
    *,
    stream: str | None,
    checkpoint_file: Path | None,
    jobs: int = 1,
    out: TextIO,
    err: TextIO,
) -> int:
    extra = read_checkpoint(checkpoint_file) if checkpoint_file is not None else None
    if extra is not None and stream is not None and extra.stream != stream:
        raise VerifyUsageError(
            f"--checkpoint {checkpoint_file} is of stream {extra.stream!r}, not {stream!r}"
        )
    keys = public_keys(key_file)
    try:
        with snapshot(store.engines.read) as conn:
            names = stream_names(conn)
        if stream is not None and stream not in names and extra is None:
            known = ", ".join(names) or "none"
            raise VerifyUsageError(f"--stream: no stream named {stream!r} (streams: {known})")
        sizes = stream_sizes(store)
        total = sizes.get(stream, 0) if stream is not None else sum(sizes.values())
        with tqdm(
            total=total, unit=" events", file=err, disable=not err.isatty(), desc="verify"
        ) as bar:
            results = verify_store(
                store,
                keys,
                stream=stream,
                extra=extra,
                extra_label=f"the checkpoint in {checkpoint_file}",
                progress=bar.update,
                jobs=jobs,
            )
    except NoVerificationKey as exc:
        raise VerifyUsageError(
            f"integrity.key_file: {key_file} does not exist, so no checkpoint signature can be "
            f"checked ({exc})"
        ) from exc
    except SQLAlchemyError as exc:
        print(f"cannot read the audit store: {exc.__class__.__name__}: {exc}", file=out)
        return EXIT_NOT_INTACT
    except BrokenProcessPool:
        print(
            "verify did not finish: a worker process failed to start or ended before its "
            "chunk was checked (see standard error; killed, or out of memory?)",
            file=out,
        )
        return EXIT_NOT_INTACT
    for result in results:
        print(result.describe(), file=out)
    return EXIT_INTACT if all(result.ok for result in results) else EXIT_NOT_INTACT


def public_keys(key_file: Path) -> dict[str, PublicKey] | None:
    """Our checkpoint key by its id, or None when the key file does not exist."""
    try:
        key = load_key(key_file).public
    except FileNotFoundError:
        return None
    except KeyFileError as exc:
        raise VerifyUsageError(f"integrity.key_file: {exc}") from exc
    return {key.key_id: key}


def read_checkpoint(path: Path) -> Checkpoint:
    """A checkpoint saved from `GET /v1/checkpoints/latest`."""
    try:
        body = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise VerifyUsageError(f"--checkpoint {path}: {exc.strerror}") from exc
    except orjson.JSONDecodeError as exc:
        raise VerifyUsageError(f"--checkpoint {path}: not JSON ({exc})") from exc
    try:
        return Checkpoint.from_json(body)
    except ValueError as exc:
        raise VerifyUsageError(f"--checkpoint {path}: not a checkpoint: {exc}") from exc
