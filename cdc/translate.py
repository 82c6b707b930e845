"""Turn shadow rows into audit events (`storage.events.NewEvent`).

INSERT → CREATE (`<entity>.created`), UPDATE → UPDATE (`<entity>.updated`, or
the first `actions` rule whose `when` matches the new row and did not already
match the old one), DELETE → DELETE (`<entity>.deleted`). `properties` are the
changed, non-ignored columns of an UPDATE and all columns of a CREATE/DELETE;
masked columns are `"***"` in `before`/`after`.

REPLACE. The triggers write pre-image rows before an INSERT (`P`) or UPDATE
(`R`) that collides with existing rows (see `cdc.triggers`). Within one
statement (same `changed_at`, same table, the pre-image rows' incoming image
equal to the resolving row's new image):

- `P` + `I` with the same key → one UPDATE whose before-image is the `P` row
  (`INSERT OR REPLACE` over an existing row);
- a `P` row with another key, or any `R` row, + `I`/`U` → DELETE of that row
  (REPLACE deleted a row other than the one written: one that held a UNIQUE
  value, or the key an `UPDATE OR REPLACE` moved its row to), then the
  CREATE/UPDATE;
- `P` + `U` with the same key → nothing extra: an upsert (`ON CONFLICT DO
  UPDATE`); its UPDATE already carries the true before-image;
- pre-image rows followed by nothing that matches → nothing: `OR IGNORE`,
  `DO NOTHING`, an upsert that changed nothing.

(Pre-image rows of UPDATEs written before `R` existed are `P` rows; an `UPDATE
OR REPLACE` that moved a row onto another's key there shows no DELETE of it.)

With `recursive_triggers=ON` the REPLACE also fires the DELETE trigger between
`P` and `I`; that `D` row is absorbed, so REPLACE yields the same events in
both modes. A `D` row absorbed by a group that then turns out not to be a
REPLACE is emitted as the DELETE it is.

Event ids are deterministic: a UUIDv7 whose time is the change time, with the
shadow seq in `rand_a` and a hash of (stream, seq) in `rand_b`, so translating
the same rows again (a retry after a crash) yields the same ids. A row that
cannot be translated goes to `failures` with a reason and never stops the rows
behind it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import orjson

from cdc.shadow import ShadowRow
from cdc.triggers import IMAGE_CHUNK, MASK
from storage.events import SYSTEM_ACTOR, Actor, EventType, NewEvent

Failure = tuple[ShadowRow, str]
ConfigValue = str | int | float | bool | None

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)
_INFINITY = re.compile(r'"(?:[^"\\]|\\.)*"|-?\bInf\b')


class ActionRuleLike(Protocol):
    @property
    def action(self) -> str: ...
    @property
    def when(self) -> Mapping[str, ConfigValue]: ...


class CapturedTable(Protocol):
    """What translation needs from a table's configuration (`config.TableConfig`)."""

    @property
    def table(self) -> str: ...
    @property
    def entity(self) -> str: ...
    @property
    def ignore(self) -> tuple[str, ...]: ...
    @property
    def mask(self) -> tuple[str, ...]: ...
    @property
    def actions(self) -> Sequence[ActionRuleLike]: ...


def translate(
    rows: Sequence[ShadowRow], tables_by_name: Mapping[str, CapturedTable], stream: str
) -> tuple[list[NewEvent], list[Failure]]:
    """Events for `rows` (in seq order) and the rows that could not be translated.

    `rows` must not end inside a statement's REPLACE (`cdc.shadow.read_batch`
    guarantees it); a pre-image still waiting at the end is taken as "nothing
    was replaced".
    """
    return _Translation(tables_by_name, stream).run(rows)


def event_id(stream: str, seq: int, occurred_at: datetime) -> str:
    """The id of the event made from shadow row `seq` of `stream` (UUIDv7, RFC 9562).

    48 bits of time (the change time, in ms), then the seq's low 12 bits as
    `rand_a` (ids of one millisecond sort by seq), then `rand_b`: 22 bits of a
    hash of the stream and the seq's low 40 bits. Distinct seqs of one stream
    never share an id; two streams would need the same hash, millisecond and seq.
    """
    millis = (occurred_at - _EPOCH) // _MILLISECOND
    return _uuid7(_uuid7_time(millis), _uuid7_stream(stream), seq)


def _uuid7_time(millis: int) -> str:
    h = f"{millis & 0xFFFF_FFFF_FFFF:012x}"
    return f"{h[:8]}-{h[8:]}-7"


def _uuid7_stream(stream: str) -> str:
    key = int.from_bytes(hashlib.blake2b(stream.encode(), digest_size=3).digest()) >> 2
    h = f"{0b10 << 22 | key:06x}"
    return f"{h[:4]}-{h[4:]}"


def _uuid7(time_part: str, stream_part: str, seq: int) -> str:
    return f"{time_part}{seq & 0xFFF:03x}-{stream_part}{seq & 0xFF_FFFF_FFFF:010x}"


class _Untranslatable(Exception):
    pass


@dataclass(frozen=True, slots=True)
class _View:
    entity: str
    created: str
    updated: str
    deleted: str
    ignore: frozenset[str]
    mask: frozenset[str]
    actions: tuple[tuple[str, tuple[tuple[str, ConfigValue], ...]], ...]


@dataclass(slots=True)
class _Run:
    """Pre-image rows of one statement's row, waiting for the row that resolves them."""

    incoming: str | None
    pre: list[ShadowRow] = field(default_factory=list)
    pks: set[str | None] = field(default_factory=set)
    absorbed: list[ShadowRow] = field(default_factory=list)


class _Translation:
    def __init__(self, tables: Mapping[str, CapturedTable], stream: str) -> None:
        self.tables = tables
        self.stream = stream
        self.stream_part = _uuid7_stream(stream)
        self.views: dict[str, _View | None] = {}
        self.events: list[tuple[int, NewEvent]] = []
        self.last_seq = -(2**63)
        self.in_order = True
        self.failures: list[Failure] = []
        self.actors: dict[str | tuple[str, str | None, str | None] | None, Actor] = {
            None: SYSTEM_ACTOR
        }
        self.time_text = ""
        self.time = _EPOCH
        self.id_prefix = ""

    def run(self, rows: Sequence[ShadowRow]) -> tuple[list[NewEvent], list[Failure]]:
        pending: dict[str, _Run] = {}
        pending_at = ""
        for row in rows:
            if pending and row.changed_at != pending_at:
                self._drop_all(pending)
            op = row.op
            if op == "S":
                continue
            view = self.views[row.table] if row.table in self.views else self._view(row.table)
            if view is None:
                self.failures.append((row, f"table {row.table!r} is not configured"))
            elif pending and row.table in pending:
                self._grouped(row, view, pending)
            elif op == "I" or op == "U" or op == "D":
                self._change(row, view, op, row.old)
            elif op == "P" or op == "R":
                pending[row.table] = _Run(row.new, [row], {row.pk})
                pending_at = row.changed_at
            else:
                self.failures.append((row, f"unknown operation {op!r}"))
        self._drop_all(pending)
        if not self.in_order:
            self.events.sort(key=lambda pair: pair[0])
        return [event for _, event in self.events], self.failures

    def _grouped(self, row: ShadowRow, view: _View, pending: dict[str, _Run]) -> None:
        """A row of a table that has pre-image rows waiting (see the module docstring)."""
        run = pending[row.table]
        op = row.op
        if op == "P" or op == "R":
            if run.incoming != row.new or row.pk in run.pks:
                self._drop(run)
                run = pending[row.table] = _Run(row.new)
            run.pre.append(row)
            run.pks.add(row.pk)
        elif op == "D":
            if row.pk in run.pks and all(d.pk != row.pk for d in run.absorbed):
                run.absorbed.append(row)
            else:
                self._change(row, view, "D", row.old)
        elif op == "I" or op == "U":
            del pending[row.table]
            if not _same_row(run.incoming, row.new):
                self._drop(run)
                self._change(row, view, op, row.old)
                return
            replaced = None
            for pre in run.pre:
                if pre.pk != row.pk or pre.op == "R":
                    self._change(pre, view, "D", pre.old)
                elif op == "I":
                    replaced = pre
            if replaced is None:
                self._change(row, view, op, row.old)
            else:
                self._change(row, view, "U", replaced.old)
        else:
            self.failures.append((row, f"unknown operation {op!r}"))

    def _drop(self, run: _Run) -> None:
        for row in run.absorbed:
            view = self._view(row.table)
            if view is not None:
                self._change(row, view, "D", row.old)

    def _drop_all(self, pending: dict[str, _Run]) -> None:
        for run in pending.values():
            self._drop(run)
        pending.clear()

    def _change(self, row: ShadowRow, view: _View, op: str, old_text: str | None) -> None:
        """Append the event of one change (I, U with `old_text` as before, D), or a failure."""
        try:
            if op == "I":
                before = None
                after = self._image(row, row.new, "new")
                properties = tuple(after)
                event_type, action = EventType.CREATE, view.created
            elif op == "D":
                before = self._image(row, old_text, "old")
                after = None
                properties = tuple(before)
                event_type, action = EventType.DELETE, view.deleted
            else:
                before = self._image(row, old_text, "old")
                after = self._image(row, row.new, "new")
                ignore = view.ignore
                properties = tuple(
                    c for c, v in after.items() if v != before[c] and c not in ignore
                )
                if not properties:
                    return
                event_type, action = EventType.UPDATE, view.updated
                for name, when in view.actions:
                    if _matches(after, when) and not _matches(before, when):
                        action = name
                        break
            if row.changed_at != self.time_text:
                self._parse_time(row.changed_at)
        except _Untranslatable as e:
            self.failures.append((row, str(e)))
            return
        for column in view.mask:
            if before is not None and column in before:
                before[column] = MASK
            if after is not None and column in after:
                after[column] = MASK
        seq = row.seq
        actor = self.actors.get(row.actor_id) if row.actor_name is row.actor_ip is None else None
        if actor is None:
            actor = self._actor(row)
        event = NewEvent(
            stream=self.stream,
            entity=view.entity,
            event_type=event_type,
            actor=actor,
            occurred_at=self.time,
            entity_id=_entity_id(row.pk),
            action=action,
            properties=properties,
            before=before,
            after=after,
            id=_uuid7(self.id_prefix, self.stream_part, seq),
        )
        if seq < self.last_seq:
            self.in_order = False
        self.last_seq = seq
        self.events.append((seq, event))

    def _image(self, row: ShadowRow, text: str | None, which: str) -> dict[str, Any]:
        columns = row.columns
        if columns is not None and text is not None:
            try:
                values = orjson.loads(text)
            except orjson.JSONDecodeError:
                values = None
            if type(values) is list and len(values) == len(columns):
                return dict(zip(columns, values, strict=False))
        return self._image_slowly(row, text, which)

    def _image_slowly(self, row: ShadowRow, text: str | None, which: str) -> dict[str, Any]:
        """The image of a wide table, one with infinite REALs, or the reason there is none."""
        columns = row.columns
        if columns is None:
            raise _Untranslatable(f"layout {row.layout_id} is missing or unreadable")
        if text is None:
            raise _Untranslatable(f"the {which} image is missing")
        values = _loads(text, which)
        if not isinstance(values, list):
            raise _Untranslatable(f"the {which} image is not a JSON array")
        if len(columns) > IMAGE_CHUNK:
            values = [v for chunk in values if isinstance(chunk, list) for v in chunk]
        if len(values) != len(columns):
            raise _Untranslatable(
                f"the {which} image has {len(values)} values, layout {row.layout_id} "
                f"has {len(columns)} columns"
            )
        return dict(zip(columns, values, strict=True))

    def _view(self, table: str) -> _View | None:
        if table not in self.views:
            config = self.tables.get(table)
            self.views[table] = (
                None
                if config is None
                else _View(
                    entity=config.entity,
                    created=f"{config.entity}.created",
                    updated=f"{config.entity}.updated",
                    deleted=f"{config.entity}.deleted",
                    ignore=frozenset(config.ignore),
                    mask=frozenset(config.mask),
                    actions=tuple((r.action, tuple(r.when.items())) for r in config.actions),
                )
            )
        return self.views[table]

    def _parse_time(self, text: str) -> None:
        try:
            if text.isdigit():  # Unix milliseconds, as the triggers write it
                millis = int(text)
                moment = _EPOCH + millis * _MILLISECOND
            else:  # ISO 8601, as earlier triggers wrote it
                moment = datetime.fromisoformat(text)
                if moment.tzinfo is None:
                    moment = moment.replace(tzinfo=UTC)
                millis = (moment - _EPOCH) // _MILLISECOND
        except (AttributeError, TypeError, ValueError, OverflowError):
            raise _Untranslatable(f"bad change time {text!r}") from None
        self.time_text, self.time = text, moment
        self.id_prefix = _uuid7_time(millis)

    def _actor(self, row: ShadowRow) -> Actor:
        if row.actor_id is None:
            return SYSTEM_ACTOR
        if row.actor_name is row.actor_ip is None:
            actor = self.actors[row.actor_id] = Actor(row.actor_id)
            return actor
        key = (row.actor_id, row.actor_name, row.actor_ip)
        actor = self.actors.get(key) or Actor(*key)
        self.actors[key] = actor
        return actor


def _loads(text: str, which: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        pass
    # SQLite writes infinite REALs as Inf, which is not JSON.
    fixed = _INFINITY.sub(lambda m: m[0] if m[0][0] == '"' else m[0] + "inity", text)
    try:
        return json.loads(fixed)
    except ValueError:
        raise _Untranslatable(f"the {which} image is not valid JSON") from None


def _same_row(incoming: str | None, stored: str | None) -> bool:
    """Whether a pre-image row's incoming image is the row that was then written.

    NULL in the incoming image matches anything: an automatic INTEGER PRIMARY
    KEY is not known before the insert. A masked value matches any mask token.
    """
    if incoming == stored:
        return True
    if incoming is None or stored is None:
        return False
    try:
        a, b = orjson.loads(incoming), orjson.loads(stored)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(a, list) or not isinstance(b, list):
        return False
    if a and isinstance(a[0], list):  # a wide table's image: arrays of IMAGE_CHUNK values
        a = [v for chunk in a for v in chunk]
        b = [v for chunk in b if isinstance(chunk, list) for v in chunk]
    if len(a) != len(b):
        return False
    return all(
        x == y or x is None or (x == MASK and isinstance(y, str) and y.startswith(MASK))
        for x, y in zip(a, b, strict=True)
    )


def _matches(values: dict[str, Any], when: tuple[tuple[str, ConfigValue], ...]) -> bool:
    for column, expected in when:
        if column not in values:
            return False
        actual = values[column]
        if actual == expected:
            continue
        # YAML and SQLite disagree on types often enough: "2" in the config for
        # an INTEGER column, or 2 for a TEXT column.
        if (
            isinstance(actual, str) != isinstance(expected, str)
            and None not in (actual, expected)
            and str(actual) == str(expected)
        ):
            continue
        return False
    return True


def _entity_id(pk: str | None) -> str | None:
    if pk is None:
        return None
    inner = pk[1:-1]
    if pk[:1] == "[" and pk[-1:] == "]" and inner and "," not in inner and '"' not in inner:
        return None if inner == "null" else inner
    try:
        values = orjson.loads(pk)
    except orjson.JSONDecodeError:
        return pk
    if isinstance(values, list) and len(values) == 1:
        value = values[0]
        return value if isinstance(value, str) else orjson.dumps(value).decode()
    return pk
