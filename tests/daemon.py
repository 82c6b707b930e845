"""Running `run_daemon.py` as a real separate process for tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run_cli(
    *args: str, config: Path | None = None, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(ROOT / "run_daemon.py")]
    if config is not None:
        command += ["--config", str(config)]
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
        env={**os.environ, **(env or {})},
    )


def set_port(config: Path, port: int) -> None:
    """Point an existing config file's `server.port` at `port`."""
    document = yaml.safe_load(config.read_text())
    document["server"]["port"] = port
    config.write_text(yaml.safe_dump(document))


def start_daemon(config: Path) -> subprocess.Popen[bytes]:
    """Start the daemon on a free port without waiting for it (for kill tests);
    output is appended to `daemon.log` beside the config."""
    set_port(config, free_port())
    with (config.parent / "daemon.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, str(ROOT / "run_daemon.py"), "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )


@contextmanager
def running_daemon(config: Path, port: int, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """Start the daemon, wait until /ping answers, stop it with SIGTERM afterwards.

    Its output goes to `daemon.log` beside the config file, for tests to read."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log_path = config.parent / "daemon.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "run_daemon.py"), "--config", str(config), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=env,
        )
    try:
        wait_for_ping(port, process, log_path)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_for_ping(
    port: int, process: subprocess.Popen[bytes], log_path: Path, timeout: float = 30
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = log_path.read_text(errors="replace")
            raise RuntimeError(f"daemon exited with {process.returncode}:\n{output}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError("daemon did not answer /ping")
