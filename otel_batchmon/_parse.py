"""Parsers for the value types of the configuration: durations, lists."""

from __future__ import annotations

import math
import re

__all__ = ["format_duration", "parse_duration", "split_list"]

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_ORDER = ("d", "h", "m", "s", "ms")
# A bare number of seconds: digits, an optional fraction and exponent
# (not float()'s underscores, "inf" or "nan").
_NUMBER = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")


def parse_duration(value: object, *, signed: bool = False) -> float:
    """Return seconds for ``90s``, ``5m``, ``1h30m``, ``250ms`` or a number.

    Raises ValueError with a sentence saying what is accepted.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_text(value.strip())
    else:
        raise ValueError(f"{value!r} is not a duration")
    if not math.isfinite(seconds):
        raise ValueError(f"{value!r} is not a finite duration")
    if seconds < 0 and not signed:
        raise ValueError(f"{value!r} is negative; durations here are >= 0")
    return seconds


def _parse_text(written: str) -> float:
    # The sign is read whether or not one is allowed, so that "-5m" is
    # refused as negative (by the caller), not as unreadable.
    text, sign = written, 1.0
    if text[:1] in ("+", "-"):
        sign = -1.0 if text[0] == "-" else 1.0
        text = text[1:]
    if _NUMBER.fullmatch(text):
        return sign * float(text)
    if not text or not _WHOLE.fullmatch(text):
        raise ValueError(
            f"{written!r} is not a duration; write it like 250ms, 90s, 5m, "
            "4h, 1d or 1h30m"
        )
    parts = _PART.findall(text)
    ranks = [_ORDER.index(unit) for _, unit in parts]
    if ranks != sorted(set(ranks)):
        raise ValueError(
            f"{written!r} repeats a unit or puts a smaller one first; write "
            "each unit once, largest first, like 1d12h or 1h30m"
        )
    return sign * sum(float(number) * _UNITS[unit] for number, unit in parts)


def format_duration(seconds: float) -> str:
    """Render seconds the way a person reads them: ``4h``, ``1m30s``."""
    if seconds < 0:
        return "-" + format_duration(-seconds)
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    parts = []
    rest = seconds
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        whole = int(rest // size)
        if whole:
            parts.append(f"{whole}{unit}")
            rest -= whole * size
    if rest or not parts:
        parts.append(f"{round(rest, 3):g}s")
    return "".join(parts)


def split_list(value: object) -> list[object]:
    """Return a list from a TOML list or a comma-separated string."""
    if isinstance(value, list):
        return value
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return [value]
