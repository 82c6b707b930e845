"""`run_daemon.py` as a user runs it: a separate process, real config files, curl."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.daemon import free_port, run_cli, running_daemon


def write(tmp_path: Path, document: dict[str, object]) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.mark.parametrize(
    ("document", "key"),
    [
        ({"store": {"url": "sqlite:///a.db", "colour": 1}}, "store.colour"),
        ({"store": {}}, "store.url"),
        ({"store": {"url": "sqlite:///a.db"}, "server": {"port": "many"}}, "server.port"),
    ],
)
def test_bad_config_exits_2_naming_key_and_file(
    tmp_path: Path, document: dict[str, object], key: str
) -> None:
    config = write(tmp_path, document)
    result = run_cli(config=config)
    assert result.returncode == 2
    assert key in result.stderr and "config.yaml" in result.stderr


def test_auditor_config_environment_variable_selects_the_file(tmp_path: Path) -> None:
    config = write(tmp_path, {"store": {"url": "sqlite:///a.db", "nope": 1}})
    result = run_cli(env={"AUDITOR_CONFIG": str(config)})
    assert result.returncode == 2 and "store.nope" in result.stderr


@pytest.mark.parametrize("workers", [1, 2])
def test_a_store_that_cannot_be_made_exits_2_and_leaves_no_process(
    tmp_path: Path, workers: int
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    config = write(tmp_path, {
        "store": {"url": f"sqlite:///{blocker / 'audit.db'}"},
        "server": {"port": free_port(), "workers": workers},
    })
    result = run_cli(config=config)
    assert result.returncode == 2
    # The folder to make is a file: the operating system's reason, and the URL.
    assert "store.url: cannot open the audit store: File exists" in result.stderr
    assert str(blocker / "audit.db") in result.stderr
    assert "Traceback" not in result.stderr
    # With workers, the starter was forked before the store was opened: it is gone too.
    assert not [
        entry for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and str(config) in _cmdline(entry)
    ]


def _cmdline(process: Path) -> str:
    try:
        return (process / "cmdline").read_bytes().decode(errors="replace")
    except OSError:  # gone meanwhile
        return ""


def test_unknown_command_is_usage_error(tmp_path: Path) -> None:
    assert run_cli("frobnicate").returncode == 2


def test_seed_curl_lines_work_against_the_daemon(tmp_path: Path) -> None:
    port = free_port()
    config = write(
        tmp_path,
        {
            "store": {"url": "sqlite:///data/audit.db"},
            "server": {"host": "127.0.0.1", "port": port},
        },
    )
    with running_daemon(config, port) as daemon:
        base = f"localhost:{port}"

        def curl(*args: str) -> dict[str, object]:
            out = subprocess.run(
                ["curl", "-s", *args], capture_output=True, text=True, check=True, timeout=10
            )
            result: dict[str, object] = json.loads(out.stdout)
            return result

        assert curl("-X", "GET", f"{base}/ping") == {"result": "success", "message": "pong"}
        created = curl(
            "-X",
            "POST",
            "-d",
            '{"entity": "CustomerData", "datetime": "2022-02-02", "event_type": "CREATE"}',
            f"{base}/create_log/073",
        )
        assert created["result"] == "success" and created["entity"] == "CustomerData"
        listing = curl("-X", "GET", f"{base}/get_log/customer/073")
        assert [e["event_uuid"] for e in listing["events"]] == [created["event_uuid"]]  # type: ignore[attr-defined]

        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=20) == 0
    assert (tmp_path / "data" / "audit.db").exists()
