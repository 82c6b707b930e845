"""Auditor's configuration: read config.yaml once into frozen, validated, typed objects.

`resolve_config_path` picks the file (``--config``, then ``AUDITOR_CONFIG``, then the
``config.yaml`` beside this module) and `load_config` reads it: ``${VAR}`` references in
values are replaced from the environment, relative paths are made relative to the file,
and every problem becomes one `ConfigError` that names the file and the key. Error
messages and reprs never contain a token's value or a database password.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent / "config.yaml"

Loc = tuple[int | str, ...]
NonEmptyStr = Annotated[str, StringConstraints(min_length=1)]
Scalar = str | int | float | bool | None
Scope = Literal["read", "write", "admin"]

_STREAM_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# `$${` is a literal `${`; a `${` that is not a well-formed reference is an error.
_REFERENCE = re.compile(r"\$\$\{|\$\{(?:([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\})?")


class ConfigError(Exception):
    """The configuration file is missing, unreadable or invalid; the message names file and key."""


def _base_dir(info: ValidationInfo) -> Path | None:
    context = info.context
    return context.get("base_dir") if isinstance(context, dict) else None


def _resolve_path(path: Path, info: ValidationInfo) -> Path:
    if path == Path():
        raise ValueError("must name a file")
    base = _base_dir(info)
    if path.is_absolute() or base is None:
        return path
    return Path(os.path.normpath(base / path))


class _Section(BaseModel):
    """Base of every section: immutable, and unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _empty_key_means_default(cls, data: Any) -> Any:
        # `tokens:` with nothing after it is YAML null; people write it meaning "the default".
        if not isinstance(data, dict):
            return data
        fields = cls.model_fields
        return {
            key: value
            for key, value in data.items()
            if value is not None or key not in fields or fields[key].is_required()
        }


class StoreConfig(_Section):
    """The audit store: an SQLAlchemy URL (SQLite, or PostgreSQL through psycopg 3)."""

    url: str

    @field_validator("url")
    @classmethod
    def _normalise_url(cls, url: str, info: ValidationInfo) -> str:
        # Never quote the URL back: it may hold a password.
        try:
            parsed = make_url(url)
        except ArgumentError:
            raise ValueError(
                "is not a database URL (sqlite:///PATH or postgresql+psycopg://…)"
            ) from None
        if parsed.drivername in ("postgresql", "postgresql+psycopg"):
            # Plain postgresql:// would make SQLAlchemy look for psycopg2, which we do not ship.
            return "postgresql+psycopg" + url[len(parsed.drivername) :]
        if parsed.drivername != "sqlite":
            raise ValueError(
                f"unsupported scheme {parsed.drivername!r}: use sqlite:/// or postgresql+psycopg://"
            )
        database = parsed.database
        if not database or database == ":memory:" or Path(database).is_absolute():
            return url
        absolute = _resolve_path(Path(database), info)
        return parsed.set(database=str(absolute)).render_as_string(hide_password=False)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        yield "url", make_url(self.url).render_as_string(hide_password=True)


class ServerConfig(_Section):
    """Where the HTTP API listens."""

    host: NonEmptyStr = "127.0.0.1"
    port: int = Field(default=5000, ge=0, le=65535)  # 0: any free port
    workers: int = Field(default=1, ge=1, le=64)
    """Processes serving the API on this port (the daemon and workers - 1 more)."""


class TokenConfig(_Section):
    """One bearer token and what it may do."""

    token: SecretStr
    scopes: tuple[Scope, ...] = ("read",)

    @field_validator("token")
    @classmethod
    def _not_empty(cls, token: SecretStr) -> SecretStr:
        if not token.get_secret_value():
            raise ValueError("must not be empty")
        return token

    @field_validator("scopes")
    @classmethod
    def _some_scope(cls, scopes: tuple[Scope, ...]) -> tuple[Scope, ...]:
        if not scopes:
            raise ValueError("must list at least one of read, write, admin")
        return scopes


class AuthConfig(_Section):
    """API tokens; none at all means no auth, which the server allows on loopback only."""

    tokens: tuple[TokenConfig, ...] = ()

    @field_validator("tokens")
    @classmethod
    def _unique_tokens(cls, tokens: tuple[TokenConfig, ...]) -> tuple[TokenConfig, ...]:
        first_index: dict[str, int] = {}
        for index, entry in enumerate(tokens):
            earlier = first_index.setdefault(entry.token.get_secret_value(), index)
            if earlier != index:
                raise ValueError(f"tokens[{earlier}] and tokens[{index}] have the same token")
        return tokens


class CaptureConfig(_Section):
    """How changes are read from the billing databases."""

    poll_interval: float = Field(default=1.0, gt=0, le=3600)
    batch_size: int = Field(default=1000, ge=1, le=100_000)
    snapshot: bool = True


class IntegrityConfig(_Section):
    """The checkpoint signing key and how often checkpoints are signed."""

    key_file: Path = Field(default=Path("data/auditor_ed25519.key"), validate_default=True)
    checkpoint_interval: float = Field(default=60.0, gt=0)

    @field_validator("key_file")
    @classmethod
    def _relative_to_config(cls, path: Path, info: ValidationInfo) -> Path:
        return _resolve_path(path, info)


class ActionRule(_Section):
    """Names an UPDATE `action` when the new row has every column value in `when`."""

    action: NonEmptyStr
    when: dict[str, Scalar]

    @field_validator("when", mode="before")
    @classmethod
    def _scalar_values(cls, when: Any) -> Any:
        # Checked here so that a bad value gets one clear message, not one per union member.
        if isinstance(when, dict):
            if not when:
                raise ValueError("must name at least one column")
            for column, value in when.items():
                if not isinstance(column, str):
                    raise ValueError("column names must be strings")
                if not isinstance(value, Scalar):
                    raise ValueError(f"{column}: must be a string, number, boolean or null")
        return when


class TableConfig(_Section):
    """One captured table and how its rows become events."""

    table: NonEmptyStr
    entity: NonEmptyStr = ""  # set to `table` when absent
    actor: NonEmptyStr | None = None
    ignore: tuple[NonEmptyStr, ...] = ()
    mask: tuple[NonEmptyStr, ...] = ()
    actions: tuple[ActionRule, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _entity_defaults_to_table(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("entity") is None and "table" in data:
            return {**data, "entity": data["table"]}
        return data


class SourceConfig(_Section):
    """One billing database to capture; `name` is the stream its events go to."""

    name: str
    database: Path
    tables: tuple[TableConfig, ...]

    @field_validator("name")
    @classmethod
    def _valid_stream_name(cls, name: str) -> str:
        if not _STREAM_NAME.fullmatch(name):
            raise ValueError("must be 1-64 characters of letters, digits, '_', '.' and '-'")
        if name == "api":
            raise ValueError("'api' is reserved for the stream of events posted to the API")
        return name

    @field_validator("database")
    @classmethod
    def _relative_to_config(cls, path: Path, info: ValidationInfo) -> Path:
        return _resolve_path(path, info)

    @field_validator("tables")
    @classmethod
    def _unique_tables(cls, tables: tuple[TableConfig, ...]) -> tuple[TableConfig, ...]:
        if not tables:
            raise ValueError("must list at least one table")
        _reject_duplicates("table", [t.table for t in tables])
        return tables


class Config(_Section):
    """The whole configuration; `path` is the absolute path of the file it came from."""

    store: StoreConfig
    server: ServerConfig = ServerConfig()
    auth: AuthConfig = AuthConfig()
    capture: CaptureConfig = CaptureConfig()
    # Validated from {} so that the default key file lands beside the config file.
    integrity: IntegrityConfig = Field(default_factory=dict, validate_default=True)
    sources: tuple[SourceConfig, ...] = ()
    path: Path

    @field_validator("sources")
    @classmethod
    def _unique_sources(cls, sources: tuple[SourceConfig, ...]) -> tuple[SourceConfig, ...]:
        _reject_duplicates("source name", [s.name for s in sources])
        # One billing database has one shadow table: two sources on it would steal each
        # other's changes.
        _reject_duplicates("database", [str(s.database) for s in sources])
        return sources

    @property
    def loopback_only(self) -> bool:
        """True when the server listens on a loopback address only (127.0.0.0/8, ::1)."""
        host = self.server.host.strip("[]").lower()
        if host == "localhost":
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return address.is_loopback


def _reject_duplicates(what: str, names: list[str]) -> None:
    first_index: dict[str, int] = {}
    for index, name in enumerate(names):
        earlier = first_index.setdefault(name, index)
        if earlier != index:
            raise ValueError(f"{what} {name!r} appears twice ([{earlier}] and [{index}])")


def resolve_config_path(cli_path: str | None, environ: Mapping[str, str]) -> Path:
    """The config file to use: --config, else $AUDITOR_CONFIG, else DEFAULT_CONFIG_PATH."""
    chosen = cli_path or environ.get("AUDITOR_CONFIG")
    return Path(chosen) if chosen else DEFAULT_CONFIG_PATH


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate the config file at `path`; raise ConfigError on any problem."""
    environ = os.environ if environ is None else environ
    label = str(path)
    file = Path(os.path.abspath(path))
    raw = _read_yaml(file, label)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{label}: the top level must be a mapping of keys (store:, sources:, …)")

    problems: list[tuple[Loc, str]] = []
    data = _substitute(raw, environ, (), problems)
    if not problems:
        if "path" in data:  # `path` is where the file is, not something it may say
            problems.append((("path",), "unknown key"))
            del data["path"]
        try:
            config = Config.model_validate(
                {**data, "path": file}, context={"base_dir": file.parent}
            )
        except ValidationError as e:
            problems += [(err["loc"], _describe(err)) for err in e.errors(include_input=False)]
    if problems:
        raise ConfigError("\n".join(_line(label, loc, message) for loc, message in problems))
    return config


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML keeps the last one silently, which
    would, say, drop a whole `sources:` block)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[tuple[type, Any]] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, str | int | float | bool):
                continue
            if (type(key), key) in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add((type(key), key))
        return super().construct_mapping(node, deep=deep)


def _read_yaml(file: Path, label: str) -> Any:
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{label}: cannot read the file: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{label}: the file is not UTF-8 text") from e
    loader = _UniqueKeyLoader(text)
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as e:
        # Only the problem and position: the snippet PyYAML would add may show a secret.
        where = f" at line {e.problem_mark.line + 1}" if e.problem_mark else ""
        context = f" ({e.context} at line {e.context_mark.line + 1})" if e.context_mark else ""
        raise ConfigError(f"{label}: invalid YAML{where}: {e.problem}{context}") from None
    except yaml.YAMLError:
        raise ConfigError(f"{label}: invalid YAML") from None
    finally:
        loader.dispose()


def _substitute(data: Any, environ: Mapping[str, str], loc: Loc, problems: list[Any]) -> Any:
    """Replace ${VAR}, ${VAR:-default} and $${ in every string value (never in keys)."""
    if isinstance(data, dict):
        return {k: _substitute(v, environ, (*loc, k), problems) for k, v in data.items()}
    if isinstance(data, list):
        return [_substitute(v, environ, (*loc, i), problems) for i, v in enumerate(data)]
    if not isinstance(data, str):
        return data

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if match.group(0) == "$${":
            return "${"
        if name is None:
            problems.append((loc, "malformed ${…}: write ${NAME}, ${NAME:-default} or $${"))
            return ""
        value = environ.get(name)
        if default is not None and not value:  # like the shell, :- also replaces ""
            return default
        if value is None:
            problems.append((loc, f"environment variable {name} is not set"))
            return ""
        return value

    return _REFERENCE.sub(replace, data)


def _describe(error: ErrorDetails) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        known = ", ".join(_known_keys(error["loc"]))
        return f"unknown key (expected one of: {known})" if known else "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind == "model_type":
        return "should be a mapping of keys"
    if kind == "value_error":
        return str(error.get("ctx", {}).get("error", error["msg"]))
    # Lists are stored as tuples so that the config is immutable; the YAML has lists.
    return error["msg"].replace("Tuple", "List").replace("tuple", "list")


def _known_keys(loc: Loc) -> list[str]:
    """The keys allowed in the mapping that holds the key at `loc`."""
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        annotation = model.model_fields[part].annotation
        inner = [a for a in (annotation, *get_args(annotation)) if _is_model(a)]
        if not inner:
            return []
        model = inner[0]
    return [key for key in model.model_fields if not (model is Config and key == "path")]


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _line(label: str, loc: Loc, message: str) -> str:
    key = ""
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else f".{part}" if key else str(part)
    return f"{label}: {key}: {message}" if key else f"{label}: {message}"
