"""A store's ``preset``: the shipped settings, under the user's own."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from otel_batchmon import presets
from otel_batchmon._config_mapping import parameter_problem
from otel_batchmon.config import _deep_merge

if TYPE_CHECKING:
    from otel_batchmon._config_reader import Reader

__all__ = ["PRESET_KEYS", "PresetChoice", "apply_preset"]

PRESET_KEYS = ("preset", "preset_parameters", "preset_rules")


class PresetChoice:
    """What a store's preset contributed beyond plain settings."""

    def __init__(
        self,
        name: str | None = None,
        parameters: Mapping[str, tuple[str, str | None]] | None = None,
        zone_hint: str | None = None,
        failed: bool = False,
    ) -> None:
        self.name = name
        self.parameters = dict(parameters or {})
        self.zone_hint = zone_hint
        # An unknown preset: its table is not missing, the name is wrong.
        self.failed = failed


def apply_preset(
    reader: Reader, where: str, data: Mapping[str, Any]
) -> tuple[dict[str, Any], PresetChoice]:
    """Lay ``data`` over its preset's settings; without one, return it."""
    name = data.get("preset")
    plain = {k: v for k, v in data.items() if k not in PRESET_KEYS}
    if name is None:
        for key in PRESET_KEYS[1:]:
            if key in data:
                reader.fail(f"{where}{key}", data[key], "needs a preset")
        return plain, PresetChoice()
    known = presets.names()
    if name not in known:
        near = difflib.get_close_matches(str(name), known, n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        reader.fail(
            f"{where}preset",
            name,
            f"unknown preset; {hint}known presets: {', '.join(known)}",
        )
        return plain, PresetChoice(failed=True)
    loaded = presets.load(name)
    dialect = _dialect(plain.get("database_url"))
    supported = loaded.get("dialects", [])
    if dialect is not None and dialect not in supported:
        reader.fail(
            f"{where}preset",
            name,
            f"{loaded.get('title', name)} keeps its tables on "
            f"{', '.join(supported)}, not {dialect}",
        )
    shipped = presets.store_settings(loaded)
    base = shipped.settings
    if "table" in plain or "query" in plain:
        base = {k: v for k, v in base.items() if k not in ("table", "query")}
    base["status_rules"] = _rules(
        reader, where, base.get("status_rules", []), data, shipped
    )
    values = _parameters(reader, where, data, shipped, plain)
    merged = _merge(base, plain)
    for key in ("table", "query"):
        if key in merged and key not in plain:
            merged[key] = _render(merged[key], values)
    return merged, PresetChoice(name, values, shipped.zone_hint)


def _rules(
    reader: Reader,
    where: str,
    rules: list[dict[str, Any]],
    data: Mapping[str, Any],
    shipped: presets.PresetSettings,
) -> list[dict[str, Any]]:
    chosen = data.get("preset_rules", {})
    if not isinstance(chosen, dict):
        reader.fail(f"{where}preset_rules", chosen, "a table: rule = true")
        return rules
    for rule, on in chosen.items():
        if rule not in shipped.rules:
            listed = ", ".join(sorted(shipped.rules)) or "none"
            reader.fail(
                f"{where}preset_rules.{rule}",
                on,
                f"the preset has no such rule; its rules: {listed}",
            )
        elif not isinstance(on, bool):
            reader.fail(f"{where}preset_rules.{rule}", on, "true or false")
    return [
        rule | {"enabled": chosen.get(rule["name"], rule.get("enabled", True))}
        for rule in rules
    ]


def _parameters(
    reader: Reader,
    where: str,
    data: Mapping[str, Any],
    shipped: presets.PresetSettings,
    plain: Mapping[str, Any],
) -> dict[str, tuple[str, str | None]]:
    given = data.get("preset_parameters", {})
    if not isinstance(given, dict):
        reader.fail(f"{where}preset_parameters", given, "a table: name = x")
        given = {}
    for key in given:
        if key not in shipped.parameters:
            listed = ", ".join(sorted(shipped.parameters)) or "none"
            reader.fail(
                f"{where}preset_parameters.{key}",
                given[key],
                f"the preset has no such parameter; its parameters: {listed}",
            )
    dialect = _dialect(plain.get("database_url"))
    values: dict[str, tuple[str, str | None]] = {}
    for name, (kind, default) in shipped.parameters.items():
        value = given.get(name)
        if value is None:
            # The schema of a MySQL or SQLite table defaults to the
            # connection's own database, whatever the preset's default.
            local = kind == "schema" and dialect in ("mysql", "sqlite")
            values[name] = (kind, None if local else default)
            continue
        problem = parameter_problem(kind, str(value))
        if problem:
            reader.fail(f"{where}preset_parameters.{name}", value, problem)
            # The default stands in, so the query is not reported again.
            value = default
        values[name] = (kind, str(value))
    return values


def _render(text: Any, values: Mapping[str, tuple[str, str | None]]) -> Any:
    if isinstance(text, dict):
        return {k: _render(v, values) for k, v in text.items()}
    for name, (_, value) in values.items():
        if value is None:
            text = text.replace(f"{{{name}}}.", "")
        text = text.replace(f"{{{name}}}", value or "")
    return text


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    # The user's settings win key by key, except a query or an unavailable
    # table, which replace the preset's whole.
    merged = _deep_merge(base, dict(top))
    for key in ("query", "unavailable"):
        if key in top:
            merged[key] = top[key]
    return merged


def _dialect(url: object) -> str | None:
    from sqlalchemy.engine import make_url

    try:
        name = make_url(str(url)).get_backend_name()
    except Exception:  # the URL's own check reports it
        return None
    return "mysql" if name == "mariadb" else name
