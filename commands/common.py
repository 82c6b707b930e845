"""What every command shares: exit codes, the usage error, opening the store."""

from __future__ import annotations

import logging
import os

from sqlalchemy.engine import make_url

from config import Config
from storage.store import AuditStore, StorageError
from storage.writer_process import runs_apart

log = logging.getLogger("auditor")

EXIT_OK = 0
EXIT_FAILED_CHECK = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
"""A command stopped by Ctrl-C (SIGINT) before it finished: 128 + 2, as shells report it."""


def setup_logging() -> None:
    """Log to stderr at $AUDITOR_LOG_LEVEL (INFO by default)."""
    logging.basicConfig(
        level=os.environ.get("AUDITOR_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # APScheduler logs every run of the fallback poll at INFO.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)


class UsageError(Exception):
    """Bad usage or configuration: reported on stderr, exit 2."""


def open_store(config: Config) -> AuditStore:
    url = make_url(config.store.url).render_as_string(hide_password=True)
    try:
        # With API workers or the API's store writer process (storage.writer_process),
        # several processes append: they queue on the store's write lock.
        shared = config.server.workers > 1 or runs_apart(config.store.url)
        store = AuditStore.open(config.store.url, shared=shared)
    except StorageError as exc:
        raise UsageError(f"{config.path}: store.url: {exc} ({url})") from exc
    log.info("audit store ready at %s", url)
    return store
