"""`run_daemon.py verify` as a separate process: exit 0 intact, 1 not, 2 bad usage."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from config import Config, load_config
from storage.checkpoints import Checkpoint, Checkpointer
from storage.events import AuditEvent
from storage.signing import load_or_create_key
from storage.store import AppendRequest, AuditStore
from storage.verify_chunks import CHUNK_LEVEL
from tests.conftest import write_config
from tests.daemon import free_port, run_cli, running_daemon
from tests.tamper import execute, fill, new_event, rebuild_tree, set_column


@pytest.fixture
def setup(tmp_path: Path, store_url: str) -> Iterator[tuple[Path, Config, AuditStore]]:
    path = write_config(tmp_path, store_url)
    config = load_config(path, environ={})
    store = AuditStore.open(store_url)
    yield path, config, store
    store.close()


def sign(config: Config, store: AuditStore) -> Checkpoint:
    return Checkpointer(store, load_or_create_key(config.integrity.key_file)).sign_moved()[0]


def test_intact_then_altered(setup: tuple[Path, Config, AuditStore]) -> None:
    path, config, store = setup
    stored = fill(store, 30)
    fill(store, 5, stream="billing")
    sign(config, store)
    result = run_cli("verify", config=path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "stream api: intact (30 events, 1 signed checkpoints)" in result.stdout
    assert "stream billing: intact" in result.stdout
    assert result.stderr.count("it/s") == 0  # no progress bar: stderr is not a terminal

    set_column(store, "api", 17, entity="charge")
    result = run_cli("verify", config=path)
    assert result.returncode == 1
    line = next(x for x in result.stdout.splitlines() if x.startswith("stream api"))
    assert f"seq 17 (id {stored[16].id})" in line and "altered" in line
    assert "stream billing: intact" in result.stdout
    assert run_cli("verify", "--stream", "billing", config=path).returncode == 0


def test_a_saved_checkpoint_catches_a_hidden_truncation(
    setup: tuple[Path, Config, AuditStore], tmp_path: Path
) -> None:
    path, config, store = setup
    fill(store, 20)
    saved = tmp_path / "checkpoint.json"
    saved.write_text(json.dumps(sign(config, store).to_json()))
    execute(store, "DELETE FROM events WHERE stream = 'api' AND seq > 15")
    execute(store, "DELETE FROM checkpoints")
    rebuild_tree(store, "api")
    assert run_cli("verify", config=path).returncode == 0
    result = run_cli("verify", "--checkpoint", str(saved), config=path)
    assert result.returncode == 1
    assert "stream api: NOT intact at seq 16: truncated" in result.stdout

    forged = json.loads(saved.read_text())
    forged["size"] = 15
    saved.write_text(json.dumps(forged))
    result = run_cli("verify", "--checkpoint", str(saved), "--stream", "api", config=path)
    assert result.returncode == 1 and "bad signature" in result.stdout


def test_usage_errors_exit_2(setup: tuple[Path, Config, AuditStore], tmp_path: Path) -> None:
    path, config, store = setup
    fill(store, 3)
    checkpoint = sign(config, store)
    assert run_cli("verify", "--stream", "nope", config=path).returncode == 2
    assert run_cli("verify", "--bogus", config=path).returncode == 2
    for jobs in ("0", "many"):
        wrong = run_cli("verify", "--jobs", jobs, config=path)
        assert wrong.returncode == 2 and "--jobs" in wrong.stderr
    missing = run_cli("verify", "--checkpoint", str(tmp_path / "missing.json"), config=path)
    assert missing.returncode == 2 and "missing.json" in missing.stderr
    (tmp_path / "bad.json").write_text('{"stream": "api"}')
    bad = run_cli("verify", "--checkpoint", str(tmp_path / "bad.json"), config=path)
    assert bad.returncode == 2 and "size" in bad.stderr
    other = tmp_path / "other.json"
    other.write_text(json.dumps(checkpoint.to_json()))
    mismatch = run_cli("verify", "--checkpoint", str(other), "--stream", "billing", config=path)
    assert mismatch.returncode == 2

    config.integrity.key_file.chmod(0o644)
    exposed = run_cli("verify", config=path)
    assert exposed.returncode == 2 and "chmod 600" in exposed.stderr
    daemon = run_cli(config=path, timeout=30)
    assert daemon.returncode == 2 and "integrity.key_file" in daemon.stderr
    config.integrity.key_file.unlink()
    keyless = run_cli("verify", config=path)
    assert keyless.returncode == 2 and "does not exist" in keyless.stderr


def test_a_long_stream_gives_one_verdict_in_one_process_or_several(
    setup: tuple[Path, Config, AuditStore],
) -> None:
    path, config, store = setup
    count = (2 << CHUNK_LEVEL) + 100  # two whole chunks and part of a third
    events: list[AuditEvent] = []
    for start in range(0, count, 2_000):
        numbers = range(start, min(count, start + 2_000))
        appended = store.append([AppendRequest([new_event(n) for n in numbers])])[0]
        events.extend(a.event for a in appended)
        if start == 20_000:
            sign(config, store)
    sign(config, store)
    intact = f"stream api: intact ({count} events, 2 signed checkpoints)"
    for jobs in ("2", "1"):
        result = run_cli("verify", "--jobs", jobs, config=path)
        assert (result.returncode, result.stdout.strip()) == (0, intact), result.stderr

    bad_seq = (1 << CHUNK_LEVEL) + 500  # in the second chunk, before the first checkpoint
    set_column(store, "api", bad_seq, entity="charge")
    verdicts = {run_cli("verify", "--jobs", jobs, config=path).stdout for jobs in ("2", "1")}
    assert verdicts == {
        f"stream api: NOT intact at seq {bad_seq} (id {events[bad_seq - 1].id}): altered: "
        "a field of the event was changed: its hash no longer fits it\n"
    }


def test_a_fresh_store_without_a_key_is_intact(setup: tuple[Path, Config, AuditStore]) -> None:
    path, _, store = setup
    fill(store, 3)
    result = run_cli("verify", config=path)
    assert result.returncode == 0 and "intact (3 events, 0 signed checkpoints)" in result.stdout


def test_the_daemon_signs_on_a_clean_stop(tmp_path: Path) -> None:
    port = free_port()
    path = write_config(
        tmp_path,
        f"sqlite:///{tmp_path / 'audit.db'}",
        server={"host": "127.0.0.1", "port": port},
    )
    with running_daemon(path, port):
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/events",
            data=json.dumps({"entity": "charge", "event_type": "CREATE"}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 201
    result = run_cli("verify", config=path)
    assert result.returncode == 0
    assert "stream api: intact (1 events, 1 signed checkpoints)" in result.stdout
