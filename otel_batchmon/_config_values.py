"""Parsers for single setting values; each raises ValueError saying what
is accepted."""

from __future__ import annotations

import re
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from otel_batchmon._parse import parse_duration, split_list

__all__ = [
    "IDENTIFIER",
    "STORE_NAME",
    "backfill",
    "boolean",
    "database_url",
    "identifier",
    "non_negative_duration",
    "optional_duration",
    "page_size",
    "positive_duration",
    "refresh_mode",
    "signed_duration",
    "store_name",
    "streak_length",
    "stuck_action",
    "stuck_statuses",
    "table_name",
    "table_prefix",
    "timezone",
]

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}")
STORE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
TABLE_PREFIX = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,29}")
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def positive_duration(value: object) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"{value!r} must be longer than zero")
    return seconds


def non_negative_duration(value: object) -> float:
    return parse_duration(value)


def backfill(value: object) -> float:
    if value is False or (
        isinstance(value, str) and value.strip().lower() in _FALSE
    ):
        return 0.0
    try:
        return parse_duration(value)
    except ValueError:
        raise ValueError(
            f"{value!r} is not a backfill; write a duration like 24h to "
            "record batches finished that long before the first start, "
            "or false"
        ) from None


def boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"{value!r} is not true or false")


def page_size(value: object) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{value!r} is not a whole number of rows")
    if not 1 <= value <= 100_000:
        raise ValueError(f"{value} must be between 1 and 100000 rows")
    return value


def table_prefix(value: object) -> str:
    if not isinstance(value, str) or not TABLE_PREFIX.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a table name prefix (letters, digits and _, "
            "not starting with a digit, at most 30 characters)"
        )
    return value


def signed_duration(value: object) -> float:
    return parse_duration(value, signed=True)


def database_url(value: object) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a database URL like sqlite:///batches.db")
    like = (
        "write it like postgresql+psycopg://user@host/db, "
        "mysql+pymysql://user@host/db or sqlite:///path.db"
    )
    try:
        parsed = make_url(value)
    except (ArgumentError, ValueError):
        # A bad port raises ValueError; neither message may echo the URL.
        raise ValueError(f"is not a database URL; {like}") from None
    try:
        # Loads SQLAlchemy's dialect class only, not the driver module. An
        # unknown one (Heroku's postgres://) used to end in a traceback
        # when the engine was built.
        parsed.get_dialect()
    except NoSuchModuleError:
        raise ValueError(
            f"unknown database dialect {parsed.drivername!r}; {like}"
        ) from None
    return value


def identifier(value: object) -> str:
    if not isinstance(value, str) or not IDENTIFIER.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a plain SQL identifier (letters, digits, _ "
            "and $, not starting with a digit, at most 63 characters); "
            "write the bare name without quotes, otel_batchmon quotes it"
        )
    return value


def table_name(value: object) -> tuple[str | None, str]:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a table name")
    parts = value.split(".")
    if len(parts) > 2:
        raise ValueError(
            f"{value!r} has more than one dot; write table or schema.table"
        )
    names = [identifier(part) for part in parts]
    return (names[0], names[1]) if len(names) == 2 else (None, names[0])


def store_name(value: object) -> str:
    if not isinstance(value, str) or not STORE_NAME.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a store name (1-64 letters, digits, _ . -)"
        )
    return value


def stuck_statuses(value: object) -> tuple[str, ...]:
    items = split_list(value)
    allowed = ("pending", "processing")
    bad = [item for item in items if item not in allowed]
    if bad or not items:
        raise ValueError(
            f"{bad or items!r}: stuck_statuses lists canonical statuses "
            f"that mean still running, from {allowed}"
        )
    return tuple(str(item) for item in items)


def timezone(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("must be a zone name like UTC or Europe/Berlin")
    if re.fullmatch(r"[+-]\d{2}:\d{2}", value):
        return value
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"{value!r} is not a known time zone; use an IANA name like "
            "Europe/Berlin or a fixed offset like +02:00"
        ) from None
    return value


def optional_duration(value: object) -> float | None:
    if value is False or (
        isinstance(value, str)
        and value.lower() in ("", "false", "off", "none")
    ):
        return None
    return positive_duration(value)


def streak_length(value: object) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{value!r} is not a whole number of batches")
    if not 0 <= value <= 1000:
        raise ValueError(f"{value} must be between 0 (off) and 1000")
    return value


def stuck_action(value: object) -> str:
    if value not in ("none", "fail"):
        raise ValueError(f"{value!r} is not an action; use none or fail")
    return str(value)


def refresh_mode(value: object) -> str:
    if value not in ("full", "incremental"):
        raise ValueError(
            f"{value!r} is not a refresh mode; use full (read the whole "
            "window each time) or incremental (read what changed)"
        )
    return str(value)
