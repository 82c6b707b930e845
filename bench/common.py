"""Shared helpers of the benchmarks: rounds, medians, the daemon as a process, plots.

Method (issue 6): every benchmark runs its subject and its references side by
side in the same run, alternating, several rounds; it reports medians and the
ratio subject / reference, because this 2-core machine is shared and noisy.
Every load loop is bounded in count and in time, and only loopback is used.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PY = sys.executable
PG_URL = os.environ.get("AUDITOR_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")

TABLES_YAML = """
    tables:
      - table: customers
        entity: customer
        actor: id
        ignore: [updated_at]
        mask: [card_number]
        actions:
          - action: customer.deactivated
            when: {status: deactivated}
      - table: resource_actions
        entity: resource_action
        actor: customer_id
      - table: charges
        entity: charge
        actor: customer_id
"""


@dataclass
class Figure:
    """One line of the results table."""

    figure: str
    value: float
    unit: str
    target: str
    met: bool | None
    reference: str = ""
    reference_value: float | None = None
    ratio: float | None = None
    size: str = ""
    note: str = ""


@dataclass
class Result:
    name: str
    title: str
    figures: list[Figure] = field(default_factory=list)
    rounds: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def save(self) -> None:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{self.name}.json").write_text(json.dumps(asdict(self), indent=1))


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def alternate(subjects: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Run each subject once per round, in turn (order rotated each round)."""
    names = list(subjects)
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            out[name].append(subjects[name]())
    return out


def machine() -> dict[str, str]:
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) // 1024 // 1024} GiB"
    versions = {}
    for mod in ("aiohttp", "sqlalchemy", "psycopg", "orjson", "flask", "gunicorn", "matplotlib"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:
            versions[mod] = "?"
    pg = "?"
    try:
        import psycopg

        with psycopg.connect(PG_URL) as conn:
            pg = str(conn.execute("SHOW server_version").fetchone()[0])
    except Exception:
        pass
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    return {
        "cores": str(os.cpu_count()),
        "cpu": model,
        "memory": mem,
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "postgresql": pg,
        "wrk": (wrk.stdout + wrk.stderr).split("\n")[0].split(" [")[0],
        **versions,
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def workdir(name: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=f"auditor-bench-{name}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def write_config(
    directory: Path,
    store_url: str,
    *,
    billing: Path | None = None,
    port: int = 0,
    batch_size: int = 1000,
    poll_interval: float = 1.0,
    workers: int = 1,
    name: str = "config.yaml",
) -> Path:
    text = f"""store:
  url: {store_url}
server:
  host: 127.0.0.1
  port: {port}
  workers: {workers}
capture:
  poll_interval: {poll_interval}
  batch_size: {batch_size}
  snapshot: false
integrity:
  key_file: {directory / 'key'}
"""
    if billing is not None:
        text += f"sources:\n  - name: billing\n    database: {billing}\n{TABLES_YAML}"
    path = directory / name
    path.write_text(text)
    return path


class Daemon:
    """`run_daemon.py` as a process of its own, on a loopback port."""

    def __init__(self, config: Path, port: int) -> None:
        self.port = port
        self.log = config.parent / "daemon.log"
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [PY, str(ROOT / "run_daemon.py"), "--config", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env={**os.environ, "AUDITOR_LOG_LEVEL": "WARNING"},
            )
        self.pid = self.process.pid
        self._wait(60)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"daemon exited: {self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.base + "/ping", timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise TimeoutError("daemon did not answer /ping")

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.base + path, timeout=30) as response:
            return json.loads(response.read())

    def post(self, path: str, body: Any) -> Any:
        request = urllib.request.Request(
            self.base + path, data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def rss_kb(self) -> tuple[int, int]:
        """(VmRSS, VmHWM) in KiB."""
        rss = hwm = 0
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
        return rss, hwm

    def tree_memory_kb(self) -> tuple[int, int, int]:
        """(processes, summed VmRSS, summed PSS) in KiB over the daemon and every process
        under it (its store writer process; with `server.workers`, its API workers and
        the starter that forks them). PSS shares each page among the processes that map
        it: the fair sum."""
        rss = pss = 0
        tree = self._tree()
        for pid in tree:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
        return len(tree), rss, pss

    def tree_peaks_kb(self) -> list[int]:
        """Each process's peak RSS (VmHWM) in KiB, the daemon's first: their sum is at
        least the peak of the processes together (their peaks need not coincide)."""
        peaks = []
        for pid in self._tree():
            with open(f"/proc/{pid}/status") as f:
                peaks += [int(line.split()[1]) for line in f if line.startswith("VmHWM:")]
        return peaks

    def _tree(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                except OSError:
                    continue
                children.setdefault(ppid, []).append(int(entry))
        tree, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            tree.append(pid)
            todo.extend(children.get(pid, []))
        return tree

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def billing_db(path: Path) -> Path:
    """The demo billing schema, WAL, as the billing service would create it."""
    from demo.simulator import create_schema

    create_schema(path)
    return path


def install_auditor(config_path: Path) -> None:
    """Install Auditor's triggers on the config's source (as `install-triggers` does)."""
    from cdc.service import install_source
    from config import load_config

    config = load_config(config_path)
    for source in config.sources:
        install_source(source, 0)


def host_connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def seed_customers(path: Path, count: int = 1000) -> None:
    conn = host_connect(path)
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT OR IGNORE INTO customers (id, identity, name, card_number, created_at, updated_at)"
        " VALUES (?, ?, ?, '4111', '2026-01-01', '2026-01-01')",
        [(i, f"idp|{i}", f"customer {i}") for i in range(1, count + 1)],
    )
    conn.execute("COMMIT")
    conn.close()


def make_backlog(path: Path, changes: int) -> None:
    """`changes` captured changes on `charges` in a billing database with triggers:
    70% inserts, 20% updates, 10% deletes, written in large transactions."""
    conn = host_connect(path)
    inserts = int(changes * 0.7)
    updates = int(changes * 0.2)
    deletes = changes - inserts - updates
    step = 50_000
    base = int(conn.execute("SELECT coalesce(max(id), 0) FROM charges").fetchone()[0])
    for start in range(0, inserts, step):
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO charges (id, customer_id, amount_cents, currency, description, created_at)"
            " VALUES (?, ?, ?, 'EUR', 'Team plan', '2026-11-28T12:00:00.000Z')",
            [
                (base + i + 1, (i % 1000) + 1, 100 + i % 5000)
                for i in range(start, min(inserts, start + step))
            ],
        )
        conn.execute("COMMIT")
    for start in range(0, updates, step):
        conn.execute("BEGIN")
        conn.executemany(
            "UPDATE charges SET status = 'paid' WHERE id = ?",
            [(base + i + 1,) for i in range(start, min(updates, start + step))],
        )
        conn.execute("COMMIT")
    for start in range(0, deletes, step):
        conn.execute("BEGIN")
        conn.executemany(
            "DELETE FROM charges WHERE id = ?",
            [(base + inserts - i,) for i in range(start, min(deletes, start + step))],
        )
        conn.execute("COMMIT")
    conn.close()


def count_rows(path: Path, table: str) -> int:
    """Rows of `table` (one of this project's own) in the SQLite file at `path`."""
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0])
    finally:
        conn.close()


def shadow_count(path: Path) -> int:
    return count_rows(path, "_auditor_changes")


def pg_database(name: str) -> str:
    """Create a fresh database `name` (dropping an old one); return its psycopg URL."""
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_URL.rsplit("/", 1)[0]
    return f"{base}/{name}"


def pg_drop(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def wrk(
    url: str,
    *,
    connections: int,
    seconds: float,
    script: Path | None = None,
    threads: int = 2,
) -> dict[str, float]:
    """Run wrk (bounded by `seconds`); return req/s, p50, p99 (ms), errors."""
    command = [
        "wrk", f"-t{min(threads, connections)}", f"-c{connections}", f"-d{seconds:.0f}s",
        "--latency", "--timeout", "5s",
    ]
    if script is not None:
        command += ["-s", str(script)]
    out = subprocess.run(
        [*command, url], capture_output=True, text=True, timeout=seconds + 60, check=True
    ).stdout
    result = {"rps": 0.0, "p50": float("nan"), "p99": float("nan"), "errors": 0.0}
    for line in out.splitlines():
        parts = line.split()
        if line.startswith("Requests/sec:"):
            result["rps"] = float(parts[1])
        elif parts[:1] == ["50%"]:
            result["p50"] = _ms(parts[1])
        elif parts[:1] == ["99%"]:
            result["p99"] = _ms(parts[1])
        elif "Non-2xx" in line or line.strip().startswith("Socket errors"):
            result["errors"] += sum(int(p.rstrip(",")) for p in parts if p.rstrip(",").isdigit())
    return result


def _ms(text: str) -> float:
    for suffix, scale in (("us", 0.001), ("ms", 1.0), ("s", 1000.0), ("m", 60000.0)):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * scale
    return float(text)


def plot_bars(
    name: str, title: str, ylabel: str, series: dict[str, list[float]], *, target: float | None
) -> None:
    """One PNG: the median of each series with its min-max range, and the target line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(series)
    medians = [median(series[k]) for k in labels]
    lows = [m - min(series[k]) for k, m in zip(labels, medians, strict=True)]
    highs = [max(series[k]) - m for k, m in zip(labels, medians, strict=True)]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(range(len(labels)), medians, yerr=[lows, highs], capsize=4, color="#4c72b0")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=15, ha="right", fontsize=8)
    for i, m in enumerate(medians):
        ax.text(i, m, f"{m:,.0f}" if m >= 100 else f"{m:.2f}", ha="center", va="bottom", fontsize=8)
    if target is not None:
        ax.axhline(target, color="#c44e52", linestyle="--", label=f"target {target:,g}")
        ax.legend(fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(RESULTS / f"{name}.png", dpi=90)
    plt.close(fig)


def plot_cdf(name: str, title: str, samples: dict[str, list[float]], xlabel: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, values in samples.items():
        ordered = sorted(values)
        if ordered:
            ax.plot(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))], label=label)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction ≤ x")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(RESULTS / f"{name}.png", dpi=90)
    plt.close(fig)
