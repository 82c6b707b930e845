"""Two checkouts of Auditor under the same load, alternating: the before/after
figures of a commit message (`python -m bench` compares Auditor with its peers and
ceilings, not with itself).

    git worktree add /tmp/before <commit>
    python -m bench.ab /tmp/before . single     # 64 connections, one event a post
    python -m bench.ab /tmp/before . batch      # 4 connections, 1,000 events a post
    python -m bench.ab /tmp/before . latency    # capture latency at 500 changes/s

Each checkout runs its own `run_daemon.py` (with this checkout's interpreter) on a
store of its own; wrk posts to one, then the other, the order swapped every round.
Each daemon gets one post first (steady state: it starts the store writer process).
`latency` runs the capture-latency benchmark (`bench.capture_live.measure_latency`,
`--seconds` of billing commits at 500/s) against each checkout's daemon in turn,
each round on a fresh billing database and store.
"""

from __future__ import annotations

import argparse
import os
import subprocess
from pathlib import Path

from bench.capture_live import measure_latency
from bench.common import PY, Daemon, free_port, median, percentile, workdir, write_config, wrk
from bench.http_api import EVENT, _post_script


class CheckoutDaemon(Daemon):
    """`Daemon`, but running the `run_daemon.py` of another checkout."""

    def __init__(self, checkout: Path, config: Path, port: int) -> None:
        self.port = port
        self.log = config.parent / "daemon.log"
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [PY, str(checkout / "run_daemon.py"), "--config", str(config)],
                stdout=log, stderr=subprocess.STDOUT, cwd=checkout,
                env={**os.environ, "AUDITOR_LOG_LEVEL": "WARNING"},
            )
        self.pid = self.process.pid
        self._wait(60)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab")
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("load", choices=["single", "batch", "latency"])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=8)
    args = parser.parse_args(argv)
    checkouts = {"before": args.before.resolve(), "after": args.after.resolve()}
    if args.load == "latency":
        return _latency(checkouts, args.rounds, args.seconds)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in checkouts}
    with workdir("ab") as directory:
        if args.load == "single":
            script, connections, events = _post_script(directory, "event", EVENT), 64, 1
        else:
            batch = [{**EVENT, "entity_id": f"ch_{i}", "actor": {"id": f"{i % 100:03d}"}}
                     for i in range(1000)]
            script = _post_script(directory, "batch", {"events": batch})
            connections, events = 4, 1000
        daemons: dict[str, Daemon] = {}
        try:
            for name, checkout in checkouts.items():
                (directory / name).mkdir()
                port = free_port()
                config = write_config(directory / name,
                                      f"sqlite:///{directory / name / 'audit.db'}", port=port)
                daemons[name] = CheckoutDaemon(checkout, config, port)
                daemons[name].post("/v1/events", EVENT)
            for round_ in range(args.rounds):
                order = list(checkouts) if round_ % 2 == 0 else list(checkouts)[::-1]
                for name in order:
                    result = wrk(daemons[name].base + "/v1/events", connections=connections,
                                 seconds=args.seconds, script=script)
                    runs[name].append(result)
                    print(f"{name}: {result['rps'] * events:,.0f} events/s, "
                          f"p99 {result['p99']:.1f} ms, errors {result['errors']:.0f}",
                          flush=True)
        finally:
            for daemon in daemons.values():
                daemon.stop()
    rates = {name: median([r["rps"] * events for r in runs[name]]) for name in checkouts}
    for name in checkouts:
        p99 = median([r["p99"] for r in runs[name]])
        print(f"{name}: median {rates[name]:,.0f} events/s, p99 median {p99:.1f} ms")
    print(f"after ÷ before: {rates['after'] / rates['before']:.2f}")
    return 0


def _latency(checkouts: dict[str, Path], rounds: int, seconds: int) -> int:
    p50s: dict[str, list[float]] = {name: [] for name in checkouts}
    p99s: dict[str, list[float]] = {name: [] for name in checkouts}
    with workdir("ab-latency") as directory:
        for round_ in range(rounds):
            order = list(checkouts) if round_ % 2 == 0 else list(checkouts)[::-1]
            for name in order:
                run = directory / f"{name}-{round_}"
                run.mkdir()
                checkout = checkouts[name]
                lat, polls, missing = measure_latency(
                    run, seconds, lambda config, port: CheckoutDaemon(checkout, config, port)  # noqa: B023
                )
                p50s[name].append(percentile(lat, 50))
                p99s[name].append(percentile(lat, 99))
                print(f"{name}: p50 {p50s[name][-1]:.2f} ms, p99 {p99s[name][-1]:.2f} ms, "
                      f"GET round trip {median(polls):.2f} ms, never seen {missing}", flush=True)
    for name in checkouts:
        print(f"{name}: p50 median {median(p50s[name]):.2f} ms, "
              f"p99 median {median(p99s[name]):.2f} ms")
    print(f"after ÷ before, p50: {median(p50s['after']) / median(p50s['before']):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
