#!/usr/bin/env python3
"""Auditor's one entry point: `run_daemon.py [--config PATH] [COMMAND]`.

This module only parses the command line, loads the configuration and wires
the packages together (`cdc/` and `web/` never import each other).
Exit codes: 0 success, 1 a failed check, 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from sqlalchemy.engine import make_url

from config import Config, ConfigError, load_config, resolve_config_path
from storage.store import AuditStore, StorageError

log = logging.getLogger("auditor")

EXIT_OK = 0
EXIT_FAILED_CHECK = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """Bad usage or configuration: reported on stderr, exit 2."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("AUDITOR_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    command: Callable[[argparse.Namespace, Config], int] = args.handler
    try:
        config = load_config(resolve_config_path(args.config, os.environ))
        return command(args, config)
    except (ConfigError, UsageError) as exc:
        print(f"auditor: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_daemon.py", description="Auditor: audit trail daemon"
    )
    parser.add_argument(
        "--config", help="configuration file (default: $AUDITOR_CONFIG or config.yaml)"
    )
    parser.set_defaults(handler=cmd_run)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    sub.add_parser("run", help="capture every source and serve the API").set_defaults(
        handler=cmd_run
    )
    sub.add_parser(
        "demo", help="simulate a billing database, capture it and serve the API"
    ).set_defaults(handler=cmd_demo)
    return parser


def open_store(config: Config) -> AuditStore:
    url = make_url(config.store.url).render_as_string(hide_password=True)
    try:
        store = AuditStore.open(config.store.url)
    except StorageError as exc:
        raise UsageError(f"{config.path}: store.url: {exc} ({url})") from exc
    log.info("audit store ready at %s", url)
    return store


def cmd_run(args: argparse.Namespace, config: Config) -> int:
    from aiohttp import web

    from web.app import create_app

    store = open_store(config)
    try:
        app = create_app(config, store)
        host, port = config.server.host, config.server.port
        web.run_app(app, host=host, port=port, print=None, access_log=None)
        log.info("stopped cleanly")
    finally:
        store.close()
    return EXIT_OK


def cmd_demo(args: argparse.Namespace, config: Config) -> int:
    return cmd_run(args, config)


if __name__ == "__main__":
    sys.exit(main())
