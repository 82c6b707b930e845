"""Commands over the stored trail: export and verify."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from commands.common import EXIT_OK, UsageError, open_store
from config import Config

_EXPORT_FILTERS = ("actor", "entity", "entity_id", "action", "stream", "property", "since", "until")


def add_parsers(sub: Any) -> None:
    _add_export_parser(sub)
    verify = sub.add_parser(
        "verify", help="recompute the audit trail and check it against the signed checkpoints"
    )
    verify.add_argument("--stream", help="check this stream only (default: every stream)")
    verify.add_argument(
        "--checkpoint",
        metavar="FILE",
        help="also check against this checkpoint (a saved GET /v1/checkpoints/latest body)",
    )
    verify.add_argument(
        "--jobs",
        type=_jobs,
        default=len(os.sched_getaffinity(0)),
        metavar="N",
        help="processes that check a long stream's events at once (default: the CPUs this "
        "process may use; 1: a single pass in this process)",
    )
    verify.set_defaults(handler=cmd_verify)


def _jobs(value: str) -> int:
    try:
        jobs = int(value)
    except ValueError:
        jobs = 0
    if not 1 <= jobs <= 256:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to 256, not {value!r}")
    return jobs


def _add_export_parser(sub: Any) -> None:
    export = sub.add_parser("export", help="events matching the filters to standard output")
    for name in _EXPORT_FILTERS:
        export.add_argument(f"--{name.replace('_', '-')}", dest=name, metavar="VALUE")
    export.add_argument(
        "--event-type",
        dest="event_type",
        action="append",
        default=[],
        metavar="TYPE",
        help="CREATE, READ, UPDATE or DELETE (repeatable)",
    )
    export.add_argument("--order", help="asc (default) or desc")
    export.add_argument("--format", default="ndjson", help="ndjson (default) or csv")
    export.set_defaults(handler=cmd_export)


def cmd_export(args: argparse.Namespace, config: Config) -> int:
    """The same bytes as `GET /v1/export`, written to standard output a page at a time."""
    from multidict import MultiDict

    from web.export_format import export_chunks
    from web.export_routes import parse_export_params
    from web.problems import Problem

    params: MultiDict[str] = MultiDict(
        [(name, getattr(args, name)) for name in _EXPORT_FILTERS if getattr(args, name) is not None]
        + [("event_type", value) for value in args.event_type]
        + [("format", args.format)]
        + ([("order", args.order)] if args.order is not None else [])
    )
    try:
        query, fmt = parse_export_params(params)
    except Problem as problem:
        raise UsageError(
            "; ".join(f"--{e.field.replace('_', '-')}: {e.message}" for e in problem.errors)
        ) from problem
    store = open_store(config)
    try:
        for chunk in export_chunks(store, query, fmt):
            sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
    except BrokenPipeError:
        # The reader (`| head`) has had enough; that is not a failure.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        store.close()
    return EXIT_OK


def cmd_verify(args: argparse.Namespace, config: Config) -> int:
    """Exit 0 when every checked stream is intact, 1 when one is not (each named on stdout)."""
    from pathlib import Path

    from storage.verify_cli import VerifyUsageError, run_verify

    store = open_store(config)
    try:
        return run_verify(
            store,
            config.integrity.key_file,
            stream=args.stream,
            checkpoint_file=Path(args.checkpoint) if args.checkpoint else None,
            jobs=args.jobs,
            out=sys.stdout,
            err=sys.stderr,
        )
    except VerifyUsageError as exc:
        raise UsageError(f"{config.path}: {exc}") from exc
    finally:
        store.close()
