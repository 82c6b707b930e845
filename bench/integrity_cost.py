"""What integrity costs: `AuditStore.append` with integrity on and off, same process,
alternating rounds (issue: "aim for integrity costing at most 25 % of ingest").

"Off" is the same store with its integrity work replaced by constants for the
duration of a round: no payload digest, no canonical encoding, no leaf hash, no
Merkle nodes or root (the columns still get fixed values, so the SQL is the same
but for the `merkle_nodes` rows). It is a measuring device only; Auditor has no
such switch. Two shapes: 1,000-event appends (a capture batch, a batch POST) and
64 one-event requests per append (group commit under concurrent single POSTs).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any
from unittest import mock

from bench.common import Figure, Result, alternate, median, plot_bars, workdir

_HASH = b"\x11" * 32
_DIGEST = "22" * 32


@contextlib.contextmanager
def integrity_off() -> Iterator[None]:
    from storage import store

    def no_tree(self: Any, conn: Any, stream: str, size: int, leaves: Any) -> dict[Any, Any]:
        return {}

    with (
        mock.patch.object(store, "payload_digest", lambda document: _DIGEST),
        mock.patch.object(store, "canonical_event", lambda *args: b""),
        mock.patch.object(store.merkle, "leaf_hash", lambda data: _HASH),
        mock.patch.object(store.AuditStore, "_grow_tree", no_tree),
    ):
        yield


def run(quick: bool) -> Result:
    from commands.serve import settle_collector
    from storage.events import Actor, EventType, NewEvent, utc_now
    from storage.store import AppendRequest, AuditStore

    events_per_round, rounds = (20_000, 5) if quick else (200_000, 5)
    result = Result("integrity_cost", "Appends per second, integrity on and off")

    def batch(n: int, start: int) -> list[NewEvent]:
        return [
            NewEvent(stream="api", entity="charge", entity_id=str(start + i),
                     event_type=EventType.UPDATE, action="charge.updated",
                     actor=Actor(f"{(start + i) % 1000:04d}", "Name", "10.0.0.1"),
                     properties=("amount", "status"), occurred_at=utc_now(),
                     before={"amount": i, "status": "open"},
                     after={"amount": i + 1, "status": "paid"}, metadata={"n": i})
            for i in range(n)
        ]

    with workdir("integrity") as directory:
        counter = iter(range(1000))
        settle_collector()  # as the daemon does

        def appends(shape: str, off: bool) -> float:
            store = AuditStore.open(f"sqlite:///{directory / f'{next(counter)}.db'}")
            try:
                guard = integrity_off() if off else contextlib.nullcontext()
                with guard:
                    started = time.perf_counter()
                    for start in range(0, events_per_round, 1000):
                        if shape == "1,000-event appends":
                            store.append([AppendRequest(batch(1000, start))])
                        else:
                            for sub in range(start, start + 1000, 64):
                                store.append([AppendRequest([e]) for e in batch(64, sub)])
                    return events_per_round / (time.perf_counter() - started)
            finally:
                store.close()

        subjects = {
            f"{shape}, integrity {state}": (
                lambda shape=shape, off=state == "off": appends(shape, off)
            )
            for shape in ("1,000-event appends", "64 one-event requests an append")
            for state in ("on", "off")
        }
        series = alternate(subjects, rounds)
    result.rounds = series
    for shape in ("1,000-event appends", "64 one-event requests an append"):
        on, off = median(series[f"{shape}, integrity on"]), median(
            series[f"{shape}, integrity off"])
        cost = 1 - on / off
        result.figures.append(Figure(
            f"integrity cost, {shape}", cost * 100, "% of appends/s", "≤ 25 %", cost <= 0.25,
            reference=f"on {on:,.0f} events/s; off {off:,.0f} events/s", reference_value=off,
            ratio=on / off, size=f"{events_per_round:,} events a round, {rounds} rounds, SQLite",
        ))
    plot_bars("integrity_cost", result.title, "events / s", series, target=None)
    return result
