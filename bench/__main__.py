"""`python -m bench [--full] [--only NAME,...] [--report-only]`: run the benchmarks,
save each one's figures in bench/results/NAME.json and its plot NAME.png, and
write BENCHMARKS.md from every saved result (so one benchmark can be re-run alone).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime

from bench import capture_live, drain, host_writes, http_api, integrity_cost
from bench.common import RESULTS, ROOT, Result, machine

BENCHMARKS: dict[str, Callable[[bool], Result | list[Result]]] = {
    "host_writes": host_writes.run,
    "host_writes_daemon": host_writes.run_with_daemon,
    "drain_sqlite": drain.run,
    "drain_pg": lambda quick: drain.run(quick, pg=True),
    "capture_latency": capture_live.latency,
    "end_to_end": capture_live.end_to_end,
    "post_single": http_api.post_single,
    "post_batch": http_api.post_batch,
    "get_query": http_api.get_and_verify,  # also writes "verify"
    "memory": capture_live.memory,
    "capture_batch": capture_live.capture_batch,
    "integrity_cost": integrity_cost.run,
}
ORDER = ["host_writes", "host_writes_daemon", "drain_sqlite", "drain_pg", "capture_latency",
         "end_to_end", "post_single", "post_batch", "get_query", "verify", "memory",
         "capture_batch", "integrity_cost"]


def code_version() -> str:
    """The commit the benchmarks ran, with "+changes" when the code differed from it
    (the results and BENCHMARKS.md themselves do not count)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              check=False).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    changed = [line for line in git("status", "--porcelain").splitlines()
               if not line[3:].startswith(("bench/results/", "BENCHMARKS.md"))]
    return commit + ("+changes" if changed else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--full", action="store_true", help="the issue's sizes (slow)")
    parser.add_argument("--only", help="comma-separated benchmark names")
    parser.add_argument("--report-only", action="store_true", help="only rewrite BENCHMARKS.md")
    parser.add_argument("--no-profile", action="store_true")
    args = parser.parse_args(argv)
    quick = not args.full
    RESULTS.mkdir(parents=True, exist_ok=True)
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    failed = []
    if not args.report_only:
        run_info = {"command": "python -m bench" + (" --full" if args.full else "")
                    + (f" --only {args.only}" if args.only else ""),
                    "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                    "mode": "quick" if quick else "full", "machine": machine(),
                    "code": code_version()}
        previous = RESULTS / "run.json"
        if args.only and previous.exists():
            # A partial re-run: keep the full run's record, list the re-run beside it.
            whole = json.loads(previous.read_text())
            whole.setdefault("reruns", []).append(
                {"command": run_info["command"], "date": run_info["date"],
                 "code": run_info["code"]})
            run_info = whole
        previous.write_text(json.dumps(run_info, indent=1))
        for name in names:
            started = time.monotonic()
            print(f"bench: {name} …", flush=True)
            try:
                results = BENCHMARKS[name](quick)
            except Exception:
                traceback.print_exc()
                failed.append(name)
                continue
            for result in results if isinstance(results, list) else [results]:
                result.seconds = time.monotonic() - started
                result.save()
                for figure in result.figures:
                    ratio = None if figure.ratio is None else round(figure.ratio, 2)
                    print(f"  {figure.figure}: {figure.value:,.2f} {figure.unit} "
                          f"(ratio {ratio}, {'met' if figure.met else 'NOT met'})", flush=True)
            print(f"bench: {name} took {time.monotonic() - started:.0f} s", flush=True)
        if not args.no_profile and (args.only is None or "profile" in names):
            (RESULTS / "profile_capture_summary.txt").write_text(drain.profile(quick) + "\n")
            (RESULTS / "profile_ingest_summary.txt").write_text(
                http_api.profile_ingest(quick) + "\n")
    from bench.report import write_report

    write_report(ROOT / "BENCHMARKS.md", ORDER)
    print("bench: wrote BENCHMARKS.md" + (f"; FAILED: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

