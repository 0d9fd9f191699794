"""The README says what the code does: metric table, settings, example."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from otel_batchmon.config import MONITOR_KEYS, STORE_KEYS
from otel_batchmon.instruments import markdown_table

README = Path(__file__).resolve().parent.parent / "README.md"


def _readme() -> str:
    return README.read_text(encoding="utf-8")


def test_metric_table_matches_the_instrument_catalogue() -> None:
    found = re.search(
        r"<!-- metrics:start -->\n(.*?)\n<!-- metrics:end -->",
        _readme(),
        re.DOTALL,
    )
    assert found, "README lost its metrics:start/end markers"
    assert found.group(1) == markdown_table(), (
        "README metric table differs from otel_batchmon/instruments.py; "
        "paste the output of otel_batchmon.instruments.markdown_table()"
    )


def test_every_setting_is_in_the_configuration_reference() -> None:
    text = _readme()
    for key in MONITOR_KEYS + STORE_KEYS:
        if key in ("stores", "name"):
            continue
        shown = f"`{key}`" if key in MONITOR_KEYS else f"`stores.NAME.{key}"
        assert shown in text, f"{shown} is not documented in the README"


def test_worker_api_example_runs(tmp_path: Path) -> None:
    block = re.search(
        r"## Worker-side API.*?```python\n(.*?)```", _readme(), re.DOTALL
    )
    assert block
    script = tmp_path / "example.py"
    script.write_text(block.group(1))
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert '"name": "batch.finished"' in result.stdout
    assert "shop.orders.imported" in result.stdout


def test_every_relative_link_of_the_readme_exists() -> None:
    targets = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", _readme())
    missing = [t for t in targets if not (README.parent / t).exists()]
    assert targets
    assert missing == []
