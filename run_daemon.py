#!/usr/bin/env python3
"""Auditor's one entry point: `run_daemon.py [--config PATH] [COMMAND]`.

This module parses the command line and loads the configuration; each command
lives in `commands/`, which wires the packages together (`cdc/` and `web/`
never import each other).
Exit codes: 0 success, 1 a failed check, 2 bad usage or configuration, 130 a
command (not the daemon, for which Ctrl-C is the way to stop) interrupted by
Ctrl-C before it finished: an interrupted `verify` has not found the trail intact.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from commands import capture, records, serve
from commands.common import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, UsageError, setup_logging
from config import Config, ConfigError, load_config, resolve_config_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    setup_logging()
    command: Callable[[argparse.Namespace, Config], int] = args.handler
    try:
        config = load_config(resolve_config_path(args.config, os.environ))
        return command(args, config)
    except (ConfigError, UsageError) as exc:
        print(f"auditor: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK if command in (serve.cmd_run, serve.cmd_demo) else EXIT_INTERRUPTED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_daemon.py", description="Auditor: audit trail daemon"
    )
    parser.add_argument(
        "--config", help="configuration file (default: $AUDITOR_CONFIG or config.yaml)"
    )
    parser.set_defaults(handler=serve.cmd_run)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    serve.add_parsers(sub)
    capture.add_parsers(sub)
    records.add_parsers(sub)
    return parser


if __name__ == "__main__":
    sys.exit(main())
