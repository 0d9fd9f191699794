"""Preset data for other frameworks' job tables.

Each ``<name>.toml`` in this package describes one framework's table:
sources, relation, column roles, status mapping, timestamp encoding,
unavailable metrics, retention and test data. The format is specified in
``README.md`` next to this file; ``_selfcheck.py`` runs every preset's
test DDL, rows and mapping against real databases.

This module only finds and parses the files; applying a preset is the
store engine's job.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from typing import Any

__all__ = ["load", "names"]


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
