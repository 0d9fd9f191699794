"""Preset data for other frameworks' job tables.

Each ``<name>.toml`` in this package describes one framework's table:
sources, relation, column roles, status mapping, timestamp encoding,
unavailable metrics, retention and test data. The format is specified in
``README.md`` next to this file; ``_selfcheck.py`` runs every preset's
test DDL, rows and mapping against real databases.

This module finds and parses the files and turns one into store
settings of the config language (``store_settings``); the config reader
lays the user's own settings over them.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from typing import Any

__all__ = ["PresetSettings", "load", "names", "store_settings"]


def names() -> list[str]:
    """Names of the shipped presets, sorted."""
    files = resources.files(__name__).iterdir()
    return sorted(
        f.name.removesuffix(".toml") for f in files if f.name.endswith(".toml")
    )


def load(name: str) -> dict[str, Any]:
    """Parse one preset file; KeyError names the presets that exist."""
    if name not in names():
        raise KeyError(
            f"unknown preset {name!r}; known presets: {', '.join(names())}"
        )
    text = resources.files(__name__).joinpath(f"{name}.toml").read_text()
    return tomllib.loads(text)


# Keys of a preset's [columns] table that modify roles rather than name
# them; they become store settings of the same name.
_MODIFIERS = (
    "optional_roles",
    "window_by",
    "only_when",
    "default_status",
    "finish_optional_for",
)


@dataclass(frozen=True)
class PresetSettings:
    """A preset as store settings, plus what only a preset has.

    ``parameters`` maps placeholder name to (kind, default); ``opt_in``
    names the rules shipped turned off (``preset_rules`` turns them on).
    """

    settings: dict[str, Any]
    parameters: dict[str, tuple[str, str]]
    opt_in: frozenset[str]
    rules: frozenset[str]
    zone_hint: str | None


def store_settings(preset: dict[str, Any]) -> PresetSettings:
    """Translate a parsed preset into settings of a ``[stores.NAME]``."""
    relation = preset["relation"]
    settings: dict[str, Any] = {}
    if relation["kind"] == "table":
        settings["table"] = relation["table"]
    else:
        query = {"default": relation["sql"]}
        query.update(relation.get("dialect_sql", {}))
        settings["query"] = {
            k: v for k, v in query.items() if k in _DIALECT_SQL_KEYS
        }
    columns = dict(preset["columns"])
    for key in _MODIFIERS:
        if key in columns:
            settings[key] = columns.pop(key)
    # A column that only status_rules read needs no role of its own.
    columns.pop("refine", None)
    settings["columns"] = columns
    statuses = {
        k: v
        for k, v in preset.get("statuses", {}).items()
        if k not in ("reasons", "stuck_statuses")
    }
    settings["statuses"] = statuses
    stuck = preset.get("statuses", {}).get("stuck_statuses")
    if stuck:
        settings["stuck_statuses"] = stuck
    rules = [dict(rule) for rule in preset.get("status_rules", [])]
    if rules:
        settings["status_rules"] = rules
    stamps = preset.get("timestamps", {})
    settings["timestamps"] = {
        k: v for k, v in stamps.items() if k in ("default", "per_column")
    }
    unavailable = preset.get("metrics", {}).get("unavailable", {})
    if unavailable:
        settings["unavailable"] = dict(unavailable)
    zone = stamps.get("zone", "UTC")
    return PresetSettings(
        settings=settings,
        parameters={
            name: (spec["kind"], str(spec.get("default", "")))
            for name, spec in preset.get("parameters", {}).items()
        },
        opt_in=frozenset(
            r["name"] for r in rules if r.get("enabled", True) is False
        ),
        rules=frozenset(r["name"] for r in rules),
        zone_hint=None if zone == "UTC" else str(zone),
    )


_DIALECT_SQL_KEYS = ("default", "postgresql", "mysql", "sqlite")
