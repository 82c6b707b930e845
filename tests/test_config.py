"""Tests for config.py: loading config.yaml files written to disk, and every error they can hold."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml

from config import (
    DEFAULT_CONFIG_PATH,
    Config,
    ConfigError,
    load_config,
    resolve_config_path,
)

SECRET = "s3cr3t-t0ken-value"

SPEC_EXAMPLE = """\
store:
  url: sqlite:///data/audit.db          # or postgresql+psycopg://user@host/db
server:
  host: 127.0.0.1
  port: 5000
auth:
  tokens:                               # empty or absent: no auth (loopback only)
    - token: ${AUDITOR_TOKEN}
      scopes: [read, write, admin]
capture:
  poll_interval: 1.0                    # seconds; fallback when no file event arrives
  batch_size: 1000
  snapshot: true                        # record existing rows as READ events on first attach
sources:
  - name: billing                       # the stream name of this source's events
    database: data/billing.db
    tables:
      - table: customers
        entity: customer
        actor: id                       # column whose value is the actor id
        ignore: [updated_at]            # changes to these alone are not events
        mask: [card_number]             # stored as "***", never in clear
        actions:                        # optional named actions for UPDATEs
          - action: customer.deactivated
            when: {status: deactivated} # after.status becomes this value
      - table: charges
        entity: charge
        actor: customer_id
"""

MINIMAL: dict[str, Any] = {
    "store": {"url": "sqlite:///audit.db"},
    "sources": [{"name": "billing", "database": "billing.db", "tables": [{"table": "charges"}]}],
}


def write(tmp_path: Path, content: str | dict[str, Any], name: str = "config.yaml") -> Path:
    path = tmp_path / name
    text = content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
    path.write_text(text, encoding="utf-8")
    return path


def load_error(path: Path, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, environ or {})
    return str(info.value)


def with_change(loc: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    """MINIMAL with the key at `loc` set to `value` (intermediate sections created)."""
    data = copy.deepcopy(MINIMAL)
    data.setdefault("auth", {"tokens": [{"token": "t"}]})
    data["sources"][0]["tables"][0].setdefault(
        "actions", [{"action": "a", "when": {"status": "x"}}]
    )
    target: Any = data
    for part in loc[:-1]:
        if isinstance(part, str) and part not in target:
            target[part] = {}
        target = target[part]
    target[loc[-1]] = value
    return data


# --- loading what we ship and what the spec shows -------------------------------------------


def test_default_config_loads_with_empty_environment() -> None:
    config = load_config(DEFAULT_CONFIG_PATH, {})
    here = DEFAULT_CONFIG_PATH.parent

    assert config.path == DEFAULT_CONFIG_PATH
    assert config.store.url == f"sqlite:///{here}/data/audit.db"
    assert (config.server.host, config.server.port) == ("127.0.0.1", 5000)
    assert config.auth.tokens == ()
    assert config.loopback_only
    assert config.capture.poll_interval == 1.0
    assert config.capture.batch_size == 1000
    assert config.capture.snapshot is True
    assert config.integrity.key_file == here / "data" / "auditor_ed25519.key"
    assert config.integrity.checkpoint_interval == 60.0

    (billing,) = config.sources
    assert billing.name == "billing"
    assert billing.database == here / "data" / "billing.db"
    assert [(t.table, t.entity, t.actor) for t in billing.tables] == [
        ("customers", "customer", "id"),
        ("resource_actions", "resource_action", "customer_id"),
        ("charges", "charge", "customer_id"),
    ]
    customers = billing.tables[0]
    assert customers.ignore == ("updated_at",)
    assert customers.mask == ("card_number",)
    assert len(customers.actions) == 1
    assert customers.actions[0].action == "customer.deactivated"
    assert customers.actions[0].when == {"status": "deactivated"}


def test_default_config_documents_every_key() -> None:
    text = DEFAULT_CONFIG_PATH.read_text()
    for key in ["url", "host", "port", "workers", "tokens", "poll_interval", "batch_size",
                "snapshot"]:
        assert f"{key}:" in text
    for key in ["key_file", "checkpoint_interval", "${AUDITOR_TOKEN}", "scopes: [read, write"]:
        assert key in text


def test_spec_example_loads_every_key(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, SPEC_EXAMPLE), {"AUDITOR_TOKEN": SECRET})

    assert config.store.url == f"sqlite:///{tmp_path}/data/audit.db"
    (token,) = config.auth.tokens
    assert token.token.get_secret_value() == SECRET
    assert token.scopes == ("read", "write", "admin")
    (billing,) = config.sources
    assert billing.database == tmp_path / "data" / "billing.db"
    assert [t.entity for t in billing.tables] == ["customer", "charge"]
    assert billing.tables[0].actions[0].when == {"status": "deactivated"}


def test_defaults_applied(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL), {})

    assert config.path == tmp_path / "config.yaml"
    assert (config.server.host, config.server.port) == ("127.0.0.1", 5000)
    assert config.auth.tokens == ()
    assert (config.capture.poll_interval, config.capture.batch_size) == (1.0, 1000)
    assert config.capture.snapshot is True
    assert config.integrity.key_file == tmp_path / "data" / "auditor_ed25519.key"
    assert config.integrity.checkpoint_interval == 60.0
    table = config.sources[0].tables[0]
    assert table.entity == "charges"
    assert (table.actor, table.ignore, table.mask, table.actions) == (None, (), (), ())


def test_only_store_is_required(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "store: {url: 'sqlite://'}\n"), {})
    assert config.sources == ()


@pytest.mark.parametrize(
    "text",
    [
        "auth:\n",
        "auth:\n  tokens:\n",
        "auth:\n  tokens: []\n",
        "auth: {}\n",
        "server:\ncapture:\nintegrity:\n",
    ],
)
def test_empty_sections_mean_defaults(tmp_path: Path, text: str) -> None:
    config = load_config(write(tmp_path, "store: {url: 'sqlite://'}\n" + text), {})
    assert config.auth.tokens == ()
    assert config.server.port == 5000
    assert config.integrity.key_file == tmp_path / "data" / "auditor_ed25519.key"


def test_entity_null_defaults_to_table(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, with_change(("sources", 0, "tables", 0, "entity"), None)))
    assert config.sources[0].tables[0].entity == "charges"


def test_when_keeps_yaml_scalar_types(tmp_path: Path) -> None:
    when = {"s": "x", "i": 1, "f": 1.5, "b": True, "n": None}
    path = write(tmp_path, with_change(("sources", 0, "tables", 0, "actions", 0, "when"), when))
    rule = load_config(path, {}).sources[0].tables[0].actions[0]
    assert rule.when == when
    assert [type(v) for v in rule.when.values()] == [str, int, float, bool, type(None)]


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL), {})
    with pytest.raises(pydantic.ValidationError):
        config.server.port = 1


# --- environment substitution ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "environ", "expected"),
    [
        ("${HOST}", {"HOST": "10.0.0.1"}, "10.0.0.1"),
        ("pre-${A}-${B}-post", {"A": "1", "B": "2"}, "pre-1-2-post"),
        ("${HOST:-localhost}", {}, "localhost"),
        ("${HOST:-localhost}", {"HOST": ""}, "localhost"),
        ("${HOST:-localhost}", {"HOST": "::1"}, "::1"),
        ("${HOST:-}", {}, ""),
        ("${HOST}", {"HOST": ""}, ""),
        ("$${HOST}", {"HOST": "x"}, "${HOST}"),
        ("a$$b$x", {}, "a$$b$x"),
        ("${A}", {"A": "${B}", "B": "no"}, "${B}"),  # one pass: values are not re-expanded
    ],
)
def test_environment_substitution(
    tmp_path: Path, value: str, environ: dict[str, str], expected: str
) -> None:
    path = write(tmp_path, with_change(("server", "host"), value))
    if expected == "":
        assert "server.host" in load_error(path, environ)
    else:
        assert load_config(path, environ).server.host == expected


def test_substituted_values_are_then_validated_as_their_type(tmp_path: Path) -> None:
    data = with_change(("server", "port"), "${PORT}")
    data["capture"] = {"snapshot": "${SNAPSHOT:-false}", "poll_interval": "${POLL}"}
    config = load_config(write(tmp_path, data), {"PORT": "8080", "POLL": "0.5"})
    assert (config.server.port, config.capture.snapshot, config.capture.poll_interval) == (
        8080,
        False,
        0.5,
    )


def test_substitution_reaches_nested_lists_and_mappings(tmp_path: Path) -> None:
    data = with_change(("sources", 0, "tables", 0, "mask"), ["${COL}"])
    data["sources"][0]["tables"][0]["actions"][0]["when"] = {"status": "${STATUS}"}
    config = load_config(write(tmp_path, data), {"COL": "card", "STATUS": "gone"})
    table = config.sources[0].tables[0]
    assert table.mask == ("card",)
    assert table.actions[0].when == {"status": "gone"}


def test_keys_are_not_substituted(tmp_path: Path) -> None:
    path = write(tmp_path, with_change(("server", "${KEY}"), 1))
    assert "config.yaml: server.${KEY}: unknown key" in load_error(path, {"KEY": "port"})


def test_unset_variable_names_file_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, with_change(("auth", "tokens", 0, "token"), "${AUDITOR_TOKEN}"))
    message = load_error(path, {})
    assert message == (
        f"{path}: auth.tokens[0].token: environment variable AUDITOR_TOKEN is not set"
    )


@pytest.mark.parametrize("value", ["${", "${1X}", "${A-b}", "${A:b}", "x ${unclosed"])
def test_malformed_reference_is_an_error(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, with_change(("server", "host"), value))
    assert "config.yaml: server.host: malformed ${" in load_error(path, {"A": "a"})


# --- paths ------------------------------------------------------------------------------------


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    data = copy.deepcopy(MINIMAL)
    data["store"]["url"] = "sqlite:///../store/audit.db?timeout=5"
    data["sources"][0]["database"] = "./billing/../billing.db"
    data["integrity"] = {"key_file": "keys/k.key"}
    (tmp_path / "conf").mkdir()
    path = write(tmp_path / "conf", data)

    config = load_config(path, {})
    assert config.store.url == f"sqlite:///{tmp_path}/store/audit.db?timeout=5"
    assert config.sources[0].database == tmp_path / "conf" / "billing.db"
    assert config.integrity.key_file == tmp_path / "conf" / "keys" / "k.key"


def test_relative_config_path_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, MINIMAL)
    monkeypatch.chdir(tmp_path)
    config = load_config(Path("config.yaml"), {})
    assert config.path == tmp_path / "config.yaml"
    assert config.sources[0].database == tmp_path / "billing.db"


def test_absolute_paths_are_kept(tmp_path: Path) -> None:
    data = copy.deepcopy(MINIMAL)
    data["store"]["url"] = "sqlite:////var/lib/auditor/audit.db"
    data["sources"][0]["database"] = "/srv/billing.db"
    data["integrity"] = {"key_file": "/etc/auditor/key"}
    config = load_config(write(tmp_path, data), {})
    assert config.store.url == "sqlite:////var/lib/auditor/audit.db"
    assert config.sources[0].database == Path("/srv/billing.db")
    assert config.integrity.key_file == Path("/etc/auditor/key")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite://", "sqlite://"),
        ("sqlite:///:memory:", "sqlite:///:memory:"),
        ("postgresql+psycopg://user@host/db", "postgresql+psycopg://user@host/db"),
        ("postgresql+psycopg://u:p%40ss@h:5432/db", "postgresql+psycopg://u:p%40ss@h:5432/db"),
        # plain postgresql:// would select psycopg2, which is not installed
        ("postgresql://user@host/db", "postgresql+psycopg://user@host/db"),
    ],
)
def test_store_urls_kept(tmp_path: Path, url: str, expected: str) -> None:
    config = load_config(write(tmp_path, with_change(("store", "url"), url)), {})
    assert config.store.url == expected


@pytest.mark.parametrize(
    "url", ["mysql://u@h/db", "postgres://u@h/db", "postgresql+psycopg2://u@h/db", "not a url"]
)
def test_store_url_bad_scheme(tmp_path: Path, url: str) -> None:
    message = load_error(write(tmp_path, with_change(("store", "url"), url)))
    assert message.startswith(f"{tmp_path / 'config.yaml'}: store.url: ")
    assert url not in message


def test_store_password_not_in_repr(tmp_path: Path) -> None:
    url = "postgresql+psycopg://auditor:hunter2@db/audit"
    config = load_config(write(tmp_path, with_change(("store", "url"), url)), {})
    assert config.store.url == url
    assert "hunter2" not in repr(config)
    assert "hunter2" not in str(config)


# --- which file -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cli", "environ", "expected"),
    [
        ("cli.yaml", {"AUDITOR_CONFIG": "env.yaml"}, Path("cli.yaml")),
        (None, {"AUDITOR_CONFIG": "env.yaml"}, Path("env.yaml")),
        (None, {"AUDITOR_CONFIG": ""}, DEFAULT_CONFIG_PATH),
        (None, {}, DEFAULT_CONFIG_PATH),
    ],
)
def test_resolve_config_path_precedence(
    cli: str | None, environ: dict[str, str], expected: Path
) -> None:
    assert resolve_config_path(cli, environ) == expected


def test_default_config_path_is_beside_the_module() -> None:
    assert Path(__file__).resolve().parent.parent / "config.yaml" == DEFAULT_CONFIG_PATH


# --- errors name the file and the key ---------------------------------------------------------


@pytest.mark.parametrize(
    "loc",
    [
        ("colour",),
        ("store", "colour"),
        ("server", "colour"),
        ("auth", "colour"),
        ("auth", "tokens", 0, "colour"),
        ("capture", "colour"),
        ("integrity", "colour"),
        ("sources", 0, "colour"),
        ("sources", 0, "tables", 0, "colour"),
        ("sources", 0, "tables", 0, "actions", 0, "colour"),
        ("path",),
    ],
)
def test_unknown_key_at_every_level(tmp_path: Path, loc: tuple[str | int, ...]) -> None:
    path = write(tmp_path, with_change(loc, "red"))
    key = ".".join(str(p) for p in loc).replace(".0", "[0]")
    first_line = load_error(path).splitlines()[0]
    assert first_line.startswith(f"{path}: {key}: unknown key")


def test_unknown_key_lists_the_known_ones(tmp_path: Path) -> None:
    path = write(tmp_path, with_change(("server", "prot"), 1))
    expected = f"{path}: server.prot: unknown key (expected one of: host, port, workers)"
    assert load_error(path) == expected


@pytest.mark.parametrize(
    ("loc", "value", "expected"),
    [
        (("store",), "sqlite://", "store: should be a mapping"),
        (("store", "url"), 5, "store.url: Input should be a valid string"),
        (("server", "host"), "", "server.host: String should have at least 1 character"),
        (("server", "port"), "http", "server.port: Input should be a valid integer"),
        (("server", "port"), 65536, "server.port: Input should be less than or equal to 65535"),
        (("server", "port"), -1, "server.port: Input should be greater than or equal to 0"),
        (("server", "workers"), 0, "server.workers: Input should be greater than or equal to 1"),
        (("server", "workers"), 65, "server.workers: Input should be less than or equal to 64"),
        (("auth", "tokens"), "abc", "auth.tokens: Input should be a valid list"),
        (("auth", "tokens", 0), "abc", "auth.tokens[0]: should be a mapping"),
        (("auth", "tokens", 0, "token"), "", "auth.tokens[0].token: must not be empty"),
        (("auth", "tokens", 0, "scopes"), ["root"], "auth.tokens[0].scopes[0]: Input should be"),
        (("auth", "tokens", 0, "scopes"), [], "auth.tokens[0].scopes: must list at least one"),
        (("capture", "poll_interval"), 0, "capture.poll_interval: Input should be greater than 0"),
        (("capture", "poll_interval"), 3601, "capture.poll_interval: Input should be less than"),
        (("capture", "batch_size"), 0, "capture.batch_size: Input should be greater than"),
        (("capture", "batch_size"), 100_001, "capture.batch_size: Input should be less than"),
        (("capture", "snapshot"), "maybe", "capture.snapshot: Input should be a valid boolean"),
        (("integrity", "checkpoint_interval"), 0, "integrity.checkpoint_interval: Input should"),
        (("integrity", "key_file"), "", "integrity.key_file: must name a file"),
        (("sources",), {"name": "x"}, "sources: Input should be a valid list"),
        (("sources", 0, "name"), 7, "sources[0].name: Input should be a valid string"),
        (("sources", 0, "database"), ["x"], "sources[0].database: Input is not a valid path"),
        (("sources", 0, "tables"), [], "sources[0].tables: must list at least one table"),
        (("sources", 0, "tables", 0, "table"), "", "sources[0].tables[0].table: String should"),
        (
            ("sources", 0, "tables", 0, "mask"),
            "card",
            "sources[0].tables[0].mask: Input should be a valid list",
        ),
        (
            ("sources", 0, "tables", 0, "ignore"),
            [1],
            "sources[0].tables[0].ignore[0]: Input should",
        ),
        (("sources", 0, "tables", 0, "actor"), 3, "sources[0].tables[0].actor: Input should be"),
        (
            ("sources", 0, "tables", 0, "actions", 0, "when"),
            {},
            "sources[0].tables[0].actions[0].when: must name at least one column",
        ),
        (
            ("sources", 0, "tables", 0, "actions", 0, "when"),
            {"status": ["a", "b"]},
            "sources[0].tables[0].actions[0].when: status: must be a string, number",
        ),
        (("sources", 0, "tables", 0, "actions", 0, "action"), "", "actions[0].action: String"),
    ],
)
def test_wrong_types_and_ranges_name_the_key(
    tmp_path: Path, loc: tuple[str | int, ...], value: Any, expected: str
) -> None:
    path = write(tmp_path, with_change(loc, value))
    first_line = load_error(path).splitlines()[0]
    assert first_line.startswith(f"{path}: ")
    assert expected in first_line


@pytest.mark.parametrize(
    "loc",
    [
        ("store", "url"),
        ("sources", 0, "name"),
        ("sources", 0, "database"),
        ("sources", 0, "tables", 0, "table"),
    ],
)
def test_required_keys(tmp_path: Path, loc: tuple[str | int, ...]) -> None:
    data = with_change(loc, None)
    target: Any = data
    for part in loc[:-1]:
        target = target[part]
    del target[loc[-1]]
    key = ".".join(str(p) for p in loc).replace(".0", "[0]")
    path = write(tmp_path, data)
    assert load_error(path) == f"{path}: {key}: required key is missing"


def test_missing_store(tmp_path: Path) -> None:
    path = write(tmp_path, "sources: []\n")
    assert load_error(path) == f"{path}: store: required key is missing"


def test_several_errors_one_per_line(tmp_path: Path) -> None:
    data = with_change(("server", "port"), "x")
    data["capture"] = {"batch_size": 0, "colour": 1}
    lines = load_error(write(tmp_path, data)).splitlines()
    assert [line.split(": ")[1] for line in lines] == [
        "server.port",
        "capture.batch_size",
        "capture.colour",
    ]


@pytest.mark.parametrize("name", ["", "has space", "a/b", "x" * 65, "naïve"])
def test_bad_stream_names(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, with_change(("sources", 0, "name"), name))
    assert load_error(path).startswith(f"{path}: sources[0].name: must be 1-64 characters")


@pytest.mark.parametrize("name", ["a", "billing-eu.2_x", "x" * 64, "API", "api2"])
def test_good_stream_names(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, with_change(("sources", 0, "name"), name))
    assert load_config(path, {}).sources[0].name == name


def test_api_stream_name_is_reserved(tmp_path: Path) -> None:
    path = write(tmp_path, with_change(("sources", 0, "name"), "api"))
    assert load_error(path).startswith(f"{path}: sources[0].name: 'api' is reserved")


def test_duplicate_source_names(tmp_path: Path) -> None:
    data = copy.deepcopy(MINIMAL)
    data["sources"].append({**data["sources"][0], "database": "other.db"})
    path = write(tmp_path, data)
    assert load_error(path) == (
        f"{path}: sources: source name 'billing' appears twice ([0] and [1])"
    )


def test_two_sources_on_one_database(tmp_path: Path) -> None:
    data = copy.deepcopy(MINIMAL)
    data["sources"].append({**data["sources"][0], "name": "other", "database": "./billing.db"})
    path = write(tmp_path, data)
    assert load_error(path).startswith(f"{path}: sources: database ")


def test_duplicate_tables_in_a_source(tmp_path: Path) -> None:
    data = copy.deepcopy(MINIMAL)
    data["sources"][0]["tables"].append({"table": "charges", "entity": "other"})
    path = write(tmp_path, data)
    assert load_error(path) == (
        f"{path}: sources[0].tables: table 'charges' appears twice ([0] and [1])"
    )


def test_same_table_in_two_sources_is_fine(tmp_path: Path) -> None:
    data = copy.deepcopy(MINIMAL)
    data["sources"].append({**data["sources"][0], "name": "other", "database": "other.db"})
    assert len(load_config(write(tmp_path, data), {}).sources) == 2


# --- the file itself --------------------------------------------------------------------------


def test_bad_yaml_gives_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "store:\n  url: sqlite://\nsources:\n  - name: a\n  bad\n")
    message = load_error(path)
    assert message == (
        f"{path}: invalid YAML at line 6: could not find expected ':'"
        " (while scanning a simple key at line 5)"
    )


def test_duplicate_yaml_key_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "store: {url: 'sqlite://'}\nsources: []\nstore: {url: 'sqlite://'}\n")
    assert load_error(path) == f"{path}: invalid YAML at line 3: duplicate key 'store'"


def test_yaml_merge_keys_still_work(tmp_path: Path) -> None:
    text = "store: {url: 'sqlite://'}\nx: &s {port: 1}\nserver: {<<: *s, port: 2}\n"
    message = load_error(write(tmp_path, text))
    assert "x: unknown key" in message  # merge is accepted; only the anchor holder is unknown


def test_unsafe_yaml_tags_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "store: !!python/object/apply:os.system ['true']\n")
    assert load_error(path).startswith(f"{path}: invalid YAML at line 1: ")


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    assert load_error(path).startswith(f"{path}: the top level must be a mapping")


def test_empty_file_reports_missing_store(tmp_path: Path) -> None:
    path = write(tmp_path, "# nothing yet\n")
    assert load_error(path) == f"{path}: store: required key is missing"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    assert load_error(path) == f"{path}: cannot read the file: No such file or directory"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    assert load_error(tmp_path).startswith(f"{tmp_path}: cannot read the file: ")


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(b"store: {url: '\xff'}\n")
    assert load_error(path) == f"{path}: the file is not UTF-8 text"


def test_load_config_defaults_to_os_environ(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUDITOR_TEST_HOST", "127.0.0.2")
    path = write(tmp_path, with_change(("server", "host"), "${AUDITOR_TEST_HOST}"))
    assert load_config(path).server.host == "127.0.0.2"


# --- secrets ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "token_entry",
    [
        {"token": SECRET, "scopes": ["root"]},
        {"token": SECRET, "scopes": "read"},
        {"token": SECRET, "colour": "red"},
        {"token": "${TOKEN}", "scopes": ["nope"]},
        {"token": [SECRET]},
        {"token": {SECRET: 1}},
    ],
)
def test_token_value_never_in_error(tmp_path: Path, token_entry: dict[str, Any]) -> None:
    path = write(tmp_path, with_change(("auth", "tokens", 0), token_entry))
    message = load_error(path, {"TOKEN": SECRET})
    assert message.startswith(f"{path}: auth.tokens[0].")
    assert SECRET not in message


def test_token_value_never_in_yaml_error(tmp_path: Path) -> None:
    path = write(tmp_path, f"auth:\n  tokens:\n    - token: {SECRET}\n  scopes: [read\n")
    message = load_error(path)
    assert message.startswith(f"{path}: invalid YAML at line ")
    assert SECRET not in message


def test_duplicate_tokens_are_an_error_without_the_value(tmp_path: Path) -> None:
    data = with_change(("auth", "tokens"), [{"token": SECRET}, {"token": "${T}"}])
    message = load_error(write(tmp_path, data), {"T": SECRET})
    assert "auth.tokens: tokens[0] and tokens[1] have the same token" in message
    assert SECRET not in message


def test_token_never_in_repr(tmp_path: Path) -> None:
    data = with_change(("auth", "tokens"), [{"token": "${T}", "scopes": ["read", "admin"]}])
    config = load_config(write(tmp_path, data), {"T": SECRET})
    assert config.auth.tokens[0].token.get_secret_value() == SECRET
    for text in (repr(config), str(config), repr(config.auth), repr(config.auth.tokens[0])):
        assert SECRET not in text
    assert SECRET not in config.model_dump_json()


# --- loopback ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("192.168.1.1", False),
        ("example.com", False),
        ("localhost.example.com", False),
    ],
)
def test_loopback_only(tmp_path: Path, host: str, loopback: bool) -> None:
    config = load_config(write(tmp_path, with_change(("server", "host"), host)), {})
    assert isinstance(config, Config)
    assert config.loopback_only is loopback
