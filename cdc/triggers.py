"""SQL text of Auditor's capture objects in the billing database.

Every function here is pure: it takes a table description and returns SQL
strings; `cdc.installer` runs them in one transaction. Names of Auditor's own
objects start with `_auditor_`; every identifier is quoted.

Per captured table there are up to five triggers, each writing one row into the
shadow table `_auditor_changes` (`op` is the change kind):

- `_ai` AFTER INSERT → `I` with the new row image;
- `_au` AFTER UPDATE, `WHEN` some non-ignored column `IS NOT` its old value
  (NULL-safe) → `U` with both images (no `_au` when every column is ignored);
- `_ad` AFTER DELETE → `D` with the old row image;
- `_bi` BEFORE INSERT → one `P` ("pre-image") row, and `_bu` BEFORE UPDATE
  (`OF` the key columns, so SQLite leaves it out of an UPDATE that sets none
  of them, and only when one changes) → one `R` row, per existing row that the
  incoming row collides with on its primary key / rowid or on a UNIQUE index.
  REPLACE conflict resolution deletes such rows without firing DELETE triggers
  (SQLite's default `recursive_triggers=OFF`), so this is the only moment their
  image exists. `cdc.translate` pairs `P`/`R` rows with the `I`/`U` row of the
  same statement and drops them when the statement turned out not to replace
  anything (upsert, `OR IGNORE`, `DO NOTHING`). Such a row carries the
  existing row as `old` and the incoming row as `new`, so that the pairing can
  check it has the right statement. An `R` row is never the updated row itself
  (`_bu` leaves it out), even when the UPDATE moves that row onto its key; a
  `P` row with the key of the `U` that follows is the row an upsert updated.

The host pays for every trigger, so row images are `json_array` of the values
in column order (cheaper than `json_object`); each shadow row names the column
layout (`_auditor_layouts.id`, a constant in the trigger) that gives the names.
Masked columns are written as `'***'`; in the image that is compared against
(the new image of an UPDATE, the old image of a pre-image row) a change is
written as `'***changed'`, so the translator can tell which masked column
changed without ever seeing a value. Values that may be BLOBs are wrapped as
`{"$blob": hex}` because `json_array` raises on a BLOB, and an error in a
trigger would fail the billing service's own write. The change time is written
as Unix milliseconds (`CHANGE_TIME`), which `cdc.translate` turns into the
event's time: formatting it in the trigger with `strftime` cost the host about
0.7 µs a row, a sixth of the whole trigger.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Protocol

PREFIX = "_auditor_"
SHADOW_TABLE = "_auditor_changes"
CONTEXT_TABLE = "_auditor_context"
LAYOUT_TABLE = "_auditor_layouts"
SUPPORT_TABLES = (SHADOW_TABLE, CONTEXT_TABLE, LAYOUT_TABLE)

MASK = "***"
MASK_CHANGED = "***changed"
CHANGE_TIME = "CAST((julianday('now') - 2440587.5) * 86400000 + 0.5 AS INTEGER)"
"""The statement's time in Unix milliseconds. SQLite keeps 'now' as whole
milliseconds; the subtraction is exact and the product's error is far below the
0.5 that rounds it back to that integer. (`unixepoch('subsec')` needs SQLite 3.42.)"""
IMAGE_CHUNK = 100
"""Images of wider tables are arrays of arrays of this many values: SQLite
functions take at most 127 arguments."""

TRIGGER_SUFFIXES = ("bi", "bu", "ai", "au", "ad")

_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,39}")
_ROW = '"_auditor_row"'
_CTX = '"_auditor_ctx"'
_SHADOW_COLUMNS = (
    '("tbl", "op", "pk", "layout", "old", "new", "actor_id", "actor_name", "actor_ip", '
    '"changed_at")'
)


class CaptureError(Exception):
    """A table cannot be captured as configured (missing table or column, bad option)."""


class TableOptions(Protocol):
    """What the triggers need from a table's configuration (`config.TableConfig`)."""

    @property
    def table(self) -> str: ...
    @property
    def actor(self) -> str | None: ...
    @property
    def ignore(self) -> tuple[str, ...]: ...
    @property
    def mask(self) -> tuple[str, ...]: ...


@dataclass(frozen=True, slots=True)
class UniqueKey:
    """A full (not partial), column-only UNIQUE index or PRIMARY KEY index."""

    columns: tuple[str, ...]
    collations: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TableShape:
    """What the triggers need from a table's schema (read by `cdc.installer.read_shape`)."""

    name: str
    columns: tuple[str, ...]
    """Every column in table order, generated ones included."""
    primary_key: tuple[str, ...] = ()
    """The declared primary key in key order; empty when the rowid identifies rows."""
    unique_keys: tuple[UniqueKey, ...] = ()
    without_rowid: bool = False
    rowid_alias: str | None = None
    """The INTEGER PRIMARY KEY column, which SQLite fills in after BEFORE triggers."""
    blob_free: frozenset[str] = frozenset()
    """Columns that can never hold a BLOB (rowid alias, typed columns of STRICT tables)."""
    rowid_name: str = "rowid"
    """`rowid`, or `_rowid_`/`oid` when a column is called `rowid`."""
    generated: frozenset[str] = frozenset()
    """Generated columns (VIRTUAL or STORED): they change without being SET."""


@dataclass(frozen=True, slots=True)
class TriggerNames:
    before_insert: str
    before_update: str
    after_insert: str
    after_update: str
    after_delete: str

    def all(self) -> tuple[str, ...]:
        return (
            self.before_insert,
            self.before_update,
            self.after_insert,
            self.after_update,
            self.after_delete,
        )


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def trigger_names(table: str) -> TriggerNames:
    """Deterministic trigger names; a table name that is not a short plain identifier
    gets a readable stem plus a hash of the exact name, so distinct tables never share."""
    if _PLAIN_NAME.fullmatch(table):
        stem = table
    else:
        readable = re.sub(r"[^A-Za-z0-9_]+", "_", table).strip("_")[:32]
        digest = hashlib.sha256(table.encode()).hexdigest()[:8]
        stem = f"{readable}_{digest}" if readable else digest
    return TriggerNames(*(f"{PREFIX}{stem}_{suffix}" for suffix in TRIGGER_SUFFIXES))


def support_tables_sql() -> list[str]:
    """The shadow, context and layout tables.

    `seq` is INTEGER PRIMARY KEY without AUTOINCREMENT (cheaper for the host);
    `cdc.shadow.prune` keeps the newest row so that a seq is never reused.
    No NOT NULL or CHECK on the shadow table: nothing Auditor adds may fail
    the billing service's write.
    """
    return [
        f"CREATE TABLE IF NOT EXISTS {quote_identifier(SHADOW_TABLE)} ("
        '"seq" INTEGER PRIMARY KEY, "tbl" TEXT, "op" TEXT, "pk" TEXT, "layout" INTEGER, '
        '"old" TEXT, "new" TEXT, "actor_id" TEXT, "actor_name" TEXT, "actor_ip" TEXT, '
        '"changed_at" TEXT)',
        f"CREATE TABLE IF NOT EXISTS {quote_identifier(CONTEXT_TABLE)} ("
        '"id" INTEGER PRIMARY KEY CHECK ("id" = 1), '
        '"actor_id" TEXT, "actor_name" TEXT, "actor_ip" TEXT)',
        f"CREATE TABLE IF NOT EXISTS {quote_identifier(LAYOUT_TABLE)} ("
        '"id" INTEGER PRIMARY KEY, "tbl" TEXT NOT NULL, "columns" TEXT NOT NULL, '
        'UNIQUE ("tbl", "columns"))',
    ]


def drop_support_tables_sql() -> list[str]:
    return [f"DROP TABLE IF EXISTS {quote_identifier(name)}" for name in SUPPORT_TABLES]


def drop_triggers_sql(table: str) -> list[str]:
    return [f"DROP TRIGGER IF EXISTS {quote_identifier(n)}" for n in trigger_names(table).all()]


def layout_columns_json(shape: TableShape) -> str:
    """The layout text stored in `_auditor_layouts.columns`: column names in image order."""
    return json.dumps(list(shape.columns), ensure_ascii=False, separators=(",", ":"))


def triggers_sql(shape: TableShape, options: TableOptions, layout_id: int) -> list[str]:
    """`CREATE TRIGGER IF NOT EXISTS` statements capturing `shape` into the shadow table."""
    return [
        f"CREATE TRIGGER IF NOT EXISTS {body}"
        for body in _trigger_bodies(shape, options, layout_id)
    ]


def stored_triggers_sql(shape: TableShape, options: TableOptions, layout_id: int) -> list[str]:
    """The same triggers as SQLite keeps their text in `sqlite_master.sql`."""
    return [f"CREATE TRIGGER {body}" for body in _trigger_bodies(shape, options, layout_id)]


def _trigger_bodies(shape: TableShape, options: TableOptions, layout_id: int) -> list[str]:
    _check_options(shape, options)
    masked = frozenset(options.mask)
    ignored = set(options.ignore)
    compared = [c for c in shape.columns if c not in ignored]
    names = trigger_names(shape.name)
    table = quote_identifier(shape.name)
    rec = _Recorder(shape, options.actor, layout_id)

    bodies = []
    key_changed = " OR ".join(f"new.{c} IS NOT old.{c}" for c in _key_refs(shape))
    bodies.append(
        f"{quote_identifier(names.before_insert)} BEFORE INSERT ON {table} FOR EACH ROW BEGIN "
        + rec.pre_images(masked, exclude_old=False)
        + " END"
    )
    bodies.append(
        f"{quote_identifier(names.before_update)} BEFORE UPDATE{_of_keys(shape)} ON {table} "
        f"FOR EACH ROW WHEN {key_changed} BEGIN "
        + rec.pre_images(masked, exclude_old=True)
        + " END"
    )
    bodies.append(
        f"{quote_identifier(names.after_insert)} AFTER INSERT ON {table} FOR EACH ROW BEGIN "
        + rec.change("I", "new", None, _image(shape, "new", masked))
        + " END"
    )
    if compared:
        changed = " OR ".join(
            f"old.{quote_identifier(c)} IS NOT new.{quote_identifier(c)}" for c in compared
        )
        bodies.append(
            f"{quote_identifier(names.after_update)} AFTER UPDATE ON {table} FOR EACH ROW "
            f"WHEN {changed} BEGIN "
            + rec.change(
                "U",
                "new",
                _image(shape, "old", masked),
                _image(shape, "new", masked, changed_against="old"),
            )
            + " END"
        )
    bodies.append(
        f"{quote_identifier(names.after_delete)} AFTER DELETE ON {table} FOR EACH ROW BEGIN "
        + rec.change("D", "old", _image(shape, "old", masked), None)
        + " END"
    )
    return bodies


def _check_options(shape: TableShape, options: TableOptions) -> None:
    if shape.name.startswith(PREFIX):
        raise CaptureError(f"table {shape.name!r}: Auditor does not capture its own tables")
    known = set(shape.columns)
    named = [("actor", options.actor)] if options.actor is not None else []
    named += [("ignore", c) for c in options.ignore] + [("mask", c) for c in options.mask]
    for option, column in named:
        if column not in known:
            raise CaptureError(f"table {shape.name!r}: {option} column {column!r} does not exist")
    for column in options.mask:
        if column == options.actor or column in shape.primary_key:
            raise CaptureError(
                f"table {shape.name!r}: column {column!r} identifies the row or the actor "
                "and cannot be masked"
            )


def _key_refs(shape: TableShape) -> list[str]:
    """Quoted references to every column that a REPLACE can conflict on."""
    refs = [] if shape.without_rowid else [shape.rowid_name]
    for key in shape.unique_keys:
        refs += [quote_identifier(c) for c in key.columns if quote_identifier(c) not in refs]
    return refs


def _of_keys(shape: TableShape) -> str:
    """` OF` every name an UPDATE can change a key column by, or '' for every UPDATE.

    SQLite decides from the SET list, when it compiles the UPDATE, whether an
    `UPDATE OF` trigger runs at all: an update of other columns then costs the
    host nothing for it (even a trigger whose WHEN is false is a sub-program call,
    about 1 µs). A generated key column changes with columns that no key names,
    so such a table keeps the trigger on every UPDATE."""
    names = [] if shape.without_rowid else ["rowid", "_rowid_", "oid"]
    if shape.rowid_alias is not None:
        names.append(shape.rowid_alias)
    for key in shape.unique_keys:
        if any(c in shape.generated for c in key.columns):
            return ""
        names += [c for c in key.columns if c not in names]
    return " OF " + ", ".join(quote_identifier(n) for n in names)


def _value(shape: TableShape, ref: str, column: str) -> str:
    value = f"{ref}.{quote_identifier(column)}"
    if column in shape.blob_free:
        return value
    return (
        f"CASE WHEN typeof({value}) = 'blob' THEN json_object('$blob', hex({value})) "
        f"ELSE {value} END"
    )


def _image(
    shape: TableShape,
    ref: str,
    masked: frozenset[str],
    *,
    changed_against: str | None = None,
    incoming: bool = False,
) -> str:
    values = []
    for column in shape.columns:
        if column in masked:
            if changed_against is None:
                values.append(quote_literal(MASK))
            else:
                col = quote_identifier(column)
                values.append(
                    f"CASE WHEN {ref}.{col} IS {changed_against}.{col} "
                    f"THEN {quote_literal(MASK)} ELSE {quote_literal(MASK_CHANGED)} END"
                )
        elif incoming and column == shape.rowid_alias:
            # Before the insert SQLite shows an automatic key as -1; NULL tells the
            # translator "not known yet" so the pre-image still pairs with its insert.
            values.append(f"NULLIF({ref}.{quote_identifier(column)}, -1)")
        else:
            values.append(_value(shape, ref, column))
    if len(values) <= IMAGE_CHUNK:
        return "json_array(" + ", ".join(values) + ")"
    chunks = [values[i : i + IMAGE_CHUNK] for i in range(0, len(values), IMAGE_CHUNK)]
    return "json_array(" + ", ".join("json_array(" + ", ".join(c) + ")" for c in chunks) + ")"


def _pk(shape: TableShape, ref: str) -> str:
    if not shape.primary_key:
        return f"json_array({ref}.{shape.rowid_name})"
    return "json_array(" + ", ".join(_value(shape, ref, c) for c in shape.primary_key) + ")"


class _Recorder:
    """Builds the INSERT into the shadow table for one table's triggers."""

    def __init__(self, shape: TableShape, actor: str | None, layout_id: int) -> None:
        self.shape = shape
        self.actor = actor
        self.head = (
            f"INSERT INTO {quote_identifier(SHADOW_TABLE)} {_SHADOW_COLUMNS} "
            f"SELECT {quote_literal(shape.name)}, "
        )
        self.layout = str(int(layout_id))

    def _actor(self, ref: str) -> str:
        if self.actor is not None:
            return f"{ref}.{quote_identifier(self.actor)}, NULL, NULL"
        return f'{_CTX}."actor_id", {_CTX}."actor_name", {_CTX}."actor_ip"'

    def _context_join(self) -> str:
        if self.actor is not None:
            return ""
        return f' LEFT JOIN {quote_identifier(CONTEXT_TABLE)} AS {_CTX} ON {_CTX}."id" = 1'

    def _select(self, op: str, row_ref: str, old: str | None, new: str | None) -> str:
        return (
            f"{self.head}'{op}', {_pk(self.shape, row_ref)}, {self.layout}, "
            f"{old or 'NULL'}, {new or 'NULL'}, {self._actor(row_ref)}, {CHANGE_TIME}"
        )

    def change(self, op: str, row_ref: str, old: str | None, new: str | None) -> str:
        source = f" FROM (SELECT 1){self._context_join()}" if self.actor is None else ""
        return self._select(op, row_ref, old, new) + source + ";"

    def pre_images(self, masked: frozenset[str], *, exclude_old: bool) -> str:
        """`P` rows (`R` with `exclude_old`, for an UPDATE: every row but its own)."""
        shape = self.shape
        conflicts = (
            [] if shape.without_rowid else [f"{_ROW}.{shape.rowid_name} = new.{shape.rowid_name}"]
        )
        for key in shape.unique_keys:
            conflicts.append(
                "("
                + " AND ".join(
                    f"{_ROW}.{quote_identifier(c)} = new.{quote_identifier(c)} "
                    f"COLLATE {quote_identifier(coll)}"
                    for c, coll in zip(key.columns, key.collations, strict=True)
                )
                + ")"
            )
        where = " OR ".join(conflicts)
        if exclude_old:
            if shape.without_rowid:
                same = " AND ".join(
                    f"{_ROW}.{quote_identifier(c)} = old.{quote_identifier(c)}"
                    for c in shape.primary_key
                )
                where = f"({where}) AND NOT ({same})"
            else:
                where = f"({where}) AND {_ROW}.{shape.rowid_name} <> old.{shape.rowid_name}"
        old = _image(shape, _ROW, masked, changed_against="new")
        new = _image(shape, "new", masked, incoming=True)
        return (
            self._select("R" if exclude_old else "P", _ROW, old, new)
            + f" FROM {quote_identifier(shape.name)} AS {_ROW}{self._context_join()}"
            + f" WHERE {where};"
        )


def row_image_sql(shape: TableShape, mask: tuple[str, ...], ref: str) -> str:
    """The expression a trigger writes as a row image, for the row named `ref` (a quoted
    alias): reconciliation and snapshots read rows exactly as the triggers see them."""
    return _image(shape, ref, frozenset(mask))


def row_key_sql(shape: TableShape, ref: str) -> str:
    """The expression a trigger writes as the row's `pk` (its primary key, or rowid)."""
    return _pk(shape, ref)
