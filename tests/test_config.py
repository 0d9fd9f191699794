"""Settings: TOML plus environment, every problem reported together."""

from __future__ import annotations

from pathlib import Path

import pytest

from otel_batchmon import ConfigError, load_config, parse_config
from otel_batchmon._engine import mask_url
from otel_batchmon._parse import format_duration, parse_duration

URL = "sqlite:///batches.db"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("5m", 300),
        ("4h", 14400),
        ("1d", 86400),
        ("1h30m", 5400),
        ("250ms", 0.25),
        ("1.5s", 1.5),
        (30, 30),
        ("12", 12),
    ],
)
def test_durations_read_as_seconds(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "4x", "h", "-5m", "24 hours", "nan", "1_000", "1_0s"]
)
def test_bad_durations_say_how_to_write_one(text: str) -> None:
    with pytest.raises(ValueError, match=r"duration|negative|finite"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["-5m", "-60", "-1h30m"])
def test_negative_durations_say_so(text: str) -> None:
    with pytest.raises(ValueError, match="is negative"):
        parse_duration(text)


def test_signed_duration_errors_quote_the_value_as_written() -> None:
    with pytest.raises(ValueError, match="'-1h1h'"):
        parse_duration("-1h1h", signed=True)
    assert parse_duration("-1h30m", signed=True) == -5400


@pytest.mark.parametrize("text", ["1h1h", "30m1h", "5s250ms500ms", "1m1d"])
def test_durations_take_each_unit_once_largest_first(text: str) -> None:
    with pytest.raises(ValueError, match="each unit once, largest first"):
        parse_duration(text)
    assert parse_duration("1d2h3m4s5ms") == 93784.005


def test_format_duration_round_trips_readable_values() -> None:
    assert format_duration(5400) == "1h30m"
    assert format_duration(0.25) == "250ms"
    assert parse_duration(format_duration(93784)) == 93784


def test_top_level_store_gets_defaults_and_table_name() -> None:
    config = parse_config({"database_url": URL, "table": "imports"})

    (store,) = config.stores
    assert store.name == "imports"
    assert store.window_seconds == 86400
    assert store.stuck_after_seconds == 14400
    assert config.stale_after_seconds == 3 * config.refresh_interval_seconds
    assert config.statement_timeout_seconds < config.refresh_interval_seconds


def test_schema_qualified_table_is_split() -> None:
    config = parse_config(
        {"database_url": URL, "table": "integration.import_batches"}
    )
    assert config.stores[0].schema == "integration"
    assert config.stores[0].table == "import_batches"


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(
            {
                "refresh_interval": "0s",
                "stores": {
                    "a": {
                        "database_url": URL,
                        "table": "x y",
                        "window": "-1h",
                        "stuck_statuses": ["completed"],
                        "statuses": {
                            "completed": ["done"],
                            "failed": ["done"],
                        },
                        "colums": {},
                    },
                    "b": {"table": "ok"},
                },
            }
        )
    problems = "\n".join(caught.value.problems)
    assert "refresh_interval" in problems
    assert "stores.a.table" in problems
    assert "stores.a.window" in problems
    assert "stores.a.stuck_statuses" in problems
    assert "already mapped to 'completed'" in problems
    assert "did you mean 'columns'" in problems
    assert "stores.b.database_url: missing" in problems
    assert len(caught.value.problems) == 7


@pytest.mark.parametrize(
    "name",
    ["batches; DROP TABLE x", 'b"ad', "1starts_with_digit", "a.b.c", "x" * 70],
)
def test_sql_injection_in_identifiers_is_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="table"):
        parse_config({"database_url": URL, "table": name})


def test_column_names_are_plain_identifiers() -> None:
    with pytest.raises(ConfigError, match=r"columns\.status"):
        parse_config(
            {
                "database_url": URL,
                "table": "t",
                "columns": {"status": "state) OR 1=1 --"},
            }
        )


def test_timeout_not_shorter_than_interval_is_refused() -> None:
    with pytest.raises(ConfigError, match="must be shorter"):
        parse_config(
            {
                "database_url": URL,
                "table": "t",
                "refresh_interval": "5s",
                "statement_timeout": "5s",
            }
        )


def test_reconcile_every_is_checked_only_when_incremental() -> None:
    settings = {
        "database_url": URL,
        "table": "t",
        "refresh_interval": "30s",
        "reconcile_every": "10s",
    }
    config = parse_config(settings)
    assert config.refresh_mode == "full"
    with pytest.raises(ConfigError, match=r"reconcile_every.*would reconcile"):
        parse_config({**settings, "refresh_mode": "incremental"})


def test_unknown_time_zone_is_refused_with_examples() -> None:
    with pytest.raises(ConfigError, match="Europe/Berlin"):
        parse_config({"database_url": URL, "table": "t", "timezone": "Mars"})


def test_no_store_says_what_to_set() -> None:
    with pytest.raises(ConfigError, match="OTEL_BATCHMON_DATABASE_URL"):
        load_config(environ={})


def test_environment_alone_configures_a_store() -> None:
    config = load_config(
        environ={
            "OTEL_BATCHMON_DATABASE_URL": URL,
            "OTEL_BATCHMON_TABLE": "jobs",
            "OTEL_BATCHMON_REFRESH_INTERVAL": "250ms",
            "OTEL_BATCHMON_STUCK_AFTER": "2h",
            "OTEL_BATCHMON_STATUSES__COMPLETED": "success, done",
            "OTEL_BATCHMON_COLUMNS__FINISHED_AT": "completed_at",
        }
    )
    (store,) = config.stores
    assert config.refresh_interval_seconds == 0.25
    assert store.stuck_after_seconds == 7200
    assert store.statuses["completed"] == ("success", "done")
    assert store.columns.finished_at == "completed_at"
    assert "finished_at" in store.columns.explicit


def test_environment_wins_over_the_file_and_reaches_its_one_store(
    tmp_path: Path,
) -> None:
    path = tmp_path / "batchmon.toml"
    path.write_text(
        '[stores.main]\ndatabase_url = "sqlite:///file.db"\n'
        'table = "jobs"\nwindow = "24h"\n'
    )
    config = load_config(
        path,
        environ={
            "OTEL_BATCHMON_DATABASE_URL": "sqlite:///env.db",
            "OTEL_BATCHMON_STORES__MAIN__WINDOW": "12h",
        },
    )
    (store,) = config.stores
    assert store.name == "main"
    assert store.database_url == "sqlite:///env.db"
    assert store.window_seconds == 12 * 3600


def test_problems_from_the_environment_name_the_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(
            environ={
                "OTEL_BATCHMON_DATABASE_URL": URL,
                "OTEL_BATCHMON_TABLE": "jobs",
                "OTEL_BATCHMON_WINDOW": "a day",
                "OTEL_BATCHMON_REFRESH_INTERVALL": "1s",
            }
        )
    problems = "\n".join(caught.value.problems)
    assert "(from OTEL_BATCHMON_WINDOW)" in problems
    assert "(from OTEL_BATCHMON_REFRESH_INTERVALL)" in problems
    assert "did you mean 'refresh_interval'" in problems


def test_top_level_store_and_stores_table_cannot_mix(tmp_path: Path) -> None:
    path = tmp_path / "batchmon.toml"
    path.write_text(
        'table = "a"\n[stores.main]\ndatabase_url = "sqlite:///x.db"\n'
        'table = "b"\n'
    )
    with pytest.raises(ConfigError, match="cannot be mixed"):
        load_config(path, environ={})


def test_missing_config_file_is_one_clear_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", environ={})


def test_passwords_and_secret_options_are_masked() -> None:
    masked = mask_url(
        "postgresql+psycopg://monitor:s3cret@db/app?sslpassword=p4ss&x=1"
    )
    assert "s3cret" not in masked
    assert "p4ss" not in masked
    assert "monitor" in masked
    assert "x=1" in masked


def test_config_errors_never_echo_the_database_password() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(
            {
                "database_url": "postgresql://u:s3cret@h/db",
                "table": "bad name",
            }
        )
    assert "s3cret" not in str(caught.value)


def test_store_name_typo_in_the_environment_suggests_the_file_store(
    tmp_path: Path,
) -> None:
    path = tmp_path / "batchmon.toml"
    path.write_text(
        '[stores.imports]\ndatabase_url = "sqlite:///x.db"\ntable = "t"\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_config(
            path, environ={"OTEL_BATCHMON_STORES__IMPORT__WINDOW": "1h"}
        )
    assert "did you mean 'imports'" in str(caught.value)
